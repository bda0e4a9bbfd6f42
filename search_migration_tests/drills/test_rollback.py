"""Drill 8: rollback from `complete` after every kind of product write made while writes were pg_only.

New notes, new versions of replaceable/addressable events (one leaving a topic) and NIP-09 deletions land
only in PostgreSQL in `complete`; a real rollback_job run must replay them into the product's per-topic
Meilisearch indexes before reads go back to them. Protection: each engine keeps its own offset, so the
Meilisearch side resumes where dual writes stopped (the reverse catch-up), not at the overall offset
pg_only moved on.
"""

from __future__ import annotations

import threading

from search_migration import db
from search_migration.cutover import flags
from search_migration.source import contract
from search_migration.cutover import stages
from search_migration.write_path import tail

from ..support import invariants
from .helpers import assert_invariant, at_complete, backfill_everything, capture, catch_up_all
from .tail_helpers import offset, publish, tail_thread
from ..support.processes import poll
from ..support.cutover import failure_message, run_job
from ..support.writes import product_writes, set_mode


def test_rollback_from_complete_replays_pg_only_writes_into_meilisearch(dagster_env, seeded, meili):
    url = seeded  # the product's corpus in index-v1's per-topic indexes, handed over
    with db.connect(url) as conn:
        set_mode(conn, "dual")
        capture(conn)
    backfill_everything(url)
    catch_up_all(url, meili)
    with db.connect(url) as conn:
        product_writes(conn, "while-dual", inserts=10, edits=10, deletes=10, removals=5)
    catch_up_all(url, meili)
    assert_invariant(url, "8 before complete", meili)
    with db.connect(url) as conn:  # the gated path to complete is test_cutover's; here only its flags matter
        flags.set_flags(conn, stages.BASE_FLAGS["complete"], by="drill", reason="drill: at complete")
        written = product_writes(conn, "while-pg-only", inserts=30, edits=30, deletes=30, removals=20, seed=8)
        assert all(len(ids) for ids in written.values()), {k: len(v) for k, v in written.items()}
    catch_up_all(url, meili)
    assert_invariant(url, "8 in complete (PostgreSQL only)")
    with db.connect(url) as conn:
        stale = invariants.check(conn, contract.outbox_head(conn), meili)
    # Meilisearch really missed the pg_only writes of every kind: the drill has something to replay. New notes
    # and new versions are missing; the versions they superseded and the deleted posts are extra there;
    # content never differs for one event id (an event's content is immutable in the product).
    assert stale.meili_missing >= 30 and stale.meili_extra >= 30, stale.as_dict()
    assert stale.meili_wrong_content == 0, stale.as_dict()

    back = run_job(dagster_env, "rollback_job", target_stage="live")
    assert back.success, failure_message(back)
    with db.connect(url) as conn:
        assert stages.current(flags.read_all(conn)) == "live"
    assert_invariant(url, "8 after rollback complete->live", meili)


def test_rollback_with_the_tail_alive(dagster_env, seeded, meili, namespace):
    """The tail takes the consumer lock per pass: a rollback's reverse catch-up, queued on that lock, gets
    its turn between two passes while the product keeps writing (and the tail keeps applying), so
    complete -> live and live -> shadow succeed with a tail run alive, never two writers at once."""
    url = seeded
    at_complete(url, meili)
    topic = f"kukuri:{namespace}-rollback-tail"
    options = tail.Options(max_seconds=600, poll_seconds=0.5, batch_size=20)
    stop = threading.Event()

    def write():  # the product's pace, not a synchronisation: the tail has rows to apply all along
        with db.connect(url) as conn:
            i = 0
            while not stop.is_set():
                publish(conn, "rollback-tail", 5, topic, start=i)
                i += 5
                stop.wait(0.05)

    with tail_thread(url, meili, options, "rollback") as t:
        with db.connect(url) as conn:
            product_writes(conn, "tail-pg-only", inserts=20, edits=20, deletes=20, removals=10, seed=9)
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        try:
            poll(lambda: t.result.rows_applied > 0, 60, "the tail to apply pg_only writes")
            back = run_job(dagster_env, "rollback_job", target_stage="live")
            assert back.success, failure_message(back)
            back = run_job(dagster_env, "rollback_job", target_stage="shadow")
            assert back.success, failure_message(back)
        finally:
            stop.set()
            writer.join(timeout=30)
        with db.connect(url) as conn:
            head = contract.outbox_head(conn)
            assert stages.current(flags.read_all(conn)) == "shadow"
        poll(lambda: offset(url) >= head, 60, "the tail to apply the last writes")
    assert_invariant(url, "rollback complete -> live -> shadow with the tail alive", meili)
