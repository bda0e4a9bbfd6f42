"""The high watermark: the outbox position a backfill copies up to, and the manifest frozen at it."""

from __future__ import annotations

import psycopg

from search_migration.backfill.model import BackfillError, Watermark
from search_migration.cutover.flags import WriteMode, write_mode

MANIFEST_SQL = """
INSERT INTO cn_search.backfill_manifest (topic_id, created_at, event_id, version_seq)
SELECT o.topic_id, e.created_at, o.event_id, max(o.seq)
FROM cn_relay.events_outbox o
JOIN cn_relay.events e ON e.event_id = o.event_id
WHERE o.seq <= %(seq)s AND o.op IN ('upsert', 'delete')  -- an unknown-op row is no version
GROUP BY o.topic_id, e.created_at, o.event_id
"""


def capture_watermark(conn: psycopg.Connection, *, by: str) -> Watermark:
    """Record MAX(outbox seq) and freeze the manifest at it; refused until writes are dual.

    In `meili_only` nothing writes PostgreSQL after the watermark, so rows between the backfill and
    the start of dual writes would be lost; the capture waits for the write mode to say so.
    """
    mode = write_mode(conn)
    if mode is WriteMode.MEILI_ONLY:
        raise BackfillError("refusing to capture the backfill high watermark while search_write_mode is "
                            "meili_only: set it to dual first, or catch-up would miss the rows written "
                            "between the backfill and dual writes")
    with conn.transaction():
        # one capture at a time; the outbox head read inside the lock
        conn.execute("LOCK TABLE cn_search.backfill_manifest IN EXCLUSIVE MODE")
        seq = conn.execute("SELECT coalesce(max(seq), 0) FROM cn_relay.events_outbox").fetchone()[0]
        conn.execute("DELETE FROM cn_search.backfill_manifest")
        rows = conn.execute(MANIFEST_SQL, {"seq": seq}).rowcount
        wid = conn.execute(
            "INSERT INTO cn_search.backfill_watermarks (high_watermark, captured_by, manifest_rows) "
            "VALUES (%s, %s, %s) RETURNING watermark_id", (seq, by, rows)).fetchone()[0]
    conn.execute("ANALYZE cn_search.backfill_manifest")
    return Watermark(wid, seq, rows)


def latest_watermark(conn: psycopg.Connection) -> Watermark | None:
    row = conn.execute("SELECT watermark_id, high_watermark, coalesce(manifest_rows, 0) "
                       "FROM cn_search.backfill_watermarks ORDER BY watermark_id DESC LIMIT 1").fetchone()
    return Watermark(*row) if row else None


def require_watermark(conn: psycopg.Connection) -> Watermark:
    wm = latest_watermark(conn)
    if wm is None:
        raise BackfillError("no backfill high watermark has been captured; materialize "
                            "backfill_high_watermark first (it needs search_write_mode=dual)")
    return wm

