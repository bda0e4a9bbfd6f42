"""Drill (issue 16, rule 2): a reverse catch-up passes a gap that was resolved long ago, without waiting.

At `complete` only PostgreSQL is written. A product transaction that took an outbox seq rolls back; the
pg_only catch-up skips that seq and records it in cn_search.outbox_gaps (skipped_at). Later a rollback
from `complete` replays the whole range to Meilisearch (rollback_job, a real run). Meanwhile an
unrelated transaction holds an xid open, so a snapshot taken now would say "a transaction that may
still write that seq is in progress". The protection: a gap already recorded as skipped is passed at
once; it is never re-decided from the current snapshot. Without it (the skipped record ignored, the gap
judged anew) the reverse catch-up waits on that seq and the rollback refuses, reads left on PostgreSQL.
"""

from __future__ import annotations

import time

from search_migration import db
from search_migration.cutover import flags, stages
from search_migration.local.product_writer import ProductWriter
from search_migration.source import contract
from search_migration.write_path import consumer

from ..support import invariants
from .helpers import at_complete
from ..support.cutover import failure_message, run_job
from ..support.processes import poll
from ..support.writes import FAST, NOW, meili_ids, new_posts, note, topic


def test_a_rollback_from_complete_passes_an_old_skipped_gap_while_another_transaction_is_open(
        dagster_env, seeded, meili):
    at_complete(seeded, meili)
    with db.connect(seeded) as conn:
        where = topic(conn)
        before = new_posts(conn, 10, "before-gap", where)

        rolled = db.connect(seeded)  # a product transaction that takes an outbox seq, then rolls back
        rolled.execute("BEGIN")
        event = note("rolled-back", 0, [where])
        (gap_seq,) = ProductWriter(rolled).publish(event, now=NOW)
        after = new_posts(conn, 10, "after-gap", where)
        rolled.execute("ROLLBACK")
        rolled.close()

        # pg_only: PostgreSQL passes the gap once every transaction that was in progress when it was first
        # seen has ended (the server's other writers included), and records it
        done = poll(lambda: (r := consumer.catch_up(conn, meili, retry=FAST)).waiting_on_gap is None and r, 60,
                    "the rolled-back seq to be skipped")
        assert done.end_offset == contract.outbox_head(conn), done
        skipped = conn.execute("SELECT skipped_at FROM cn_search.outbox_gaps WHERE consumer = %s AND seq = %s",
                               (contract.CONSUMER, gap_seq)).fetchone()
        assert skipped and skipped[0] is not None
        meili_at = consumer.side_offsets(conn, contract.CONSUMER, ["meili"])["meili"]
        assert meili_at < before[0][1] < gap_seq < after[0][1]  # the replay will cross the old gap

    unrelated = db.connect(seeded)  # an unrelated transaction holding an xid, open through the rollback
    unrelated.execute("BEGIN")
    xid = unrelated.execute("SELECT pg_current_xact_id()").fetchone()[0]
    try:
        started = time.monotonic()
        back = run_job(dagster_env, "rollback_job", target_stage="shadow", shadow_rate=50)
        took = time.monotonic() - started
        with db.connect(seeded) as conn:  # still open: the rollback never needed it to end
            assert conn.execute("SELECT pg_xact_status(%s)", (xid,)).fetchone()[0] == "in progress"
    finally:
        unrelated.execute("ROLLBACK")
        unrelated.close()
    print(f"\nDRILL rule 2: rollback from complete across skipped gap seq {gap_seq} took {took:.1f} s, "
          f"success={back.success}")
    assert back.success, failure_message(back)

    with db.connect(seeded) as conn:
        head = contract.outbox_head(conn)
        assert consumer.side_offsets(conn, contract.CONSUMER, ["meili"])["meili"] >= head
        assert stages.current(flags.read_all(conn)) == "shadow"
        assert {e for e, _ in before + after} <= meili_ids(meili, where)
        assert event["id"] not in meili_ids(meili, where)
        assert conn.execute("SELECT skipped_at FROM cn_search.outbox_gaps WHERE consumer = %s AND seq = %s",
                            (contract.CONSUMER, gap_seq)).fetchone() == skipped  # decided once, for good
        inv = invariants.check(conn, head, meili)
        print("DRILL rule 2 invariant: " + str({k: v for k, v in inv.as_dict().items() if k != "examples"}))
        assert inv.ok, inv.as_dict()
