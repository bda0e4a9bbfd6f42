"""The backfill's oracle and shortcuts: the source's searchable rows at a watermark computed without the
manifest (`expected`) against PostgreSQL's live documents (`actual`), week windows, a whole backfill."""

from __future__ import annotations

from search_migration import backfill, db
from search_migration.backfill import Window
from search_migration.local.demo_corpus import T_END, T_START
from search_migration.source import contract

WEEK = 7 * 24 * 3600
SPAN = {"chunk_floor": T_START - T_START % WEEK, "chunk_ceiling": T_END + 2 * WEEK}  # the demo corpus's weeks
WINDOWS = [Window(s, s + WEEK) for s in range(SPAN["chunk_floor"], SPAN["chunk_ceiling"], WEEK)]

# Searchable (topic, post) with its content and its version at the watermark: the newest outbox row at or
# below it, 0 when retention pruned the pair's history; pairs that first appeared after it are left out.
EXPECTED_SQL = f"""
SELECT et.topic_id, e.event_id, md5(e.content), coalesce(max(o.seq) FILTER (WHERE o.seq <= %(wm)s), 0)
FROM cn_relay.event_topics et
JOIN cn_relay.events e ON e.event_id = et.event_id
LEFT JOIN cn_relay.events_outbox o ON o.event_id = et.event_id AND o.topic_id = et.topic_id
     AND o.op IN ('upsert', 'delete')
WHERE {contract.SEARCHABLE}
GROUP BY 1, 2, 3
HAVING min(o.seq) IS NULL OR min(o.seq) <= %(wm)s
"""
ACTUAL_SQL = "SELECT topic_id, post_id, md5(content), source_seq FROM cn_search.post_search_documents WHERE NOT is_deleted"


def expected(conn, watermark: int) -> set[tuple]:
    """The source's searchable (topic, post, content md5, seq) rows at the watermark, without the manifest."""
    return set(conn.execute(EXPECTED_SQL, {"wm": watermark, "now": contract.now_unix()}).fetchall())


def actual(conn) -> set[tuple]:
    """PostgreSQL's live documents as (topic, post, content md5, seq)."""
    return set(conn.execute(ACTUAL_SQL).fetchall())


def capture(conn, by: str = "test") -> backfill.Watermark:
    """The watermark over the demo corpus's span (what backfill_high_watermark passes from its partitions)."""
    return backfill.capture_watermark(conn, by=by, **SPAN)


def backfill_all(url: str, owner: str = "test") -> None:
    """Capture the watermark (writes must be dual) and backfill every topic in one window spanning all."""
    with db.connect(url) as conn:
        capture(conn)
        topics = contract.topic_ids(conn)
    for topic in topics:
        backfill.run_partition(url, f"all-{topic}", topic, Window(-2**62, 2**62), owner=owner)
