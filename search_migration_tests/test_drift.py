"""Drift between the two indexes: zero when they agree, and each kind of disagreement found."""

from __future__ import annotations

import meilisearch

from search_migration import db
from search_migration.gates import drift
from search_migration.local.product_writer import ProductWriter, build_event, pubkey_of
from search_migration.source import contract
from search_migration.write_path import consumer, meili_index

from .support.backfill import backfill_all
from .support.writes import new_posts, set_mode, topic


def _backfill_everything(url: str) -> None:
    with db.connect(url) as conn:
        set_mode(conn, "dual", reason="drift test")
    backfill_all(url, owner="drift-test")


def test_drift_is_zero_when_engines_agree_and_finds_every_kind_of_difference(seeded, meili):
    _backfill_everything(seeded)
    with db.connect(seeded) as conn:
        clean = drift.report(conn, meili, sample_per_topic=1000)
        assert clean.drift == 0 and len(clean.topics) == 4 and all(t.sampled for t in clean.topics)
        # in-flight rows (beyond the consumer offset) are lag, not drift
        new_posts(conn, 5, "pending")
        assert drift.report(conn, meili, sample_per_topic=1000).drift == 0

        a, b, c = [t.topic_id for t in clean.topics[:3]]
        victim_pg = conn.execute("SELECT post_id FROM cn_search.post_search_documents WHERE topic_id = %s "
                                 "AND NOT is_deleted ORDER BY post_id LIMIT 1", (a,)).fetchone()[0]
        conn.execute("DELETE FROM cn_search.post_search_documents WHERE topic_id = %s AND post_id = %s",
                     (a, victim_pg))
        victim_edit, victim_gone = [r[0] for r in conn.execute(
            "SELECT post_id FROM cn_search.post_search_documents WHERE topic_id = %s AND NOT is_deleted "
            "ORDER BY post_id LIMIT 1", (b,))] + [r[0] for r in conn.execute(
            "SELECT post_id FROM cn_search.post_search_documents WHERE topic_id = %s AND NOT is_deleted "
            "ORDER BY post_id LIMIT 1", (c,))]
    # behind the migration's back: one topic index's document edited, another's deleted
    meili_index.wait(meili, meili.index(meili_index.index_uid(b)).update_documents(
        [{"event_id": victim_edit, "content": "edited behind our back"}]).task_uid)
    meili_index.wait(meili, meili.index(meili_index.index_uid(c)).delete_document(victim_gone).task_uid)

    with db.connect(seeded) as conn:
        found = {t.topic_id: t for t in drift.report(conn, meili, sample_per_topic=1000).drifting_topics}
    assert set(found) == {a, b, c}
    assert found[a].missing_in_pg == [victim_pg] and found[a].pg_documents == found[a].meili_documents - 1
    assert found[b].content_mismatch == [victim_edit] and found[b].pg_documents == found[b].meili_documents
    assert found[c].missing_in_meili == [victim_gone]


def test_an_expiry_passing_while_the_report_reads_is_in_flight_not_drift(seeded, meili):
    """The report reads the source and PostgreSQL in one snapshot at its clock, Meilisearch live: a post
    whose expiry passes meanwhile can be swept from Meilisearch alone. Seen from the report's clock, that
    is in flight, not a document Meilisearch lost."""
    _backfill_everything(seeded)
    with db.connect(seeded) as conn:
        t = topic(conn)
        now = contract.now_unix()
        event = build_event(pubkey=pubkey_of("test:expiring"), topics=[t], created_at=now - 60,
                            content="a post that expires soon", tags=[["expiration", str(now + 30)]])
        ProductWriter(conn).publish(event, now=now - 60)
        consumer.catch_up(conn, meili)
        assert drift.report(conn, meili, sample_per_topic=1000, now=now).drift == 0
    # 30 s later the sweep takes it out of Meilisearch; the report that started at `now` is still reading
    meili_index.wait(meili, meili.index(meili_index.index_uid(t)).delete_document(event["id"]).task_uid)
    with db.connect(seeded) as conn:
        assert drift.report(conn, meili, sample_per_topic=1000, now=now).drift == 0
        # far from any expiry, the same deletion behind our back is drift
        assert drift.report(conn, meili, sample_per_topic=1000, now=now - 600).drift >= 1


def test_a_delete_the_tail_applies_while_meilisearch_is_counted_is_in_flight_not_drift(seeded, meili, servers):
    """A row past the snapshot's offset may reach Meilisearch between its document counts and the lookup
    that leaves in-flight documents out of them: a delete landing there would leave the count one too
    high. The report keeps a reading only when Meilisearch finished no task meanwhile."""
    _backfill_everything(seeded)
    with db.connect(seeded) as conn:
        t = topic(conn)
        post = build_event(pubkey=pubkey_of("test:racer"), topics=[t], content="soon deleted")
        ProductWriter(conn).publish(post)
        consumer.catch_up(conn, meili)
        ProductWriter(conn).publish(build_event(pubkey=pubkey_of("test:racer"), kind=5, content="", topics=[t],
                                                tags=[["e", post["id"]]]))
    uid = meili_index.index_uid(t)

    class TailDeletesRightAfterTheCount(meilisearch.Client):
        """The real client of the real server; right after Meilisearch answers its counts (once), the
        tail's delete of the post lands there, as the tail would apply it."""
        landed: list[int] = []

        def get_all_stats(self):
            counts = super().get_all_stats()
            if not self.landed:
                meili_index.wait(meili, meili.index(uid).delete_document(post["id"]).task_uid)
                self.landed.append(counts["indexes"][uid]["numberOfDocuments"])
            return counts

    racing = TailDeletesRightAfterTheCount(servers.meili_url, servers.meili_key)
    with db.connect(seeded) as conn:
        found = drift.report(conn, racing, sample_per_topic=1000)
    assert racing.landed and found.drift == 0, found.drifting_topics
