"""Least privilege, printed for a DBA: what our PostgreSQL role needs, and nothing more.

Our role reads cn_relay, owns cn_search, and moves its own consumer offset only through
`cn_search.set_consumer_offset`, a function the DBA owns: it can write one row of
cn_relay.consumer_offsets and no other. Nothing here is executed by us.
"""

from __future__ import annotations

from psycopg import sql

from search_migration.source import contract

SOURCE_TABLES = ("events", "event_topics", "events_outbox", "consumer_offsets")

FUNCTION = """CREATE OR REPLACE FUNCTION cn_search.set_consumer_offset(p_consumer text, p_seq bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $f$
BEGIN
    IF p_consumer IS DISTINCT FROM {consumer} THEN
        RAISE EXCEPTION 'search_migration may only move its own consumer offset';
    END IF;
    INSERT INTO cn_relay.consumer_offsets (consumer, last_seq) VALUES (p_consumer, p_seq)
    ON CONFLICT (consumer) DO UPDATE SET last_seq = EXCLUDED.last_seq, updated_at = now();
END $f$;"""


def statements(role: str) -> list[str]:
    """The SQL, in order, to run as the database owner (or a role that owns cn_relay's tables)."""
    r = sql.Identifier(role).as_string(None)
    consumer = sql.Literal(contract.CONSUMER).as_string(None)
    return [
        f"CREATE SCHEMA IF NOT EXISTS cn_search AUTHORIZATION {r};",
        "CREATE EXTENSION IF NOT EXISTS btree_gin WITH SCHEMA cn_search;",
        "CREATE EXTENSION IF NOT EXISTS fuzzystrmatch WITH SCHEMA cn_search;",
        f"GRANT USAGE ON SCHEMA cn_relay TO {r};",
        f"GRANT SELECT ON {', '.join(f'cn_relay.{t}' for t in SOURCE_TABLES)} TO {r};",
        FUNCTION.format(consumer=consumer),
        "REVOKE ALL ON FUNCTION cn_search.set_consumer_offset(text, bigint) FROM PUBLIC;",
        f"GRANT EXECUTE ON FUNCTION cn_search.set_consumer_offset(text, bigint) TO {r};",
    ]
