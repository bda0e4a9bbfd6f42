"""Documents/s of pg_documents.rows() on the real-text corpus (one core, no database): the Python cost
every catch-up and backfill document pays (segmenting five attributes into Meilisearch's words).

    .venv/bin/python bench/doc_rows.py [--posts 3000] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from parity import DEFAULT_DIR, raw_event  # noqa: E402

from search_migration.search import segment  # noqa: E402
from search_migration.write_path import pg_documents  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--posts", type=int, default=3000)
    ap.add_argument("--offset", type=int, default=5000, help="skip this many posts first (a fresh process sees new text)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    posts = []
    with (args.dir / "posts.jsonl").open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= args.offset:
                posts.append(json.loads(line))
            if len(posts) >= args.posts:
                break
    writes = [pg_documents.doc_write_for_event(seq, raw_event(p), t)
              for seq, p in enumerate(posts, 1) for t in p["topics"]]
    chars = statistics.mean(len(p["content"]) for p in posts)
    list(segment.tokens("warm up 東京の天気 状態 中文分词"))  # load lindera/jieba and the separator regex outside the timing
    if args.profile:
        pg_documents.rows(writes[:200])
        prof = cProfile.Profile()
        prof.enable()
        pg_documents.rows(writes)
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        return
    rates = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        pg_documents.rows(writes)
        rates.append(len(writes) / (time.perf_counter() - started))
    print(f"{len(writes)} documents ({len(posts)} posts, mean {chars:.0f} chars): "
          f"first pass {rates[0]:.0f} docs/s, best {max(rates):.0f} docs/s")


if __name__ == "__main__":
    main()
