"""Drills 4 and 5: backfill leases between two real Dagster runs of the same partition.

4. A zombie: run A is frozen (SIGSTOP) mid-partition until its lease expires, run B takes over and
   finishes, then A wakes up. Protection: the lease fence (every page, heartbeat, finish and fail locks
   the job row and checks the token), so A writes no document, checkpoint or progress after the takeover.
5. Two runs launched at once: exactly one does the work. Protection: acquire refuses a live lease
   (LeaseBusy), so the second run never starts copying while the first one heartbeats.
"""

from __future__ import annotations

import os
import signal

from search_migration import db

from ..support.processes import poll
from .helpers import (assert_invariant, backfill_everything, catch_up_all, checkpointed, dual_partition, materialize)
from ..support.writes import product_writes


def job(conn, key: str):
    return conn.execute("SELECT status, attempts, rows_copied + rows_skipped, rows_total, lease_token "
                        "FROM cn_search.backfill_jobs WHERE partition_key = %s", (key,)).fetchone()


def page_tokens(conn, key: str) -> list[tuple]:
    """(lease token, first page id, last page id, rows) per lease that wrote pages, in order."""
    return conn.execute("SELECT lease_token, min(page_id), max(page_id), sum(rows_done) FROM cn_search.backfill_page_log "
                        "WHERE partition_key = %s GROUP BY 1 ORDER BY 2", (key,)).fetchall()


def test_a_zombie_run_writes_nothing_after_a_takeover(servers, database_url, meili, namespace, tmp_path):
    url = database_url
    env, topic, window, key, rows = dual_partition(servers, url, meili, namespace, tmp_path)
    zombie = materialize(env, key, {"page_size": 2, "max_rows_per_second": 4, "lease_timeout_seconds": 3},
                         tmp_path / "zombie.log")
    with db.connect(url) as conn:
        def frozen_outside_a_transaction():
            os.killpg(zombie.pid, signal.SIGSTOP)
            if conn.execute("SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = current_database() "
                            "AND state LIKE 'idle in transaction%%'").fetchone()[0]:
                return True
            os.killpg(zombie.pid, signal.SIGCONT)  # frozen holding a row lock: let it commit, freeze again
            return False
        poll(checkpointed(conn, zombie, tmp_path / "zombie.log", key, 4), 300, "the zombie's first checkpoints")
        try:
            poll(frozen_outside_a_transaction, 60, "freezing the zombie between transactions")
            poll(lambda: conn.execute("SELECT heartbeat_at < now() - interval '3 seconds' FROM cn_search.backfill_jobs "
                                      "WHERE partition_key = %s", (key,)).fetchone()[0], 60, "the lease to expire")
            zombie_token = job(conn, key)[4]
            product_writes(conn, "zombie", edits=5, deletes=5, removals=3, topic=topic, window=window)
            catch_up_all(url, meili)
            owner = materialize(env, key, {"page_size": 2, "lease_timeout_seconds": 3}, tmp_path / "owner.log")
            assert owner.wait(timeout=300) == 0, (tmp_path / "owner.log").read_text()[-3000:]
            before = (job(conn, key), page_tokens(conn, key),
                      conn.execute("SELECT * FROM cn_search.backfill_checkpoints").fetchall())
        finally:
            os.killpg(zombie.pid, signal.SIGCONT)  # the zombie wakes up and goes on where it was
        zombie.wait(timeout=300)  # its step fails on the fence; Dagster's retry then finds the partition done
        assert "was lost" in (tmp_path / "zombie.log").read_text()
        after = (job(conn, key), page_tokens(conn, key),
                 conn.execute("SELECT * FROM cn_search.backfill_checkpoints").fetchall())
        assert after == before  # no page, checkpoint, progress or status from the zombie
        status, attempts, done, total, token = after[0]
        assert (status, attempts, done) == ("succeeded", 2, total) and token != zombie_token
        assert [t[0] for t in after[1]] == [zombie_token, token]
    backfill_everything(url)
    catch_up_all(url, meili)
    assert_invariant(url, "4 zombie lease holder", meili)


def test_two_runs_of_one_partition_at_once_only_one_works(servers, database_url, meili, namespace, tmp_path):
    url = database_url
    env, topic, window, key, rows = dual_partition(servers, url, meili, namespace, tmp_path)
    config = {"page_size": 2, "max_rows_per_second": 3, "lease_timeout_seconds": 60}
    runs = [materialize(env, key, config, tmp_path / f"run{i}.log") for i in range(2)]
    codes = [r.wait(timeout=600) for r in runs]
    logs = [(tmp_path / f"run{i}.log").read_text() for i in range(2)]
    refused = [i for i in range(2) if "is being backfilled by" in logs[i]]
    assert len(refused) == 1, "exactly one run must have found the other's live lease"
    assert codes[1 - refused[0]] == 0, logs[1 - refused[0]][-3000:]
    with db.connect(url) as conn:
        status, attempts, done, total, token = job(conn, key)
        assert (status, attempts, done) == ("succeeded", 1, total)  # one lease ever copied this partition
        pages = page_tokens(conn, key)
        assert [p[0] for p in pages] == [token] and pages[0][3] == rows == total
    backfill_everything(url)
    catch_up_all(url, meili)
    assert_invariant(url, "5 two runs at once", meili)
