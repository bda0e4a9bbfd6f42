"""Drill 1: SIGKILL of a real Dagster run — a backfill mid-partition, a catch-up mid-batch — then a rerun.

Protections proved: the backfill's page transaction (documents + checkpoint together) and the versioned
writer (a resumed backfill never overwrites what catch-up wrote after the watermark); the consumer
commits an offset only after every engine applied the rows below it, so a kill replays, never skips.
"""

from __future__ import annotations

from search_migration import db
from search_migration.write_path import meili_index
from search_migration.source import contract

from ..support.backfill import actual, expected
from ..support.processes import kill_group, poll
from ..support.writes import new_posts
from .helpers import (assert_invariant, backfill_everything, catch_up_all, catchup_run, checkpointed, dagster_home,
                      dual_partition, materialize, no_advisory_locks, seed_dual)
from ..support.writes import product_writes


def test_backfill_run_sigkilled_mid_partition_then_rerun(servers, database_url, meili, namespace, tmp_path):
    url = database_url
    env, topic, window, key, rows = dual_partition(servers, url, meili, namespace, tmp_path)
    config = {"page_size": 4, "max_rows_per_second": 8, "lease_timeout_seconds": 3}

    run = materialize(env, key, config, tmp_path / "killed.log")
    with db.connect(url) as conn:
        poll(checkpointed(conn, run, tmp_path / "killed.log", key, 4), 300, "the first checkpoint")
        kill_group(run)
        done_at_kill = conn.execute("SELECT rows_done FROM cn_search.backfill_checkpoints WHERE partition_key = %s",
                                    (key,)).fetchone()[0]
        assert 0 < done_at_kill < rows, "the kill must land mid-partition"
        assert conn.execute("SELECT status FROM cn_search.backfill_jobs WHERE partition_key = %s",
                            (key,)).fetchone()[0] == "running"  # nobody marked it: the process just died
        # while the run is dead the product supersedes (new versions of replaceable/addressable events, one
        # leaving a topic) and deletes (NIP-09) posts of that very window, and catch-up applies it: rows behind
        # and ahead of the checkpoint now carry versions above the watermark
        changed = product_writes(conn, "sigkill-backfill", edits=6, deletes=6, removals=4, topic=topic,
                                 window=window)
        assert len(changed["delete"]) == 6 and changed["edit"], changed
    catch_up_all(url, meili)
    with db.connect(url) as conn:
        poll(lambda: conn.execute("SELECT heartbeat_at < now() - interval '3 seconds' FROM cn_search.backfill_jobs "
                                  "WHERE partition_key = %s", (key,)).fetchone()[0], 60, "the dead lease to expire")

    config["max_rows_per_second"] = 0
    rerun = materialize(env, key, config, tmp_path / "rerun.log")
    assert rerun.wait(timeout=300) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    with db.connect(url) as conn:
        status, attempts, resumed, copied, skipped = conn.execute(
            "SELECT j.status, j.attempts, (SELECT sum(rows_done) FROM cn_search.backfill_page_log p "
            "WHERE p.partition_key = j.partition_key AND p.lease_token = j.lease_token), rows_copied, rows_skipped "
            "FROM cn_search.backfill_jobs j WHERE partition_key = %s", (key,)).fetchone()
        assert (status, attempts) == ("succeeded", 2)
        assert resumed == rows - done_at_kill  # the rerun walked only what the killed run had not committed
        tokens = conn.execute("SELECT lease_token, sum(rows_done) FROM cn_search.backfill_page_log "
                              "WHERE partition_key = %s GROUP BY 1 ORDER BY min(page_id)", (key,)).fetchall()
        assert [n for _, n in tokens] == [done_at_kill, rows - done_at_kill]  # two holders, no page walked twice
        assert copied + skipped == rows
        # the window equals an uninterrupted copy followed by catch-up: every live (post, topic) at its newest
        # version, no duplicate (post, topic)
        created = dict(conn.execute("SELECT event_id, created_at FROM cn_relay.events"))

        def in_window(r: tuple) -> bool:
            return r[0] == topic and window.start <= created[r[1]] < window.end
        want = {r for r in expected(conn, contract.outbox_head(conn)) if in_window(r)}
        assert want and {r for r in actual(conn) if in_window(r)} == want
        assert conn.execute("SELECT count(*) = count(DISTINCT (post_id, topic_id)) "
                            "FROM cn_search.post_search_documents").fetchone()[0]
    backfill_everything(url)
    catch_up_all(url, meili)
    assert_invariant(url, "1a backfill SIGKILL", meili)


def test_catchup_run_sigkilled_mid_batch_then_rerun(servers, database_url, meili, namespace, tmp_path):
    url = database_url
    seed_dual(url, meili, namespace, posts=600, topics=4, seed=5)
    backfill_everything(url)
    with db.connect(url) as conn:
        start = contract.consumer_offset(conn, contract.CONSUMER)
        new_posts(conn, 2_000, "sigkill-catchup")
        product_writes(conn, "sigkill-catchup", inserts=20, edits=40, deletes=40, removals=20)
        head = contract.outbox_head(conn)
    env = servers.env(DATABASE_URL=url, DAGSTER_PG_URL=url, DAGSTER_HOME=str(dagster_home(tmp_path, [])))

    run = catchup_run(env, {"batch_size": 25}, tmp_path / "killed.log")
    with db.connect(url) as conn:
        def mid_batch():
            assert run.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            offset = contract.consumer_offset(conn, contract.CONSUMER)
            written = conn.execute("SELECT coalesce(max(source_seq), 0) FROM cn_search.post_search_documents"
                                   ).fetchone()[0]
            return offset > start + 200 and written > offset  # rows written whose offset is not committed
        poll(mid_batch, 300, "catch-up progress with a batch in flight")
        kill_group(run)
        offset_at_kill = contract.consumer_offset(conn, contract.CONSUMER)
        ahead_at_kill = conn.execute("SELECT count(*) FROM cn_search.post_search_documents WHERE source_seq > %s",
                                     (offset_at_kill,)).fetchone()[0]
        assert start < offset_at_kill < head, "the kill must land mid-range"
    poll(lambda: no_advisory_locks(url), 60, "the killed run's consumer lock to go with its session")

    rerun = catchup_run(env, {}, tmp_path / "rerun.log")
    assert rerun.wait(timeout=300) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    assert_invariant(url, "1b catch-up SIGKILL", meili)
    assert ahead_at_kill > 0, "the kill must land between a batch's writes and its offset commit"
    with db.connect(url) as conn:  # each topic's index holds exactly its searchable count
        live = contract.live_rows_per_topic(conn)
        assert {t: meili_index.count(meili, meili_index.index_uid(t)) for t in live} == live
