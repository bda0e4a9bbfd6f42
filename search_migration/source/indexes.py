"""Indexes we would like on the product's tables, printed for a DBA; the code works without them.

Nothing here is ever executed by us: `db migrate` changes nothing in cn_relay. Each statement is
`CREATE INDEX CONCURRENTLY` (no write lock on the product's tables), safe to run twice.
"""

from __future__ import annotations

WISHED = [
    ("the write path: older replaceable versions an upsert removes (one probe per batch)",
     "CREATE INDEX CONCURRENTLY IF NOT EXISTS search_migration_events_replaceable_idx "
     "ON cn_relay.events (replaceable_key) WHERE replaceable_key IS NOT NULL;"),
    ("the write path: older addressable versions an upsert removes",
     "CREATE INDEX CONCURRENTLY IF NOT EXISTS search_migration_events_addressable_idx "
     "ON cn_relay.events (addressable_key) WHERE addressable_key IS NOT NULL;"),
    ("the expiry sweep: events whose expires_at passed since the last sweep",
     "CREATE INDEX CONCURRENTLY IF NOT EXISTS search_migration_events_expires_idx "
     "ON cn_relay.events (expires_at) WHERE expires_at IS NOT NULL;"),
    ("dead-letter replay and drift: a post's outbox rows per topic, newest first",
     "CREATE INDEX CONCURRENTLY IF NOT EXISTS search_migration_outbox_event_topic_idx "
     "ON cn_relay.events_outbox (event_id, topic_id, seq);"),
]


def statements() -> list[str]:
    """The SQL a DBA may run, each preceded by a comment saying who it helps."""
    return [f"-- {why}\n{sql}" for why, sql in WISHED]
