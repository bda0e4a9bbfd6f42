"""Is `cn_search` ours? Our state lives there alone, so a `cn_search` someone else made is refused.

Ours means: it holds our migration history (`cn_search.schema_versions`), or it holds nothing but
what `db grants` has a DBA put there for our role (btree_gin, the consumer-offset function). Anything else — the product's own later search migration creates a
`cn_search` of its own — is named in one line and nothing is touched.
"""

from __future__ import annotations

import psycopg

# Objects in cn_search that are neither an extension's members (btree_gin, which a DBA may install there)
# nor the offset function a DBA creates for us (schema/grants.py).
FOREIGN_OBJECT_SQL = """
WITH members AS (SELECT classid, objid FROM pg_depend WHERE deptype = 'e')
SELECT c.relname FROM pg_class c
WHERE c.relnamespace = 'cn_search'::regnamespace
  AND NOT EXISTS (SELECT 1 FROM members m WHERE m.classid = 'pg_class'::regclass AND m.objid = c.oid)
UNION ALL
SELECT p.proname FROM pg_proc p
WHERE p.pronamespace = 'cn_search'::regnamespace AND p.proname <> 'set_consumer_offset'
  AND NOT EXISTS (SELECT 1 FROM members m WHERE m.classid = 'pg_proc'::regclass AND m.objid = p.oid)
UNION ALL
SELECT t.typname FROM pg_type t
WHERE t.typnamespace = 'cn_search'::regnamespace AND t.typrelid = 0 AND t.typelem = 0
  AND NOT EXISTS (SELECT 1 FROM members m WHERE m.classid = 'pg_type'::regclass AND m.objid = t.oid)
ORDER BY 1 LIMIT 1
"""


class ForeignSchema(Exception):
    """cn_search exists and is not ours; the message names what was found."""


def state(conn: psycopg.Connection) -> str:
    """'absent', 'ours' or 'empty'; raises ForeignSchema for a cn_search that is not ours."""
    if conn.execute("SELECT to_regnamespace('cn_search')").fetchone()[0] is None:
        return "absent"
    if conn.execute("SELECT to_regclass('cn_search.schema_versions')").fetchone()[0] is not None:
        return "ours"
    found = conn.execute(FOREIGN_OBJECT_SQL).fetchone()
    if found is None:
        return "empty"
    raise ForeignSchema(f"schema cn_search exists and is not ours (it holds {found[0]!r} and no "
                        "cn_search.schema_versions): refusing to touch it")


def check(conn: psycopg.Connection) -> None:
    """Refuse (one line) when cn_search belongs to someone else."""
    state(conn)
