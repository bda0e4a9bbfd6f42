"""Tail drills: a write-mode flip (meili_only -> dual -> pg_only) while the tail applies rows, a Meilisearch
outage and a PostgreSQL restart under the tail: it stalls or reconnects, recovers, loses nothing."""

from __future__ import annotations

from search_migration import db
from search_migration.local import services
from search_migration.source import contract
from search_migration.write_path import meili_index, tail

from ..support.processes import poll
from ..support.writes import meili_ids, set_mode
from .tail_helpers import assert_invariant, dual_corpus, offset, publish, side_offsets, tail_thread

OPTIONS = tail.Options(max_seconds=600, poll_seconds=0.5, batch_size=20,
                       retry=tail.consumer.Retry(attempts=2, initial_s=0.05, max_s=0.2), stall_backoff_max_s=1.0)


def _head(url):
    with db.connect(url) as conn:
        return contract.outbox_head(conn)


def test_flag_flip_while_the_tail_applies(database_url, meili, namespace):
    url = dual_corpus(database_url, meili, namespace)
    topic = f"kukuri:{namespace}-flip"
    landed = {}
    with tail_thread(url, meili, OPTIONS, "flip"):
        for mode in ("meili_only", "dual", "pg_only"):
            with db.connect(url) as conn:
                set_mode(conn, mode, by="drill", reason="flip under the tail")
                rows = publish(conn, f"flip-{mode}", 15, topic)
            # applied by every engine its mode names (a side the mode leaves out keeps its offset)
            names = {"meili_only": ["meili"], "dual": ["meili", "pg"], "pg_only": ["pg"]}[mode]
            poll(lambda: all(side_offsets(url).get(s, 0) >= rows[-1][1] for s in names), 60, f"{mode} rows applied")
            ids = {e for e, _ in rows}
            in_meili = meili_ids(meili, topic)
            with db.connect(url) as conn:
                in_pg = {r[0] for r in conn.execute("SELECT post_id FROM cn_search.post_search_documents "
                                                    "WHERE topic_id = %s AND NOT is_deleted", (topic,))}
            landed[mode] = (ids <= in_meili, ids <= in_pg, bool(ids & in_meili), bool(ids & in_pg))
    assert landed["meili_only"] == (True, False, True, False)  # checked before the flip to dual
    assert landed["dual"][:2] == (True, True)
    assert landed["pg_only"] == (False, True, False, True)
    print(f"\nDRILL tail flag flip: 15 rows per mode, each in exactly the engines its mode named")


def test_meilisearch_outage_under_the_tail(database_url, own_meili, namespace):
    own = meili_index.client(own_meili.meili_url, own_meili.meili_master_key)
    url = dual_corpus(database_url, own, namespace)
    topic = f"kukuri:{namespace}-outage"
    with tail_thread(url, own, OPTIONS, "meili-outage") as t:
        with db.connect(url) as conn:
            publish(conn, "before-outage", 10, topic)
        poll(lambda: offset(url) == _head(url), 60, "the tail to apply the first rows")
        services.down(own_meili)
        with db.connect(url) as conn:
            # fewer rows than a batch: the consumer reads from the lowest side offset, so PostgreSQL runs
            # at most one batch ahead of a stalled Meilisearch (20,000 rows with the tail's backlog batches)
            publish(conn, "during-outage", OPTIONS.batch_size - 5, topic)
            head = contract.outbox_head(conn)
            # PostgreSQL goes on; Meilisearch's side stalls at its first unapplied row, recorded durably
            poll(lambda: side_offsets(url).get("pg") == head and conn.execute(
                "SELECT count(*) FROM cn_search.side_write_failures WHERE backend = 'meili'").fetchone()[0] == 1,
                 60, "pg applied, meili stalled and recorded")
            assert side_offsets(url)["meili"] < head and offset(url) == side_offsets(url)["meili"]
        assert t.result.stalls >= 1
        services.up(own_meili)
        poll(lambda: offset(url) == head, 120, "the tail to recover once Meilisearch is back")
        with db.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM cn_search.side_write_failures").fetchone()[0] == 0
    assert_invariant(url, "tail Meilisearch outage", own)


def test_postgres_restart_under_the_tail(own_pg, meili, namespace):
    url = dual_corpus(own_pg.embedded_pg_url(), meili, namespace)
    topic = f"kukuri:{namespace}-pgrestart"
    with tail_thread(url, meili, OPTIONS, "pg-restart") as t:
        with db.connect(url) as conn:
            publish(conn, "before-restart", 20, topic)
        poll(lambda: offset(url) == _head(url), 60, "the tail to apply the first rows")
        services.down(own_pg)  # every session is terminated, the tail's lock with them
        services.up(own_pg)
        with db.connect(url) as conn:
            rows = publish(conn, "after-restart", 20, topic, start=20)
        poll(lambda: offset(url) == rows[-1][1], 120, "the tail to reconnect and apply")
        assert t.result.reconnects >= 1
    assert_invariant(url, "tail PostgreSQL restart", meili)
