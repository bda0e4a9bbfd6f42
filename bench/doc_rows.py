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
    ap.add_argument("--warm", type=int, default=2000, help="index this many other posts first, untimed (a running process)")
    ap.add_argument("--dump", help="write the rows (pickle) here, to compare two versions")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    posts = []
    with (args.dir / "posts.jsonl").open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            posts.append(json.loads(line))
            if len(posts) >= args.posts + args.warm:
                break
    every = [pg_documents.doc_write_for_event(seq, raw_event(p), t)
             for seq, p in enumerate(posts, 1) for t in p["topics"]]
    warm_n = sum(len(p["topics"]) for p in posts[:args.warm])
    warm, writes = every[:warm_n], every[warm_n:]
    posts = posts[args.warm:]
    if args.dump:
        import pickle
        Path(args.dump).write_bytes(pickle.dumps(pg_documents.rows(writes)))
        return
    chars = statistics.mean(len(p["content"]) for p in posts)
    list(segment.tokens("warm up 東京の天気 状態 abc 中文分词"))  # load lindera/jieba and the separator regex
    pg_documents.rows(warm)  # caches as a running process has them (pieces, authors, tags)
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        pg_documents.rows(writes)
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        return
    started = time.perf_counter()
    pg_documents.rows(writes)
    fresh = len(writes) / (time.perf_counter() - started)
    started = time.perf_counter()
    pg_documents.rows(writes)
    again = len(writes) / (time.perf_counter() - started)
    print(f"{len(writes)} documents ({len(posts)} posts, mean {chars:.0f} chars, after {warm_n} warm-up documents): "
          f"{fresh:.0f} docs/s on unseen posts, {again:.0f} docs/s on the same posts again (all cached)")


if __name__ == "__main__":
    main()
