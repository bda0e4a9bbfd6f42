"""The repository's paths, the session's PostgreSQL and Meilisearch, free ports and throwaway databases."""

from __future__ import annotations

import os
from contextlib import contextmanager
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from search_migration.settings import Settings
from search_migration.write_path import meili_index

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".local" / "bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_dbname(url: str, dbname: str) -> str:
    """The same server URL with another database (URL form: dagster-postgres needs one)."""
    return urlsplit(url)._replace(path=f"/{dbname}").geturl()


@dataclass
class Servers:
    database_url: str = field(repr=False)  # a maintenance database on the server; tests create their own
    meili_url: str
    meili_key: str = field(repr=False)  # hypothesis and pytest print fixture values in failure reports
    settings: Settings | None  # set when this session started embedded services

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("DATABASE_URL", "MEILI_URL", "MEILI_MASTER_KEY", "DAGSTER_PG_URL", "MEILI_INDEX")}
        env.update(SEARCH_MIGRATION_CACHE=str(CACHE), MEILI_URL=self.meili_url, MEILI_MASTER_KEY=self.meili_key)
        env.update(extra)
        return env

    def create_database(self) -> str:
        """A fresh, empty database of its own on the server; its URL."""
        name = f"sm_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return with_dbname(self.database_url, name)

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def delete_topic_indexes(client, namespace: str, database_url: str | None = None) -> None:
    """Remove a test's per-topic Meilisearch indexes: those of its namespace, or of the topics its
    database holds (the shared Meilisearch outlives every test)."""
    uids = {u for u in meili_index.topic_indexes(client) if namespace and u.startswith(f"topic_kukuri_{namespace}")}
    if database_url:
        try:
            with psycopg.connect(database_url) as conn:
                uids |= {meili_index.index_uid(t) for (t,) in conn.execute(
                    "SELECT DISTINCT topic_id FROM cn_relay.event_topics")}
        except psycopg.Error:
            pass  # no source tables: nothing of it was indexed
    for uid in sorted(uids):
        meili_index.delete_index(client, uid)


@contextmanager
def login_role(url: str, prefix: str, *grants: str):
    """A login role of its own (roles are the server's, not a database's), given `grants` ("{role}" in
    each is its quoted name), then dropped with whatever it owns."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{name}" LOGIN')
        for grant in grants:
            conn.execute(grant.format(role=f'"{name}"'))
    try:
        yield name
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{name}" CASCADE')
            conn.execute(f'DROP ROLE "{name}"')


def as_role(url: str, role: str) -> str:
    """The same database as another role (the embedded server trusts local connections)."""
    parts = urlsplit(url)
    return parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}").geturl()


@contextmanager
def scoped_meili_keys(master):
    """The project's scoped Meilisearch keys (schema.meili_keys), created with the master key as an
    operator would, then deleted: {variable: key}."""
    from search_migration.schema import meili_keys

    made = {variable: master.create_key(body) for variable, body in meili_keys.key_bodies().items()}
    try:
        yield {variable: key.key for variable, key in made.items()}
    finally:
        for key in made.values():
            master.delete_key(key.key)
