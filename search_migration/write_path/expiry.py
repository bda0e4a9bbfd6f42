"""The expiry sweep: an event leaves search when its `expires_at` passes, with no source write.

The product's indexer sweeps the same way (the relay's own outbox `expiration` rows come hourly), so
after the handover the sweep is ours. Each engine keeps its own cursor: an engine the write mode
does not name now catches up on what expired meanwhile when it is written again.
"""

from __future__ import annotations

import meilisearch
import psycopg

from search_migration.source import contract
from search_migration.write_path import meili_index

DUE_SQL = """
SELECT et.topic_id, e.event_id
FROM cn_relay.events e JOIN cn_relay.event_topics et ON et.event_id = e.event_id
WHERE e.expires_at > %(after)s AND e.expires_at <= %(now)s
"""

PG_SWEEP_SQL = """
UPDATE cn_search.post_search_documents
SET is_deleted = true, delete_reason = 'expired', content = '', normalized_text = '', search_tokens = '',
    expires_at = NULL, updated_at = now()
WHERE NOT is_deleted AND expires_at IS NOT NULL AND expires_at <= %s
"""


def _cursor(conn: psycopg.Connection, key: str, now: int) -> int:
    row = conn.execute("SELECT swept_to FROM cn_search.expiry_sweeps WHERE consumer = %s", (key,)).fetchone()
    return row[0] if row else now  # a new cursor starts now: the product's indexer swept before the handover


def _advance(conn: psycopg.Connection, key: str, now: int) -> None:
    conn.execute("INSERT INTO cn_search.expiry_sweeps (consumer, swept_to) VALUES (%s, %s) "
                 "ON CONFLICT (consumer) DO UPDATE SET swept_to = EXCLUDED.swept_to, swept_at = now()", (key, now))


def start(conn: psycopg.Connection, consumer: str, now: int) -> None:
    """At the handover: every engine's sweep starts where the product's left off (now)."""
    for side in ("meili", "pg"):
        _advance(conn, f"{consumer}:{side}", now)


def sweep(conn: psycopg.Connection, meili: meilisearch.Client | None, sides: list[str], *,
          consumer: str = contract.CONSUMER, now: int | None = None) -> dict[str, int]:
    """Remove what expired since each side's cursor; returns documents removed per side."""
    now = contract.now_unix() if now is None else now
    removed = {}
    if "pg" in sides:
        with conn.transaction():
            removed["pg"] = conn.execute(PG_SWEEP_SQL, (now,)).rowcount
            _advance(conn, f"{consumer}:pg", now)
    if "meili" in sides and meili is not None:
        key = f"{consumer}:meili"
        due: dict[str, list[str]] = {}
        for topic_id, event_id in conn.execute(DUE_SQL, {"after": _cursor(conn, key, now), "now": now}):
            due.setdefault(meili_index.index_uid(topic_id), []).append(event_id)
        tasks = [meili.index(uid).delete_documents(ids).task_uid for uid, ids in sorted(due.items())]
        for task in tasks:
            meili_index.wait(meili, task)
        _advance(conn, key, now)
        removed["meili"] = sum(map(len, due.values()))
    return removed
