"""README command 1 (`search-migration dev`) as a process group, and the Dagster UI's GraphQL: launching
runs and backfills the way the UI does, waiting on them, and putting the migration back where it booted."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from search_migration import db
from search_migration.cutover import flags

from .processes import CLI, stop_group
from .servers import REPO, free_port

REPO_SELECTOR = {"repositoryLocationName": "search_migration", "repositoryName": "__repository__"}
RUN_DONE = {"SUCCESS", "FAILURE", "CANCELED"}
# The corpus the session's `dagster dev` serves: the demo's default size (820 topic × week partitions).
DEV_POSTS, DEV_TOPICS = 10_000, 20
BACKFILL_DONE = ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED")

BACKFILL_STATUS = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill {
  status
  assetBackfillData { assetBackfillStatuses { ... on AssetPartitionsStatusCounts {
    numPartitionsTargeted numPartitionsInProgress numPartitionsMaterialized numPartitionsFailed } } }
} } }"""

# What is still moving on the instance: runs not finished, backfills not settled. The tail run (tail_job)
# is alive by design, always: it is the write path, not a test's leftover, so "idle" leaves it out.
ALWAYS_RUNNING = {"tail_job"}
IN_FLIGHT = """{
  runs: runsOrError(filter: {statuses: [QUEUED, NOT_STARTED, STARTING, STARTED, CANCELING]}) {
    ... on Runs { results { runId pipelineName } } }
  requested: partitionBackfillsOrError(status: REQUESTED) { ... on PartitionBackfills { results { id } } }
  canceling: partitionBackfillsOrError(status: CANCELING) { ... on PartitionBackfills { results { id } } }
  failing: partitionBackfillsOrError(status: FAILING) { ... on PartitionBackfills { results { id } } }
}"""


@dataclass
class MigrationState:
    """What a test may change in the migration's data: the flags, and the tables empty at boot."""
    flags: dict[str, str]
    empty_tables: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, url: str) -> MigrationState:
        with db.connect(url) as conn:
            tables = [t for (t,) in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'cn_search' "
                "AND table_type = 'BASE TABLE' ORDER BY 1")]
            empty = [t for t in tables if not conn.execute(f'SELECT EXISTS (SELECT FROM cn_search."{t}")').fetchone()[0]]
            return cls(flags.read_all(conn), empty)

    def restore(self, url: str) -> None:
        """The flags as they were (which may pin side offsets), then the tables empty at boot emptied again."""
        with db.connect(url) as conn:
            flags.set_flags(conn, self.flags, by="test", reason="UI tests: back to the state dagster dev booted in")
            if self.empty_tables:
                conn.execute("TRUNCATE " + ", ".join(f'cn_search."{t}"' for t in self.empty_tables))


@dataclass
class DevServer:
    """A running `search-migration dev`: its UI port and process group, the database it serves."""
    port: int
    proc: subprocess.Popen = field(repr=False)
    database_url: str = field(repr=False)
    log: Path
    booted: MigrationState | None = None

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        return graphql(self.port, query, variables)

    def wait_for(self, predicate, timeout: float, what: str):
        return wait_for(predicate, timeout, what, self.proc)

    def wait_until_idle(self, timeout: float = 600) -> None:
        """No run queued or running (but the tail run) and no backfill in progress (a failed test's leftovers
        finish first)."""
        def idle() -> bool:
            d = self.graphql(IN_FLIGHT)
            runs = [r for r in d["runs"]["results"] if r["pipelineName"] not in ALWAYS_RUNNING]
            return not runs and not any(d[k]["results"] for k in ("requested", "canceling", "failing"))
        self.wait_for(idle, timeout, "the instance to have no run or backfill in flight")


@contextmanager
def dagster_dev(env: dict[str, str], tmp_path: Path, posts: int, topics: int):
    """README command 1 (`search-migration dev`) as a process group; yields (port, process), stops it all."""
    port = free_port()
    env = {**env, "SEARCH_MIGRATION_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster_home"),
           "PATH": "/usr/bin:/bin"}  # as from scripts/dev: the venv is not on PATH
    if env.get("DATABASE_URL"):  # Dagster's storage is named, never implied: the test's own database
        env.setdefault("DAGSTER_PG_URL", env["DATABASE_URL"])
    log = (tmp_path / "dev.log").open("w")
    proc = subprocess.Popen([*CLI, "dev", "--posts", str(posts), "--topics", str(topics), "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    try:
        yield port, proc
    finally:
        stop_group(proc)
        log.close()


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        payload = json.loads(resp.read())
    assert "errors" not in payload, payload["errors"]
    return payload["data"]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen):
    """Poll an observable condition (the UI answering, a run finishing) with a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"dagster dev exited while waiting for {what}"
        try:
            value = predicate()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def asset_nodes(port: int) -> list[dict]:
    return graphql(port, "{ assetNodes { assetKey { path } } }")["assetNodes"]


def launch_run(port: int, job: str, **selector) -> str:
    """Launch a job (or `__ASSET_JOB` with an assetSelection) as the UI does; its run id."""
    launched = graphql(port, """
        mutation($selector: JobOrPipelineSelector!) {
          launchRun(executionParams: {selector: $selector, mode: "default"}) {
            __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
          }
        }""", {"selector": {**REPO_SELECTOR, "jobName": job, **selector}})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def launch_asset_run(port: int, asset: str) -> str:
    return launch_run(port, "__ASSET_JOB", assetSelection=[{"path": [asset]}])


def run_status(port: int, run_id: str) -> str | None:
    """The run's status once it is done, else None."""
    s = graphql(port, "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }",
                {"id": run_id})["runOrError"]["status"]
    return s if s in RUN_DONE else None


def backfill_status(port: int, backfill_id: str) -> dict | None:
    """The backfill's status and counts once it is done, else None."""
    b = graphql(port, BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
    return b if b["status"] in BACKFILL_DONE else None
