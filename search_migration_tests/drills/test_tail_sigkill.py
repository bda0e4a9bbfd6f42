"""Tail drill: SIGKILL of a real tail_job run's process while the product writes; the sensor finds it dead
(no heartbeat), marks it failed and requests a new tail run (a new epoch in its run key), which takes the
lock and applies everything from the committed offsets: nothing lost, nothing applied twice out of order.
The new run is then stopped with a termination signal and drains: its offsets committed, its row ended."""

from __future__ import annotations

import os
import signal
import threading
import time

import dagster as dg

from search_migration import db
from search_migration.defs.resources import PostgresResource
from search_migration.defs.write_path import high_watermark_sensor
from search_migration.source import contract

from ..support.processes import kill_group, poll
from .tail_helpers import assert_invariant, dual_corpus, offset, publish, tail_run


def _sensor(home, url, cursor=None):
    with dg.DagsterInstance.from_config(str(home)) as instance:
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor,
                                      resources={"postgres": PostgresResource(database_url=url)})
        result = high_watermark_sensor(ctx)
        runs = {r.run_id: r.status for r in instance.get_runs(dg.RunsFilter(job_name="tail_job"))}
        return result, ctx.cursor, runs


def _tail_row(url, run_id=None):
    with db.connect(url) as conn:
        return conn.execute("SELECT run_id, state, rows_applied, ended_at IS NOT NULL, end_reason "
                            "FROM cn_search.tail_runs WHERE run_id = coalesce(%s, run_id) "
                            "ORDER BY started_at DESC LIMIT 1", (run_id,)).fetchone()


def test_tail_run_sigkilled_is_replaced_by_the_sensor(servers, database_url, meili, namespace, tmp_path):
    url = dual_corpus(database_url, meili, namespace)
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = servers.env(DATABASE_URL=url, DAGSTER_HOME=str(home))
    topic = f"kukuri:{namespace}-sigkill"
    config = {"max_seconds": 300, "poll_seconds": 0.5, "batch_size": 20}

    first = tail_run(env, config, tmp_path / "killed.log")
    poll(lambda: (_tail_row(url) or (0, ""))[1] == "tailing" or first.poll() is not None, 180, "the tail to apply its first pass")
    assert first.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
    killed_id = _tail_row(url)[0]

    writing = threading.Event()
    def writer():
        with db.connect(url) as conn:
            for i in range(0, 600, 10):  # ~100 posts/s for 6 s: the product's pace, not a synchronisation
                publish(conn, "sigkill", 10, topic, start=i)
                time.sleep(0.1)
        writing.set()
    w = threading.Thread(target=writer, daemon=True)
    w.start()
    with db.connect(url) as conn:
        base = contract.consumer_offset(conn, contract.CONSUMER)
    poll(lambda: offset(url) >= base + 60, 120, "the tail to apply some of the writes")
    kill_group(first)  # SIGKILL, mid-stream: nobody tells Dagster or the database
    at_kill = offset(url)
    w.join(timeout=300)
    assert writing.is_set()
    with db.connect(url) as conn:
        head = contract.outbox_head(conn)
    assert at_kill < head, "the kill must land while rows are still coming"

    # the sensor: the run is still STARTED for Dagster; once its heartbeat is stale it is dead
    def replaced():
        result, cursor, runs = _sensor(home, url)
        return (result, cursor, runs) if isinstance(result, list) else None
    requests, cursor, runs = poll(replaced, 120, "the sensor to find the killed tail dead", interval=2)
    (request,) = requests  # one tail run, no catch-up run for this backlog
    assert request.job_name == "tail_job" and request.run_key.startswith("tail:")
    assert runs[killed_id] == dg.DagsterRunStatus.FAILURE  # marked by the sensor, with the reason
    assert offset(url) == at_kill  # nobody wrote meanwhile

    second = tail_run(env, config, tmp_path / "second.log")
    poll(lambda: offset(url) == head or second.poll() is not None, 300, "the new tail to catch up")
    assert second.poll() is None, (tmp_path / "second.log").read_text()[-3000:]
    second_id = _tail_row(url)[0]
    assert second_id != killed_id
    # while it is alive the sensor requests nothing
    result, _, _ = _sensor(home, url, cursor)
    assert isinstance(result, dg.SkipReason) and "is alive" in result.skip_message, result

    os.killpg(second.pid, signal.SIGINT)  # the termination signal a cancel sends the run: drain and commit
    second.wait(timeout=120)
    row = _tail_row(url, second_id)
    assert row[1] == "ended" and row[3] and row[4] == "stopped", row
    inv = assert_invariant(url, "tail SIGKILL + sensor replacement", meili)
    with db.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM cn_search.dead_letters").fetchone()[0] == 0
        # every applied row observed once per engine, none twice
        assert conn.execute("SELECT count(*) = count(DISTINCT (backend, seq)) "
                            "FROM cn_search.index_freshness_observations").fetchone()[0]
    print(f"DRILL tail SIGKILL: killed at offset {at_kill} of {head}; the replacement applied the rest")
