"""Drill (issue 16, rule 9): drift sees a row both engines lost.

A post the consumer applied to both engines is then removed from PostgreSQL's documents and from its
topic's Meilisearch index behind the consumer's back (what rule 1's lost row looked like: in neither
engine, the consumer's offset at the head). The engines agree with each other, so only a comparison
with the source's own definition of searchable can see it. A real Dagster run of
`search_drift_report` turns `drift_zero` red, naming the topic and counting the row on each side;
after the repair (the outbox replayed from the lost row's seq) the same report is green and the
invariant holds. Without the protection (drift comparing the two engines with each other only) the
report passes `drift_zero` while both engines miss the row.
"""

from __future__ import annotations

from search_migration import db
from search_migration.source import contract
from search_migration.write_path import consumer, meili_index

from ..support import invariants
from .helpers import dual_and_caught_up, materialize_report
from ..support.cutover import TEST_POLICY, use_policy
from ..support.writes import FAST, meili_ids, new_posts, topic

INTEGRITY = ("drift_zero", "catchup_lag", "backfill_complete")  # the report's checks this drill is about


def _drifting(metadata: dict) -> dict[str, dict]:
    """The report's `drifting` table: topic -> its row (counts per side, findings per kind)."""
    return {r.data["topic"]: dict(r.data) for r in metadata["drifting"].records}


def _replay_from(conn, seq: int) -> None:
    """The repair: every side of our consumer rewound to just before `seq`, so catch-up applies the
    outbox again from there (applying a row twice is idempotent: versions decide)."""
    with conn.transaction():
        conn.execute("UPDATE cn_search.consumer_side_offsets SET last_seq = %s, updated_at = now() "
                     "WHERE consumer = %s", (seq - 1, contract.CONSUMER))
        contract.set_consumer_offset(conn, contract.CONSUMER, seq - 1)


def test_a_row_both_engines_lost_turns_drift_zero_red_until_repaired(dagster_env, seeded, meili, monkeypatch,
                                                                     tmp_path):
    use_policy(monkeypatch, tmp_path, **TEST_POLICY)
    dual_and_caught_up(seeded, meili)
    with db.connect(seeded) as conn:
        where = topic(conn)
        posts = new_posts(conn, 5, "both-lose", where)
        consumer.catch_up(conn, meili, retry=FAST)
        lost, lost_seq = posts[2]
        assert lost in meili_ids(meili, where)
    print("\nDRILL rule 9 (before the loss):")
    _, healthy = materialize_report(dagster_env, "search_drift_report")
    assert all(healthy[n].passed for n in INTEGRITY), {n: healthy[n].metadata["detail"].value for n in INTEGRITY}

    # behind the consumer's back: the row leaves both engines; the source still says it is searchable
    with db.connect(seeded) as conn:
        gone = conn.execute("DELETE FROM cn_search.post_search_documents WHERE post_id = %s AND topic_id = %s",
                            (lost, where)).rowcount
        assert gone == 1
    meili_index.wait(meili, meili.index(meili_index.index_uid(where)).delete_document(lost).task_uid)
    with db.connect(seeded) as conn:
        head = contract.outbox_head(conn)
        assert contract.consumer_offset(conn, contract.CONSUMER) == head  # nothing in flight: no lag to blame
        broken = invariants.check(conn, head, meili)
    assert (broken.lost, broken.meili_missing) == (1, 1), broken.as_dict()
    assert lost not in meili_ids(meili, where)

    print("DRILL rule 9 (the row lost from both engines, offset at the head):")
    metadata, checks = materialize_report(dagster_env, "search_drift_report")
    detail = checks["drift_zero"].metadata["detail"].value
    assert not checks["drift_zero"].passed, f"drift_zero passed a row both engines lost: {detail}"
    assert checks["catchup_lag"].passed and checks["backfill_complete"].passed
    assert detail.startswith("4 differences in 1 topic(s)") and f"first: {where}" in detail, detail
    row = _drifting(metadata)[where]  # the topic, and the row counted on each side
    assert row["source"] - 1 == row["pg"] == row["meili"], row
    assert (row["missing_in_pg"], row["missing_in_meili"], row["extra_in_pg"], row["extra_in_meili"],
            row["content_mismatch"]) == (1, 1, 0, 0, 0), row
    assert metadata["drifting_topics"] == 1 and metadata["drift"] == 4, metadata
    assert metadata["source_documents"] - 1 == metadata["pg_documents"] == metadata["meili_documents"], metadata

    with db.connect(seeded) as conn:  # repaired: the outbox replayed from the lost row
        _replay_from(conn, lost_seq)
        result = consumer.catch_up(conn, meili, retry=FAST)
        assert result.end_offset == head and not result.stalled, result
    print("DRILL rule 9 (after the replay):")
    metadata, checks = materialize_report(dagster_env, "search_drift_report")
    assert all(checks[n].passed for n in INTEGRITY), {n: checks[n].metadata["detail"].value for n in INTEGRITY}
    assert metadata["drift"] == 0 and metadata["drifting_topics"] == 0, metadata
    assert lost in meili_ids(meili, where)
    with db.connect(seeded) as conn:
        inv = invariants.check(conn, contract.outbox_head(conn), meili)
    print("DRILL rule 9 invariant: " + str({k: v for k, v in inv.as_dict().items() if k != "examples"}))
    assert inv.ok, inv.as_dict()
