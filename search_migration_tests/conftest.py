"""Real PostgreSQL and Meilisearch for every test: the embedded services, or DATABASE_URL/MEILI_URL.

One pair of servers serves the session; each test gets its own database and its own topic namespace
(the product keeps one Meilisearch index per topic), so tests never see each other's rows. Servers this session started are stopped at the end. The UI tests share
one `search-migration dev` for the session, put back to the state it booted in before each of them.
Fixtures only: what tests share besides fixtures is in `support/`.
"""

from __future__ import annotations

import os
import shutil
import uuid

import dagster as dg
import pytest

from search_migration import db
from search_migration.local import demo_seed, services
from search_migration.local.product_fixture import apply_product_schema
from search_migration.schema.migrate import migrate
from search_migration.settings import Settings
from search_migration.source import contract
from search_migration.write_path import handover, meili_index

from .support.servers import CACHE, REPO, Servers, delete_topic_indexes, free_port
from .support.ui import DEV_POSTS, DEV_TOPICS, DevServer, MigrationState, asset_nodes, dagster_dev


@pytest.fixture(scope="session")
def servers() -> Servers:
    if os.environ.get("DATABASE_URL") and os.environ.get("MEILI_URL"):
        yield Servers(os.environ["DATABASE_URL"], os.environ["MEILI_URL"], os.environ.get("MEILI_MASTER_KEY", ""), None)
        return
    pg_port = os.environ.get("SEARCH_MIGRATION_TEST_PG_PORT", "55439")
    s = Settings.from_env({
        "SEARCH_MIGRATION_HOME": str(REPO / ".local" / f"test-services-{pg_port}"),
        "SEARCH_MIGRATION_CACHE": str(CACHE),
        "SEARCH_MIGRATION_PG_PORT": pg_port,
        "SEARCH_MIGRATION_MEILI_PORT": os.environ.get("SEARCH_MIGRATION_TEST_MEILI_PORT", "7719"),
    })
    already_running = bool(services.recorded_pids(s))  # another test session's: leave them be
    services.up(s)
    try:
        yield Servers(s.embedded_pg_url("postgres"), s.meili_url, s.meili_master_key, s)
    finally:
        if not already_running:
            services.down(s)


@pytest.fixture
def database_url(servers: Servers) -> str:
    """A fresh, empty database of its own on the shared server."""
    url = servers.create_database()
    yield url
    servers.drop_database(url)


@pytest.fixture
def migrated_url(database_url: str) -> str:
    """The product's (empty) pre-migration schema, then our migrations: what `db migrate` finds on a product."""
    with db.connect(database_url) as conn:
        apply_product_schema(conn)
    migrate(database_url)
    return database_url


@pytest.fixture
def namespace(servers: Servers) -> str:
    """This test's topics are `kukuri:<namespace>-...`, so their per-topic indexes are the test's own."""
    ns = f"t{uuid.uuid4().hex[:10]}"
    yield ns
    delete_topic_indexes(meili_index.client(servers.meili_url, servers.meili_key), ns)


@pytest.fixture
def legacy(database_url: str, meili, namespace: str) -> str:
    """A small pre-migration product: the demo corpus written as the product writes it and indexed by the
    product's indexer (index-v1 at the outbox head), stage legacy, no handover yet."""
    demo_seed.seed(database_url, meili, posts=600, topics=4, seed=5, namespace=namespace)
    return database_url


@pytest.fixture
def seeded(legacy: str) -> str:
    """`legacy`, with the write path taken over from index-v1 at its offset (what most tests exercise)."""
    with db.connect(legacy) as conn:
        handover.adopt(conn, from_consumer=contract.PRODUCT_INDEXER, by="test", reason="tests take over the write path")
    return legacy


@pytest.fixture
def own_meili(tmp_path, servers: Servers) -> Settings:
    """A Meilisearch process of this test's own, so the test can stop and restart it like an outage."""
    s = Settings.from_env({"SEARCH_MIGRATION_HOME": str(tmp_path / "own-meili"), "SEARCH_MIGRATION_CACHE": str(CACHE),
                           "DATABASE_URL": servers.database_url, "SEARCH_MIGRATION_MEILI_PORT": str(free_port())})
    services.up(s)
    yield s
    services.down(s)


@pytest.fixture
def own_pg(servers: Servers) -> Settings:
    """A PostgreSQL server of this test's own, so the test can stop and restart it like an outage.

    Its data lives under .local like the session's server: pytest's tmp_path is private to root and
    the server runs as an unprivileged user when the tests run as root."""
    port = free_port()
    home = REPO / ".local" / f"own-pg-{port}"
    s = Settings.from_env({"SEARCH_MIGRATION_HOME": str(home), "SEARCH_MIGRATION_CACHE": str(CACHE),
                           "MEILI_URL": servers.meili_url, "MEILI_MASTER_KEY": servers.meili_key,
                           "SEARCH_MIGRATION_PG_PORT": str(port)})
    services.up(s)
    yield s
    services.down(s)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def meili(servers: Servers):
    return meili_index.client(servers.meili_url, servers.meili_key)


@pytest.fixture
def dagster_env(request, monkeypatch, servers: Servers):
    """A test Dagster instance whose resources read the test's database (`seeded` when the test asks
    for it, else `migrated_url`) and index from the environment, as a deployment's EnvVars do."""
    url = request.getfixturevalue("seeded" if "seeded" in request.fixturenames else "migrated_url")
    for name, value in servers.env(DATABASE_URL=url).items():
        monkeypatch.setenv(name, value)
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture(scope="session")
def dagster_dev_session(servers: Servers, tmp_path_factory) -> DevServer:
    """One `search-migration dev` (seed, then `dagster dev` with its daemon) on a database and index of
    its own, booted once for every UI test; `dev` hands it to a test."""
    url = servers.create_database()
    tmp = tmp_path_factory.mktemp("dagster_dev")
    try:
        with dagster_dev(servers.env(DATABASE_URL=url), tmp, DEV_POSTS, DEV_TOPICS) as (port, proc):
            server = DevServer(port, proc, url, tmp / "dev.log")
            server.wait_for(lambda: asset_nodes(port), 400, "the Dagster UI to list assets")
            server.booted = MigrationState.of(url)
            yield server
    finally:
        delete_topic_indexes(meili_index.client(servers.meili_url, servers.meili_key), "", database_url=url)
        servers.drop_database(url)


@pytest.fixture
def dev(dagster_dev_session: DevServer) -> DevServer:
    """The session's `dagster dev`, idle and with the migration as it booted: legacy stage, writes
    meili_only, no watermark, no backfill, no documents in PostgreSQL (the Dagster instance keeps its
    runs, backfills and topic partitions: tests find theirs by id)."""
    dagster_dev_session.wait_until_idle()
    dagster_dev_session.booted.restore(dagster_dev_session.database_url)
    return dagster_dev_session
