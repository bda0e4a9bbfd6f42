"""Fill cn_search.post_search_documents of a bench corpus from its source, for the search bench.

Not the backfill (that is its own asset with checkpoints and leases): a plain keyset loop through
`pg_documents.apply`, so the bench measures documents written by the real writer. Idempotent — each
row carries the newest outbox sequence of its (post, topic), and older or equal writes are no-ops.
Then applies the migrations (0005/0006 build the search indexes once, after the bulk load); where the
runner refuses a bench database's history, the search migrations' idempotent statements run directly.

    SEARCH_MIGRATION_HOME=.local/bench1m SEARCH_MIGRATION_PG_PORT=55500 SEARCH_MIGRATION_MEILI_PORT=7750 \
        .venv/bin/python bench/search_load.py
"""

from __future__ import annotations

import sys
import time

from search_migration import db
from search_migration.schema import migrate
from search_migration.write_path import pg_documents
from search_migration.write_path.pg_documents import DocWrite
from search_migration.settings import Settings
from search_migration.search.text import NORMALIZER_VERSION

PAGE = 5_000
SEARCH_MIGRATIONS = ("0005_search_index.sql", "0006_search_exact.sql")  # idempotent (IF NOT EXISTS)

PAGE_SQL = """
SELECT e.event_id, et.topic_id, e.content, e.created_at,
       (SELECT max(o.seq) FROM cn_relay.events_outbox o WHERE o.event_id = e.event_id AND o.topic_id = et.topic_id)
FROM cn_relay.events e
JOIN cn_relay.event_topics et ON et.event_id = e.event_id
WHERE NOT e.is_deleted AND e.event_id > %s
ORDER BY e.event_id
LIMIT %s
"""


def load(url: str) -> int:
    written = 0
    started = time.monotonic()
    with db.connect(url) as conn:
        have = conn.execute("SELECT count(*) FROM cn_search.post_search_documents WHERE normalizer_version = %s",
                            (NORMALIZER_VERSION,)).fetchone()[0]
        live = conn.execute("SELECT count(*) FROM cn_relay.event_topics et JOIN cn_relay.events e "
                            "USING (event_id) WHERE NOT e.is_deleted").fetchone()[0]
        if have >= live:
            print(f"post_search_documents already holds {have} rows of normalizer v{NORMALIZER_VERSION}")
            return 0
        last = ""
        while True:
            rows = conn.execute(PAGE_SQL, (last, PAGE)).fetchall()
            if not rows:
                break
            # a page ends on a whole post: its topics arrive together
            tail = rows[-1][0]
            if len(rows) == PAGE:
                rows = [r for r in rows if r[0] != tail] or rows
            last = rows[-1][0]
            written += pg_documents.apply(conn, [DocWrite(seq, eid, tid, False, content, created)
                                                 for eid, tid, content, created, seq in rows])
            print(f"\r{written} rows written, {written / (time.monotonic() - started):.0f} rows/s",
                  end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return written


if __name__ == "__main__":
    s = Settings.from_env()
    n = load(s.database_url)
    try:
        applied = migrate.migrate(s.database_url)
    except migrate.MigrationError as exc:
        # a bench database whose recorded history no longer matches the files: build the search indexes
        # from 0005 directly (its statements are idempotent) rather than rewriting that history
        print(f"migrations refused ({exc}); applying the search migrations directly", file=sys.stderr)
        applied = []
        with db.connect(s.database_url) as conn:
            conn.execute("SET maintenance_work_mem = '512MB'")
            for name in SEARCH_MIGRATIONS:
                conn.execute((migrate.MIGRATIONS_DIR / name).read_text())
    with db.connect(s.database_url) as conn:
        conn.execute("ANALYZE cn_search.post_search_documents")
    print(f"loaded {n} documents; migrations applied: {applied or 'none'}")
