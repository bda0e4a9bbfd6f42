"""The drills' invariant checker sees every kind of damage it claims to see, on real engines."""

from __future__ import annotations

from search_migration import db
from search_migration.source import contract
from search_migration.write_path import consumer, legacy_documents, meili_index

from .support import invariants
from .support.backfill import backfill_all
from .support.writes import set_mode


def converged(url: str, meili) -> tuple[int, invariants.Invariant]:
    """Dual writes, backfilled and caught up: the state every drill ends in."""
    with db.connect(url) as conn:
        set_mode(conn, "dual", reason="invariant test")
    backfill_all(url)
    with db.connect(url) as conn:
        head = consumer.catch_up(conn, meili).end_offset
        return head, invariants.check(conn, head, meili)


def test_a_converged_migration_satisfies_the_invariant(seeded, meili):
    head, inv = converged(seeded, meili)
    with db.connect(seeded) as conn:
        live = sum(contract.live_rows_per_topic(conn).values())
    assert inv.ok, inv.as_dict()
    assert inv.live == live and inv.checked > live  # deleted and removed pairs are checked too
    assert inv.meili_checked and inv.quarantined == 0


def test_each_kind_of_damage_is_counted(seeded, meili):
    head, _ = converged(seeded, meili)
    with db.connect(seeded) as conn:
        live = conn.execute("SELECT post_id, topic_id FROM cn_search.post_search_documents WHERE NOT is_deleted "
                            "ORDER BY post_id LIMIT 3").fetchall()
        dead = conn.execute("SELECT o.event_id, o.topic_id, max(o.seq) FROM cn_relay.events_outbox o "
                            "JOIN cn_relay.events e USING (event_id) WHERE e.is_deleted "
                            "GROUP BY 1, 2 ORDER BY 1 LIMIT 1").fetchone()
        conn.execute("DELETE FROM cn_search.post_search_documents WHERE post_id = %s AND topic_id = %s", live[0])
        conn.execute("UPDATE cn_search.post_search_documents SET source_seq = source_seq - 1 "
                     "WHERE post_id = %s AND topic_id = %s", live[1])
        conn.execute("UPDATE cn_search.post_search_documents SET content = 'edited behind our back' "
                     "WHERE post_id = %s AND topic_id = %s", live[2])
        conn.execute("INSERT INTO cn_search.post_search_documents AS d (post_id, topic_id, created_at, source_seq, "
                     "normalizer_version) VALUES (%s, %s, 1, %s, 1) ON CONFLICT (post_id, topic_id) DO UPDATE "
                     "SET is_deleted = false", dead)
        conn.execute("INSERT INTO cn_search.post_search_documents (post_id, topic_id, created_at, source_seq, "
                     "normalizer_version) VALUES ('stray', 't-stray', 1, 1, 1)")
        # Meilisearch: one live document gone from its topic's index, one deleted event back in its topic's
        lost_index = meili.index(meili_index.index_uid(live[0][1]))
        meili_index.wait(meili, lost_index.delete_document(live[0][0]).task_uid)
        raw = conn.execute("SELECT raw_json FROM cn_relay.events WHERE event_id = %s", (dead[0],)).fetchone()[0]
        back = legacy_documents.document({"raw_json": raw}, dead[1])
        meili_index.wait(meili, meili.index(meili_index.index_uid(dead[1])).add_documents(
            [back], meili_index.PRIMARY_KEY).task_uid)
        inv = invariants.check(conn, head, meili)
    assert (inv.lost, inv.wrong_version, inv.resurrected, inv.unexplained) == (1, 2, 1, 1), inv.as_dict()
    assert (inv.meili_missing, inv.meili_extra, inv.meili_wrong_content) == (1, 1, 0), inv.as_dict()
    assert inv.examples["lost"] == [f"{live[0][0]}/{live[0][1]}"]
    assert not inv.ok


def test_a_dead_lettered_row_is_quarantined_not_lost(seeded, meili):
    head, _ = converged(seeded, meili)
    with db.connect(seeded) as conn:
        post, topic, seq = conn.execute(
            "SELECT d.post_id, d.topic_id, d.source_seq FROM cn_search.post_search_documents d "
            "WHERE NOT d.is_deleted AND d.source_seq > 0 ORDER BY post_id LIMIT 1").fetchone()  # a real outbox row
        conn.execute("DELETE FROM cn_search.post_search_documents WHERE post_id = %s AND topic_id = %s", (post, topic))
        conn.execute("INSERT INTO cn_search.dead_letters (backend, op, seq, event_id, topic_id, reason_class, error) "
                     "VALUES ('pg', 'upsert', %s, %s, %s, 'test', 'test')", (seq, post, topic))
        inv = invariants.check(conn, head)
    assert inv.ok and inv.quarantined == 1 and not inv.meili_checked
