"""Fill cn_search.post_search_documents of a bench corpus from its source, for the search bench.

Not the backfill (that is its own asset with checkpoints and leases): a plain keyset loop through
`pg_documents.apply_staged`, so the bench measures documents written by the real writer, built from each
event's `raw_json` exactly as catch-up and the backfill build them (`doc_write_for_event`: the product's
five attributes, as the product's indexer gave them to the per-topic Meilisearch indexes), for what the
product calls searchable (contract.SEARCHABLE). Idempotent: each row carries the newest outbox sequence of
its (post, topic), 0 where retention pruned it, and older or equal writes are no-ops (a document of an
older normalizer version is rewritten). Resumable and incremental: a run loads only the (post, topic)
pairs it has no live document of this normalizer for (an event's content never changes: its id is its
hash) and first removes documents whose post stopped being searchable, so it can run while the corpus is
still being seeded and again once it is complete.

`--workers N` splits the event-id space into N ranges loaded in parallel (the tokenizer is CPU-bound).
Then `db migrate` (so indexes of later migrations exist) and ANALYZE; reports documents/s.

    SEARCH_MIGRATION_HOME=/work/bench1m SEARCH_MIGRATION_PG_PORT=55500 SEARCH_MIGRATION_MEILI_PORT=7750 \
        .venv/bin/python bench/search_load.py [--workers 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time

from search_migration import db
from search_migration.schema import migrate
from search_migration.search.text import NORMALIZER_VERSION
from search_migration.settings import Settings
from search_migration.source.contract import SEARCHABLE
from search_migration.write_path import pg_documents

PAGE = 2_000

PAGE_SQL = f"""
SELECT e.event_id, et.topic_id, e.raw_json, e.expires_at,
       coalesce((SELECT max(o.seq) FROM cn_relay.events_outbox o
                 WHERE o.event_id = e.event_id AND o.topic_id = et.topic_id), 0)
FROM cn_relay.events e
JOIN cn_relay.event_topics et ON et.event_id = e.event_id
WHERE {SEARCHABLE} AND e.event_id > %(after)s AND e.event_id < %(before)s
  AND NOT EXISTS (SELECT 1 FROM cn_search.post_search_documents d
                  WHERE d.post_id = e.event_id AND d.topic_id = et.topic_id AND NOT d.is_deleted
                    AND d.normalizer_version = %(version)s)
ORDER BY e.event_id
LIMIT %(page)s
"""


def _load_range(args: tuple[str, str, str, int]) -> int:
    url, after, before, now = args
    written = 0
    with db.connect(url) as conn:
        conn.execute("SET synchronous_commit = off")
        pg_documents.create_stage(conn)
        while True:
            rows = conn.execute(PAGE_SQL, {"after": after, "before": before, "page": PAGE, "now": now,
                                          "version": NORMALIZER_VERSION}).fetchall()
            if not rows:
                break
            tail = rows[-1][0]  # a page ends on a whole post: its topics arrive together
            if len(rows) == PAGE:
                rows = [r for r in rows if r[0] != tail] or rows
            after = rows[-1][0]
            writes = [pg_documents.doc_write_for_event(seq, raw, tid, expires_at=exp)
                      for eid, tid, raw, exp, seq in rows]
            with conn.transaction():
                written += sum(pg_documents.apply_staged(conn, writes).values())
    return written


PRUNE_SQL = f"""
DELETE FROM cn_search.post_search_documents d
WHERE NOT EXISTS (SELECT 1 FROM cn_relay.events e JOIN cn_relay.event_topics et ON et.event_id = e.event_id
                  WHERE e.event_id = d.post_id AND et.topic_id = d.topic_id AND {SEARCHABLE})
"""


def load(url: str, workers: int) -> tuple[int, float]:
    now = int(time.time())
    with db.connect(url) as conn:
        pruned = conn.execute(PRUNE_SQL, {"now": now}).rowcount
        print(f"{pruned} documents of posts no longer searchable removed", file=sys.stderr)
        have = conn.execute("SELECT count(*) FROM cn_search.post_search_documents WHERE normalizer_version = %s"
                            " AND NOT is_deleted", (NORMALIZER_VERSION,)).fetchone()[0]
        live = conn.execute(f"SELECT count(*) FROM cn_relay.event_topics et JOIN cn_relay.events e "
                            f"USING (event_id) WHERE {SEARCHABLE}", {"now": now}).fetchone()[0]
    if have >= live:
        print(f"post_search_documents already holds {have} rows of normalizer v{NORMALIZER_VERSION}",
              file=sys.stderr)
        return 0, 0.0
    hexdigits = "0123456789abcdef"
    bounds = [""] + [hexdigits[i * 16 // workers] for i in range(1, workers)] + ["\U0010ffff"]
    # event ids are lowercase hex: range i is (bounds[i] - epsilon, bounds[i+1]); "" < every id
    ranges = [(url, bounds[i] if i == 0 else chr(ord(bounds[i]) - 1) + "\U0010ffff", bounds[i + 1], now)
              for i in range(workers)]
    started = time.monotonic()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        written = sum(pool.map(_load_range, ranges))
    return written, time.monotonic() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--cluster", action="store_true",
                    help="then rewrite the documents in topic order (CLUSTER), the layout the backfill leaves: "
                         "it writes topic x week partitions, a page of one topic at a time")
    args = ap.parse_args()
    s = Settings.from_env()
    n, elapsed = load(s.database_url, args.workers)
    if n:
        print(f"loaded {n} documents in {elapsed:.0f}s ({n / elapsed:.0f} docs/s, {args.workers} workers)")
    applied = migrate.migrate(s.database_url)
    with db.connect(s.database_url) as conn:
        if args.cluster:
            started = time.monotonic()
            conn.execute("SET maintenance_work_mem = '1GB'")
            conn.execute("CLUSTER cn_search.post_search_documents USING post_search_documents_topic_idx")
            print(f"clustered by topic in {time.monotonic() - started:.0f}s", file=sys.stderr)
        conn.execute("VACUUM ANALYZE cn_search.post_search_documents")
        conn.execute("VACUUM ANALYZE cn_search.post_title_words")
        conn.execute("ANALYZE cn_search.search_vocabulary")
    print(f"migrations applied: {applied or 'none'}")


if __name__ == "__main__":
    main()
