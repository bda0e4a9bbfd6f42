"""Read-only questions about the product's source contract (cn_relay), shared by every stage."""

from __future__ import annotations

import time

import psycopg

CONSUMER = "search-migration"  # our write path's row in cn_relay.consumer_offsets
PRODUCT_INDEXER = "index-v1"  # the product's own search indexer (cn-index), whose place we take
OUTBOX_CHANNEL = "cn_relay_outbox"  # the product notifies it with the max seq on every commit (cn-relay ingest)

# What the product indexes (cn-index `handle_upsert`): the event exists, is not deleted, is current, is not
# ephemeral and has not expired. `e` is cn_relay.events; `%(now)s` unix seconds.
SEARCHABLE = ("NOT e.is_deleted AND e.is_current AND NOT e.is_ephemeral "
              "AND (e.expires_at IS NULL OR e.expires_at > %(now)s)")

LIVE_COUNTS_SQL = f"""
SELECT et.topic_id, count(*)
FROM cn_relay.event_topics et
JOIN cn_relay.events e ON e.event_id = et.event_id
WHERE {SEARCHABLE}
GROUP BY et.topic_id
"""


def outbox_head(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT coalesce(max(seq), 0) FROM cn_relay.events_outbox").fetchone()[0]


def consumer_offset(conn: psycopg.Connection, consumer: str) -> int:
    row = conn.execute("SELECT last_seq FROM cn_relay.consumer_offsets WHERE consumer = %s", (consumer,)).fetchone()
    return row[0] if row else 0


def now_unix() -> int:
    return int(time.time())


def set_consumer_offset(conn: psycopg.Connection, consumer: str, seq: int) -> None:
    """Our one write to the product's tables, through the function least privilege allows (our row only)."""
    conn.execute("SELECT cn_search.set_consumer_offset(%s, %s)", (consumer, seq))


def live_rows_per_topic(conn: psycopg.Connection, now: int | None = None) -> dict[str, int]:
    """Searchable (post, topic) rows per topic: what a correct search index holds."""
    return dict(conn.execute(LIVE_COUNTS_SQL, {"now": now_unix() if now is None else now}).fetchall())


TOPICS_SQL = """
WITH RECURSIVE t AS (  -- a loose index scan: one probe per distinct topic, not one per row
    (SELECT topic_id FROM cn_relay.event_topics ORDER BY topic_id LIMIT 1)
    UNION ALL
    SELECT (SELECT e.topic_id FROM cn_relay.event_topics e WHERE e.topic_id > t.topic_id
            ORDER BY e.topic_id LIMIT 1)
    FROM t WHERE t.topic_id IS NOT NULL
)
SELECT topic_id FROM t WHERE topic_id IS NOT NULL
"""


def topic_ids(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute(TOPICS_SQL)]
