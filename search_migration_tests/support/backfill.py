"""The backfill's oracle and shortcuts: the source's live rows at a watermark computed without the
manifest (`expected`) against PostgreSQL's live documents (`actual`), week windows, a whole backfill."""

from __future__ import annotations

from search_migration import backfill, db
from search_migration.backfill import Window
from search_migration.local.demo_corpus import EPOCH
from search_migration.source import contract

WEEK = 7 * 24 * 3600
WINDOWS = [Window(s, s + WEEK) for s in range(EPOCH, EPOCH + 41 * WEEK, WEEK)]  # the demo corpus's weeks

EXPECTED_SQL = """
SELECT et.topic_id, e.event_id, md5(e.content), max(o.seq)
FROM cn_relay.event_topics et
JOIN cn_relay.events e ON e.event_id = et.event_id
JOIN cn_relay.events_outbox o ON o.event_id = et.event_id AND o.topic_id = et.topic_id AND o.seq <= %s
WHERE NOT e.is_deleted
GROUP BY 1, 2, 3
"""
ACTUAL_SQL = "SELECT topic_id, post_id, md5(content), source_seq FROM cn_search.post_search_documents WHERE NOT is_deleted"


def expected(conn, watermark: int) -> set[tuple]:
    """The source's live (topic, post, content md5, seq) rows at or below the watermark, without the manifest."""
    return set(conn.execute(EXPECTED_SQL, (watermark,)).fetchall())


def actual(conn) -> set[tuple]:
    """PostgreSQL's live documents as (topic, post, content md5, seq)."""
    return set(conn.execute(ACTUAL_SQL).fetchall())


def backfill_all(url: str, owner: str = "test") -> None:
    """Capture the watermark (writes must be dual) and backfill every topic in one all-time window each."""
    with db.connect(url) as conn:
        backfill.capture_watermark(conn, by="test")
        topics = contract.topic_ids(conn)
    for topic in topics:
        backfill.run_partition(url, f"all-{topic}", topic, Window(0, 2**62), owner=owner)
