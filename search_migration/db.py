"""PostgreSQL connections for the engine.

Autocommit, always: engine code opens explicit `conn.transaction()` blocks, and on a
non-autocommit connection those would nest inside one implicit transaction that a crash rolls
back whole — every "committed" batch with it.
"""

from __future__ import annotations

import psycopg


def connect(conninfo: str, **kwargs) -> psycopg.Connection:
    kwargs.setdefault("connect_timeout", 10)
    return psycopg.connect(conninfo, autocommit=True, **kwargs)
