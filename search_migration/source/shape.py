"""Is this the product's cn_relay? Checked before anything runs against it, and never changed.

The columns the engine reads, with the types the product's migrations give them (kukuri
community node, 884c1885). Extra columns or tables are fine; a missing table, a missing column or
another type is refused with one line naming the first mismatch.
"""

from __future__ import annotations

import psycopg

EXPECTED: dict[str, dict[str, str]] = {
    "events": {
        "event_id": "text", "pubkey": "text", "kind": "integer", "created_at": "bigint", "tags": "jsonb",
        "content": "text", "raw_json": "jsonb", "ingested_at": "timestamp with time zone",
        "is_deleted": "boolean", "is_ephemeral": "boolean", "is_current": "boolean",
        "replaceable_key": "text", "addressable_key": "text", "expires_at": "bigint",
    },
    "event_topics": {"event_id": "text", "topic_id": "text"},
    "events_outbox": {
        "seq": "bigint", "op": "text", "event_id": "text", "topic_id": "text", "kind": "integer",
        "created_at": "bigint", "ingested_at": "timestamp with time zone", "effective_key": "text",
        "reason": "text",
    },
    "consumer_offsets": {"consumer": "text", "last_seq": "bigint", "updated_at": "timestamp with time zone"},
}

COLUMNS_SQL = """
SELECT table_name, column_name, data_type
FROM information_schema.columns
WHERE table_schema = 'cn_relay' AND table_name = ANY(%s)
"""


class ShapeError(Exception):
    """cn_relay is missing or not the product's shape; the message names the first mismatch."""


def mismatches(conn: psycopg.Connection) -> list[str]:
    """Every difference from the expected shape, in a stable order (empty: it is the product's)."""
    if conn.execute("SELECT to_regnamespace('cn_relay')").fetchone()[0] is None:
        return ["schema cn_relay does not exist (this is not the product's database)"]
    found: dict[str, dict[str, str]] = {}
    for table, column, data_type in conn.execute(COLUMNS_SQL, (list(EXPECTED),)):
        found.setdefault(table, {})[column] = data_type
    problems = []
    for table, columns in EXPECTED.items():
        if table not in found:
            problems.append(f"table cn_relay.{table} does not exist")
            continue
        for column, data_type in columns.items():
            actual = found[table].get(column)
            if actual is None:
                problems.append(f"column cn_relay.{table}.{column} does not exist")
            elif actual != data_type:
                problems.append(f"column cn_relay.{table}.{column} is {actual}, expected {data_type}")
    return problems


def verify(conn: psycopg.Connection) -> None:
    """Refuse (one line) unless cn_relay has the product's shape."""
    problems = mismatches(conn)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ShapeError(f"cn_relay is not the product's shape: {problems[0]}{more}")
