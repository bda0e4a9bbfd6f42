"""What indexing costs on the write side, in one run: documents/s of pg_documents.apply_staged.

Three passes over the same documents (the real-text corpus of bench/parity.py, in its order, BATCH a
transaction, as parity.py and the backfill write them):

- `tokenize`: building the rows alone (segment.py's words, the tsvector literal; no database),
- `write, no title words`: apply_staged with the title-word triggers of migration 0016 disabled,
- `write`: apply_staged as the write path runs it (triggers on: cn_search.post_title_words kept).

The table is emptied before each write pass; the last pass leaves it as parity.py's own indexing would
(the same writes, triggers on), so `parity.py --reuse` can run on it afterwards.

    SEARCH_MIGRATION_HOME=$PWD/.local/parity SEARCH_MIGRATION_PG_PORT=55421 SEARCH_MIGRATION_MEILI_PORT=7721 \
        .venv/bin/python bench/write_cost.py [--posts N]
"""

from __future__ import annotations

import argparse
import time

from parity import BATCH, DEFAULT_DIR, doc_writes, load

from search_migration import db
from search_migration.settings import Settings
from search_migration.write_path import pg_documents

TRIGGERS = ("title_words_insert", "title_words_update", "title_words_delete", "title_words_truncate")


def _write(conn, writes, triggers: bool) -> float:
    action = "ENABLE" if triggers else "DISABLE"
    for name in TRIGGERS:
        conn.execute(f"ALTER TABLE cn_search.post_search_documents {action} TRIGGER {name}")
    conn.execute("TRUNCATE cn_search.post_title_words")
    conn.execute("TRUNCATE cn_search.post_search_documents")
    conn.execute("CHECKPOINT")
    started = time.perf_counter()
    for i in range(0, len(writes), BATCH):
        with conn.transaction():
            pg_documents.apply_staged(conn, writes[i:i + BATCH])
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=None)
    args = ap.parse_args()
    posts, _ = load(DEFAULT_DIR, args.posts, 15, [], None)
    writes = doc_writes(posts)
    started = time.perf_counter()
    for i in range(0, len(writes), BATCH):
        pg_documents.rows(pg_documents.latest_per_document(writes[i:i + BATCH]), set())
    tokenize = time.perf_counter() - started
    with db.connect(Settings.from_env().database_url) as conn:
        plain = _write(conn, writes, triggers=False)
        full = _write(conn, writes, triggers=True)
        conn.execute("VACUUM ANALYZE cn_search.post_search_documents")
        conn.execute("VACUUM ANALYZE cn_search.post_title_words")
    n = len(writes)
    print(f"{n} documents ({len(posts)} posts)")
    for name, secs in (("tokenize only", tokenize), ("write, no title words", plain), ("write", full)):
        print(f"{name:<24} {secs:7.1f} s  {n / secs:7.0f} docs/s")
    print(f"title words cost: {100 * (full - plain) / plain:.0f} % of the write; "
          f"the tokenizer: {100 * tokenize / plain:.0f} % of a write without title words")


if __name__ == "__main__":
    main()
