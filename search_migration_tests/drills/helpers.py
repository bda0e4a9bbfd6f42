"""What every drill needs: the product's writes of every kind, real runs in killable process groups,
the path to a caught-up dual state, and the invariant asserted with its figures printed for the report."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import psycopg

from search_migration import backfill
from search_migration import db
from search_migration.local import demo_seed
from search_migration.cutover import flags
from search_migration_tests.support import invariants
from search_migration.write_path import consumer
from search_migration.source import contract
from search_migration.backfill import Window
from search_migration.local.demo_corpus import EPOCH
from search_migration.write_path.consumer import Retry
from search_migration.backfill.partition_keys import topic_partition_key

from ..conftest import REPO

DAGSTER = str(REPO / ".venv" / "bin" / "dagster")
FAST = Retry(attempts=2, initial_s=0.01, max_s=0.05)
WEEK = 7 * 24 * 3600



def set_mode(conn: psycopg.Connection, mode: str) -> None:
    flags.set_flags(conn, {"search_write_mode": mode}, by="drill", reason="fault drill")


# --------------------------------------------------------------------------- the product's writes


def product_writes(conn: psycopg.Connection, tag: str, *, inserts: int = 0, edits: int = 0, deletes: int = 0,
                   removals: int = 0, topic: str | None = None, window: Window | None = None,
                   seed: int = 0) -> dict[str, list[str]]:
    """Inserts, edits, deletes and topic removals the way the product writes them (event + outbox in one
    transaction each); edits/deletes/removals pick live posts (of `topic`, created in `window`, when given).
    Returns the event ids per kind."""
    rng = random.Random(f"{tag}:{seed}")
    topics = [topic] if topic else contract.topic_ids(conn)
    done: dict[str, list[str]] = {"insert": [], "edit": [], "delete": [], "removal": []}
    for i in range(inserts):
        event_id = hashlib.sha256(f"drill:{tag}:{i}".encode()).hexdigest()
        chosen = rng.sample(topics, min(len(topics), rng.choice((1, 1, 2))))
        created = conn.execute("SELECT created_at FROM cn_relay.events ORDER BY random() LIMIT 1").fetchone()[0]
        with conn.transaction():
            conn.execute("INSERT INTO cn_relay.events (event_id, pubkey, kind, content, created_at) "
                         "VALUES (%s, %s, 1, %s, %s)", (event_id, "d" * 64, f"ドリル {tag} {i} 新しい投稿", created))
            for t in chosen:
                conn.execute("INSERT INTO cn_relay.event_topics VALUES (%s, %s)", (event_id, t))
                conn.execute("INSERT INTO cn_relay.events_outbox (op, event_id, topic_id, reason) "
                             "VALUES ('upsert', %s, %s, 'created')", (event_id, t))
        done["insert"].append(event_id)
    live = [r[0] for r in conn.execute(
        "SELECT DISTINCT e.event_id FROM cn_relay.events e JOIN cn_relay.event_topics et USING (event_id) "
        "WHERE NOT e.is_deleted AND et.topic_id = ANY(%s) AND e.created_at >= %s AND e.created_at < %s ORDER BY 1",
        (topics, window.start if window else 0, window.end if window else 2**62))]
    rng.shuffle(live)
    for event_id in live[:edits]:
        with conn.transaction():
            conn.execute("UPDATE cn_relay.events SET content = content || %s WHERE event_id = %s",
                         (f" 編集 {tag}", event_id))
            conn.execute("INSERT INTO cn_relay.events_outbox (op, event_id, topic_id, reason) "
                         "SELECT 'upsert', event_id, topic_id, 'edited' FROM cn_relay.event_topics "
                         "WHERE event_id = %s", (event_id,))
        done["edit"].append(event_id)
    for event_id in live[edits:edits + deletes]:
        with conn.transaction():
            conn.execute("UPDATE cn_relay.events SET is_deleted = true WHERE event_id = %s", (event_id,))
            conn.execute("INSERT INTO cn_relay.events_outbox (op, event_id, topic_id, reason) "
                         "SELECT 'delete', event_id, topic_id, 'deleted' FROM cn_relay.event_topics "
                         "WHERE event_id = %s", (event_id,))
        done["delete"].append(event_id)
    for event_id in live[edits + deletes:edits + deletes + removals]:
        with conn.transaction():
            t = conn.execute("DELETE FROM cn_relay.event_topics WHERE ctid = (SELECT ctid FROM cn_relay.event_topics "
                             "WHERE event_id = %s AND topic_id = ANY(%s) LIMIT 1) RETURNING topic_id",
                             (event_id, topics)).fetchone()[0]
            conn.execute("INSERT INTO cn_relay.events_outbox (op, event_id, topic_id, reason) "
                         "VALUES ('delete', %s, %s, 'topic_removed')", (event_id, t))
        done["removal"].append(event_id)
    return done


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
        set_mode(conn, "dual")
        backfill.capture_watermark(conn, by="drill")
        topic, start, rows = busiest_week(conn)
        topics = contract.topic_ids(conn)
    env = servers.env(DATABASE_URL=url, DAGSTER_PG_URL=url, MEILI_INDEX=index_uid,
                      DAGSTER_HOME=str(dagster_home(tmp_path, topics)))
    return env, topic, Window(start, start + WEEK), partition_key(topic, start), rows


def materialize(env: dict, partition: str, config: dict, log: Path) -> subprocess.Popen:
    """One real Dagster run of one backfill partition, in its own process group (killable whole)."""
    return subprocess.Popen(
        [DAGSTER, "asset", "materialize", "-m", "search_migration.definitions", "--select", "post_search_documents",
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
        [DAGSTER, "job", "execute", "-m", "search_migration.definitions", "-j", "catchup_job",
         "--config", str(run_config)],
        env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def no_advisory_locks(url: str) -> bool:
    """A killed holder's session is gone (its consumer lock released) once no advisory lock remains."""
    with db.connect(url) as conn:
        return conn.execute("SELECT count(*) = 0 FROM pg_locks WHERE locktype = 'advisory' "
                            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                            ).fetchone()[0]


def child(script: str, log: Path) -> subprocess.Popen:
    """A plain Python child process (the engine without Dagster) in its own process group."""
    return subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
