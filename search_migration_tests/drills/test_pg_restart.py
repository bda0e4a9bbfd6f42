"""Drill 2: the real PostgreSQL server stopped and started again under a backfill and under a catch-up.

Both runs fail cleanly (their sessions die with the server) and a rerun converges. Protections proved:
a backfill page commits documents and checkpoint together and the rerun resumes at the checkpoint,
never overwriting what catch-up wrote after the watermark (the versioned writer); the consumer's
offsets commit only after the engines applied the rows, so the rerun replays the batch in flight.
"""

from __future__ import annotations

from search_migration import backfill
from search_migration import db
from search_migration.local import services
from search_migration.source import contract
from search_migration.backfill import Window

from ..support.backfill import WEEK
from ..support.processes import child, poll
from ..support.writes import new_posts
from .helpers import (assert_invariant, backfill_everything, busiest_week, catch_up_all, partition_key,
                      seed_dual)
from ..support.writes import product_writes


def restart(s) -> None:
    services.down(s)  # pg_ctl stop -m fast: every session is terminated
    services.up(s)


def scalar(url: str, sql: str, params=()):
    with db.connect(url) as conn:  # a fresh session each time: the server restarts under us
        return conn.execute(sql, params).fetchone()[0]


def test_postgres_restarted_during_backfill_and_catchup(own_pg, meili, namespace, tmp_path):
    url = own_pg.embedded_pg_url()  # the server's blank database: the demo writes the product's schema there
    seed_dual(url, meili, namespace)
    with db.connect(url) as conn:
        topic, start, rows = busiest_week(conn)
    window, key = Window(start, start + WEEK), partition_key(topic, start)

    # --- a backfill partition in a child process; the server restarts after its first checkpoints
    copier = child(
        "from search_migration import backfill as b\n"
        f"b.run_partition({url!r}, {key!r}, {topic!r}, b.Window({start}, {start + WEEK}), owner='child', "
        "options=b.PartitionOptions(page_size=4, max_rows_per_second=8, lease_timeout_s=3))\n",
        tmp_path / "copier.log")
    cp_sql = "SELECT coalesce(max(rows_done), 0) FROM cn_search.backfill_checkpoints WHERE partition_key = %s"
    poll(lambda: scalar(url, cp_sql, (key,)) >= 4 or copier.poll() is not None, 300, "the first checkpoints")
    assert copier.poll() is None, (tmp_path / "copier.log").read_text()[-3000:]
    restart(own_pg)
    assert copier.wait(timeout=120) != 0  # its session died with the server: the run fails
    done_at_restart = scalar(url, cp_sql, (key,))
    assert 0 < done_at_restart < rows, "the restart must land mid-partition"
    with db.connect(url) as conn:
        product_writes(conn, "pg-restart-backfill", edits=6, deletes=6, removals=4, topic=topic, window=window)
    catch_up_all(url, meili)
    poll(lambda: scalar(url, "SELECT heartbeat_at < now() - interval '3 seconds' FROM cn_search.backfill_jobs "
                             "WHERE partition_key = %s", (key,)), 60, "the dead run's lease to expire")
    rerun = backfill.run_partition(url, key, topic, window, owner="rerun",
                                   options=backfill.PartitionOptions(page_size=4, lease_timeout_s=3))
    assert rerun.resumed_after_rows == done_at_restart and rerun.rows_done == rows
    backfill_everything(url)
    catch_up_all(url, meili)
    assert_invariant(url, "2a PostgreSQL restart during backfill", meili)

    # --- a dual-write catch-up in a child process; the server restarts mid-range
    with db.connect(url) as conn:
        start_offset = contract.consumer_offset(conn, contract.CONSUMER)
        new_posts(conn, 2_000, "pg-restart-catchup")
        product_writes(conn, "pg-restart-catchup", inserts=20, edits=40, deletes=40, removals=20)
        head = contract.outbox_head(conn)
    consumer = child(
        "from search_migration import db; from search_migration.write_path import meili_index, consumer as oc\n"
        f"oc.catch_up(db.connect({url!r}), meili_index.client({meili.config.url!r}, {meili.config.api_key!r}), "
        f"batch_size=25, retry=oc.Retry(attempts=3, initial_s=0.05, max_s=0.2))\n",
        tmp_path / "consumer.log")
    offset_sql = f"SELECT last_seq FROM cn_relay.consumer_offsets WHERE consumer = '{contract.CONSUMER}'"
    poll(lambda: scalar(url, offset_sql) > start_offset + 100 or consumer.poll() is not None, 300, "catch-up progress")
    assert consumer.poll() is None, (tmp_path / "consumer.log").read_text()[-3000:]
    restart(own_pg)
    assert consumer.wait(timeout=120) != 0
    assert start_offset < scalar(url, offset_sql) < head, "the restart must land mid-range"
    catch_up_all(url, meili)
    assert_invariant(url, "2b PostgreSQL restart during catch-up", meili)
