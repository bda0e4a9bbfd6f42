"""The high watermark: the outbox position a backfill copies up to, and the manifest frozen at it."""

from __future__ import annotations

import psycopg

from search_migration.backfill.model import BackfillError, Watermark
from search_migration.cutover.flags import WriteMode, write_mode
from search_migration.source import contract

# Every searchable (topic, post) of the source tables that first appeared at or below the watermark,
# with the latest outbox seq it had there. The product prunes outbox rows after 30 days: a post without
# any outbox row is an old one and gets version 0, so any later outbox row wins over the copy.
MANIFEST_SQL = f"""
INSERT INTO cn_search.backfill_manifest (topic_id, chunk_at, event_id, version_seq)
SELECT et.topic_id, least(greatest(e.created_at, %(floor)s), %(ceiling)s - 1), e.event_id, coalesce(o.version, 0)
FROM cn_relay.event_topics et
JOIN cn_relay.events e ON e.event_id = et.event_id
LEFT JOIN (
    SELECT event_id, topic_id, max(seq) FILTER (WHERE seq <= %(seq)s) AS version, min(seq) AS first_seq
    FROM cn_relay.events_outbox
    WHERE op IN ('upsert', 'delete')  -- an unknown-op row is no version
    GROUP BY event_id, topic_id
) o ON o.event_id = et.event_id AND o.topic_id = et.topic_id
WHERE {contract.SEARCHABLE} AND (o.first_seq IS NULL OR o.first_seq <= %(seq)s)
"""


# A new watermark re-opens exactly the completed partitions whose window gained manifest rows (posts that
# appeared since the previous watermark, most already copied by catch-up): copying them again is cheap and
# idempotent, and recounts them against the new manifest. A window that lost rows stays complete at its
# new size. So `backfill_complete` is reachable again without a rebuild.
REOPEN_SQL = """
WITH counts AS (
    SELECT j.partition_key, j.rows_total AS was,
           (SELECT count(*) FROM cn_search.backfill_manifest m WHERE m.topic_id = j.topic_id
              AND m.chunk_at >= j.window_start AND m.chunk_at < j.window_end) AS now
    FROM cn_search.backfill_jobs j WHERE j.status = 'succeeded'
), shrunk AS (
    UPDATE cn_search.backfill_jobs j SET rows_total = c.now FROM counts c
    WHERE j.partition_key = c.partition_key AND c.now < c.was
), reopened AS (
    UPDATE cn_search.backfill_jobs j SET status = 'pending', rows_copied = 0, rows_skipped = 0, finished_at = NULL,
        lease_token = NULL, lease_owner = NULL
    FROM counts c WHERE j.partition_key = c.partition_key AND c.now > coalesce(c.was, 0)
    RETURNING j.partition_key
), forgotten AS (
    DELETE FROM cn_search.backfill_checkpoints k USING reopened r WHERE k.partition_key = r.partition_key
)
SELECT count(*) FROM reopened
"""


def capture_watermark(conn: psycopg.Connection, *, by: str, chunk_floor: int, chunk_ceiling: int) -> Watermark:
    """Record MAX(outbox seq) and freeze the manifest at it; refused until writes are dual.

    In `meili_only` nothing writes PostgreSQL after the watermark, so rows between the backfill and
    the start of dual writes would be lost; the capture waits for the write mode to say so. Posts are
    chunked on created_at clamped to [chunk_floor, chunk_ceiling): the product does not validate
    created_at, and every post must fall in some partition.
    """
    if chunk_ceiling <= chunk_floor:
        raise BackfillError(f"the partitioned span is empty: ceiling {chunk_ceiling} <= floor {chunk_floor}")
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
        rows = conn.execute(MANIFEST_SQL, {"seq": seq, "now": contract.now_unix(), "floor": chunk_floor,
                                           "ceiling": chunk_ceiling}).rowcount
        reopened = conn.execute(REOPEN_SQL).fetchone()[0]
        wid = conn.execute(
            "INSERT INTO cn_search.backfill_watermarks (high_watermark, captured_by, manifest_rows, chunk_floor, "
            "chunk_ceiling) VALUES (%s, %s, %s, %s, %s) RETURNING watermark_id",
            (seq, by, rows, chunk_floor, chunk_ceiling)).fetchone()[0]
    conn.execute("ANALYZE cn_search.backfill_manifest")
    return Watermark(wid, seq, rows, reopened)


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

