"""Typed connections to the two systems, fed by the same environment as the CLI.

Required variables (`DATABASE_URL`, `MEILI_URL`) are `dg.EnvVar`s, resolved where the run runs; a
missing one is named in one line when the code location loads and fails the run at its start.
Optional ones are the Meilisearch keys, least privilege first: `MEILI_WRITE_KEY` (documents and
index creation on `topic_*`: the write path, drift), `MEILI_SEARCH_KEY` (search only: the read path),
each falling back to `MEILI_MASTER_KEY`, and none at all for a Meilisearch without a key. Dagster
1.13's `EnvVar` has no default, so they are read by the resource itself when a run sets it up (their
values never show in the UI's resource config).
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Optional

import dagster as dg
import meilisearch
import psycopg

from search_migration import db
from search_migration.write_path import meili_index

REQUIRED = {"DATABASE_URL": "the product database (cn_relay + cn_search)", "MEILI_URL": "the legacy Meilisearch"}

log = logging.getLogger(__name__)


class PostgresResource(dg.ConfigurableResource):
    """The product database: the cn_relay source contract and our cn_search schema."""

    database_url: str

    def connect(self) -> psycopg.Connection:
        return db.connect(self.database_url)


class MeiliResource(dg.ConfigurableResource):
    """The product's per-topic Meilisearch indexes.

    Keys left unset are read where the run runs, when the resource is set up (read at load time they
    would follow the code server's environment, not the run's)."""

    url: str
    write_key: Optional[str] = None
    search_key: Optional[str] = None

    def create_resource(self, context: dg.InitResourceContext) -> "MeiliResource":
        if self.write_key is not None and self.search_key is not None:
            return self
        master = os.environ.get("MEILI_MASTER_KEY", "")
        return MeiliResource(url=self.url, write_key=self.write_key or os.environ.get("MEILI_WRITE_KEY") or master,
                             search_key=self.search_key or os.environ.get("MEILI_SEARCH_KEY") or master)

    def client(self) -> meilisearch.Client:
        """The write path's client (documents and new indexes on topic_*; drift reads documents)."""
        return meili_index.client(self.url, self.write_key or "")

    def search_client(self) -> meilisearch.Client:
        """The read path's client: a search-only key is enough."""
        return meili_index.client(self.url, self.search_key or "")


def missing_required(env: Mapping[str, str] = os.environ) -> list[str]:
    return [name for name in REQUIRED if not env.get(name)]


def resources(env: Mapping[str, str] = os.environ) -> dict[str, dg.ConfigurableResource]:
    for name in missing_required(env):
        log.warning("search_migration: %s is not set (%s); runs that need it fail at start", name, REQUIRED[name])
    return {"postgres": PostgresResource(database_url=dg.EnvVar("DATABASE_URL")),
            "meili": MeiliResource(url=dg.EnvVar("MEILI_URL"))}
