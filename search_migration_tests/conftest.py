"""Real PostgreSQL and Meilisearch for every test: the embedded services, or DATABASE_URL/MEILI_URL.

One pair of servers serves the session; each test gets its own database and its own index, so tests
never see each other's rows. Servers this session started are stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import dagster as dg
import pytest

from search_migration import db
from search_migration.local import demo_seed
from search_migration.write_path import meili_index
from search_migration.local import services
from search_migration.schema.migrate import migrate
from search_migration.settings import Settings

REPO = Path(__file__).resolve().parent.parent
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
    name = f"sm_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(servers.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_dbname(servers.database_url, name)
    with psycopg.connect(servers.database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def migrated_url(database_url: str) -> str:
    migrate(database_url)
    return database_url


@pytest.fixture
def seeded(migrated_url: str, meili, index_uid: str) -> str:
    """A small legacy-stage corpus: Meilisearch current, consumer at the outbox head."""
    with db.connect(migrated_url) as conn:
        demo_seed.seed(conn, meili, index_uid, posts=600, topics=4, seed=5)
    return migrated_url


@pytest.fixture
def index_uid(servers: Servers) -> str:
    uid = f"test_{uuid.uuid4().hex[:12]}"
    yield uid
    meili_index.delete_index(meili_index.client(servers.meili_url, servers.meili_key), uid)


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


@contextmanager
def dagster_dev(env: dict[str, str], tmp_path: Path, posts: int, topics: int):
    """README command 1 (`search-migration dev`) as a process group; yields (port, process), stops it all."""
    port = free_port()
    env = {**env, "SEARCH_MIGRATION_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster_home"),
           "PATH": "/usr/bin:/bin"}  # as from scripts/dev: the venv is not on PATH
    if env.get("DATABASE_URL"):  # Dagster's storage is named, never implied: the test's own database
        env.setdefault("DAGSTER_PG_URL", env["DATABASE_URL"])
    log = (tmp_path / "dev.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "search_migration.cli", "dev", "--posts", str(posts),
                             "--topics", str(topics), "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    try:
        yield port, proc
    finally:
        stop_group(proc)
        log.close()


def stop_group(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Stop a process started with start_new_session and its children: SIGTERM, SIGKILL after `timeout`."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:  # the whole group is already gone
        proc.wait()
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """The real console entry point in a child process, as an operator would run it."""
    return subprocess.run([sys.executable, "-m", "search_migration.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


@pytest.fixture
def dagster_env(request, monkeypatch, servers: Servers, index_uid: str):
    """A test Dagster instance whose resources read the test's database (`seeded` when the test asks
    for it, else `migrated_url`) and index from the environment, as a deployment's EnvVars do."""
    url = request.getfixturevalue("seeded" if "seeded" in request.fixturenames else "migrated_url")
    for name, value in servers.env(DATABASE_URL=url, MEILI_INDEX=index_uid).items():
        monkeypatch.setenv(name, value)
    with dg.instance_for_test() as instance:
        yield instance


def poll(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll an observable condition with a deadline (never a sleep as synchronization)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
