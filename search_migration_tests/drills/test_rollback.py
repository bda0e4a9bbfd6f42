"""Drill 8: rollback from `complete` after every kind of product write made while writes were pg_only.

New notes, new versions of replaceable/addressable events (one leaving a topic) and NIP-09 deletions land
only in PostgreSQL in `complete`; a real rollback_job run must replay them into the product's per-topic
Meilisearch indexes before reads go back to them. Protection: each engine keeps its own offset, so the
Meilisearch side resumes where dual writes stopped (the reverse catch-up), not at the overall offset
pg_only moved on.
"""

from __future__ import annotations

from search_migration import db
from search_migration.cutover import flags
from search_migration.source import contract
from search_migration.cutover import stages

from ..support import invariants
from .helpers import assert_invariant, backfill_everything, capture, catch_up_all
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
