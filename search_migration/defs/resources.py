"""Typed connections to the two systems, fed by the same environment as the CLI."""

from __future__ import annotations

import dagster as dg
import meilisearch
import psycopg

from search_migration import db
from search_migration.write_path import meili_index


class PostgresResource(dg.ConfigurableResource):
    """The product database: the cn_relay source contract and our cn_search schema."""

    database_url: str

    def connect(self) -> psycopg.Connection:
        return db.connect(self.database_url)


class MeiliResource(dg.ConfigurableResource):
    """The legacy Meilisearch index."""

    url: str
    master_key: str

    def client(self) -> meilisearch.Client:
        return meili_index.client(self.url, self.master_key)


def resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "postgres": PostgresResource(database_url=dg.EnvVar("DATABASE_URL")),
        "meili": MeiliResource(
            url=dg.EnvVar("MEILI_URL"), master_key=dg.EnvVar("MEILI_MASTER_KEY")
        ),
    }
