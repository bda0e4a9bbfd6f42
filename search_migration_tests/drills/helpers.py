"""What the drills share beyond support/: the path to a caught-up dual state, real Dagster runs of one
partition or one catch-up in killable process groups, and the invariant asserted with its figures printed
for the report. (The product's writes, write modes and process helpers are in support/.)"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import dagster as dg
import psycopg

from search_migration import backfill
from search_migration import db
from search_migration.backfill import Window
from search_migration.backfill.partition_keys import topic_partition_key
from search_migration.local import demo_seed
from search_migration.local.demo_corpus import EPOCH
from search_migration.source import contract
from search_migration.write_path import consumer

from ..support import invariants
from ..support.backfill import capture, WEEK
from ..support.processes import DAGSTER
from ..support.servers import REPO
from ..support.writes import FAST, set_mode


# --------------------------------------------------------------------------- getting to a caught-up dual state


def backfill_everything(url: str, options: backfill.PartitionOptions | None = None) -> None:
    """Every (topic, week) the manifest holds, in-process: the partitions a drill does not fault."""
    with db.connect(url) as conn:
        weeks = conn.execute("SELECT DISTINCT topic_id, created_at - (created_at - %s) %% %s "
                             "FROM cn_search.backfill_manifest ORDER BY 1, 2", (EPOCH, WEEK)).fetchall()
    for topic, start in weeks:
        backfill.run_partition(url, partition_key(topic, start), topic, Window(start, start + WEEK),
                               owner="drill", options=options)


def catch_up_all(url: str, meili, index_uid: str) -> int:
    """Catch up to the outbox head in-process; returns the head every engine has applied."""
    with db.connect(url) as conn:
        result = consumer.catch_up(conn, meili, index_uid, retry=FAST)
        assert not result.stalled and result.waiting_on_gap is None, result
        assert result.end_offset == contract.outbox_head(conn)
        return result.end_offset


def assert_invariant(url: str, drill: str, meili=None, index_uid: str | None = None) -> invariants.Invariant:
    """The exhaustive invariant at the outbox head; its figures are printed for the drill report."""
    with db.connect(url) as conn:
        head = contract.outbox_head(conn)
        assert contract.consumer_offset(conn, contract.CONSUMER) == head, "check only after catching up"
        inv = invariants.check(conn, head, meili, index_uid)
    print(f"\nDRILL {drill}: " + json.dumps({k: v for k, v in inv.as_dict().items() if k != "examples"}))
    assert inv.checked > 0 and inv.live > 0
    assert inv.ok, f"invariant violated after {drill}: {inv.as_dict()}"
    assert inv.quarantined == 0
    return inv


# --------------------------------------------------------------------------- real Dagster runs


def partition_key(topic: str, week_start: int) -> str:
    """The Dagster multi-partition key `YYYY-MM-DD|topic` of a (topic, week)."""
    return f"{time.strftime('%Y-%m-%d', time.gmtime(week_start))}|{topic_partition_key(topic)}"


def busiest_week(conn: psycopg.Connection) -> tuple[str, int, int]:
    """(topic, week start, rows) of the manifest's fullest partition: the longest one to fault."""
    return conn.execute(
        "SELECT topic_id, created_at - (created_at - %s) %% %s AS wk, count(*) FROM cn_search.backfill_manifest "
        "GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT 1", (EPOCH, WEEK)).fetchone()


def dagster_home(tmp_path: Path, topics: list[str]) -> Path:
    """A Dagster instance of the test's own (default local storage) that knows the topics' partitions."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("topics", [topic_partition_key(t) for t in topics])
    return home


def dual_partition(servers, url: str, meili, index_uid: str, tmp_path: Path):
    """A 2,000-post corpus in dual with its watermark, and its busiest topic-week partition to drill on;
    returns (Dagster env, topic, window, partition key, rows in it)."""
    with db.connect(url) as conn:
        demo_seed.seed(conn, meili, index_uid, posts=2000, topics=2, seed=42)
        set_mode(conn, "dual", by="drill", reason="fault drill")
        capture(conn, by="drill")
        topic, start, rows = busiest_week(conn)
        topics = contract.topic_ids(conn)
    env = servers.env(DATABASE_URL=url, DAGSTER_PG_URL=url, MEILI_INDEX=index_uid,
                      DAGSTER_HOME=str(dagster_home(tmp_path, topics)))
    return env, topic, Window(start, start + WEEK), partition_key(topic, start), rows


def materialize(env: dict, partition: str, config: dict, log: Path) -> subprocess.Popen:
    """One real Dagster run of one backfill partition, in its own process group (killable whole)."""
    return subprocess.Popen(
        [*DAGSTER, "asset", "materialize", "-m", "search_migration.definitions", "--select", "post_search_documents",
         "--partition", partition, "--config-json", json.dumps({"ops": {"post_search_documents": {"config": config}}})],
        env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def checkpointed(conn: psycopg.Connection, run: subprocess.Popen, log: Path, key: str, at_least: int):
    """A `poll` predicate: the still-running `run` has checkpointed at least `at_least` rows of `key`."""
    def reached() -> bool:
        assert run.poll() is None, log.read_text()[-3000:]
        row = conn.execute("SELECT rows_done FROM cn_search.backfill_checkpoints WHERE partition_key = %s",
                           (key,)).fetchone()
        return bool(row and row[0] >= at_least)
    return reached


def catchup_run(env: dict, config: dict, log: Path) -> subprocess.Popen:
    """One real catchup_job run in its own process group (run config as a file: JSON is YAML)."""
    run_config = log.with_suffix(".config.yaml")
    run_config.write_text(json.dumps({"ops": {"catch_up": {"config": config}}}))
    return subprocess.Popen(
        [*DAGSTER, "job", "execute", "-m", "search_migration.definitions", "-j", "catchup_job",
         "--config", str(run_config)],
        env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def no_advisory_locks(url: str) -> bool:
    """A killed holder's session is gone (its consumer lock released) once no advisory lock remains."""
    with db.connect(url) as conn:
        return conn.execute("SELECT count(*) = 0 FROM pg_locks WHERE locktype = 'advisory' "
                            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                            ).fetchone()[0]
