"""Drill 3: Meilisearch stopped (the real process) during a dual-write catch-up and during shadow reads.

Protections proved: the Meilisearch side's offset stays on its first unapplied row while PostgreSQL's
goes on, so after the restart catch-up replays exactly what Meilisearch missed; the read router runs
the shadow engine off the request path, so users keep getting the primary's (PostgreSQL's) answers and
the outage is recorded as a shadow error, not returned to them.
"""

from __future__ import annotations

from search_migration import db
from search_migration.cutover import flags
from search_migration.write_path import meili_index
from search_migration.write_path import consumer
from search_migration.search import pg_search
from search_migration.local import services
from search_migration.source import contract
from search_migration.search.read_router import ReadRouter

from ..support.processes import child, crash_meili, poll
from ..support.writes import FAST, new_posts, product_writes
from .helpers import assert_invariant, backfill_everything, catch_up_all, seed_dual
from ..support.cutover import QUERIES


def test_meilisearch_outage_during_dual_catchup_and_shadow_reads(database_url, own_meili, namespace, tmp_path):
    url = database_url
    own = meili_index.client(own_meili.meili_url, own_meili.meili_master_key)
    seed_dual(url, own, namespace, posts=600, topics=4, seed=9)  # index-v1's per-topic indexes, handed over
    backfill_everything(url)
    catch_up_all(url, own)
    with db.connect(url) as conn:
        # live with every read shadowed: PostgreSQL answers, Meilisearch is the shadow
        flags.set_flags(conn, {"search_read_backend": "pg", "suggest_read_backend": "pg", "shadow_sample_rate": "100"},
                        by="drill", reason="drill: live, all reads shadowed")
        start = contract.consumer_offset(conn, contract.CONSUMER)
        new_posts(conn, 2_000, "meili-outage")
        product_writes(conn, "meili-outage", inserts=20, edits=40, deletes=40, removals=20)
        head = contract.outbox_head(conn)
        topics = contract.topic_ids(conn)

    proc = child(
        "import sys; from search_migration import db; from search_migration.write_path import meili_index, consumer as oc\n"
        f"conn = db.connect({url!r})\n"
        f"r = oc.catch_up(conn, meili_index.client({own_meili.meili_url!r}, {own_meili.meili_master_key!r}), "
        f"batch_size=50, retry=oc.Retry(attempts=3, initial_s=0.05, max_s=0.2))\n"
        "sys.exit(3 if r.stalled else 0)\n", tmp_path / "consumer.log")
    with db.connect(url) as conn:
        poll(lambda: contract.consumer_offset(conn, contract.CONSUMER) > start + 100 or proc.poll() is not None,
             300, "catch-up progress")
        assert proc.poll() is None, "catch-up finished before the outage"
        crash_meili(own_meili)  # the outage, mid-catch-up
        assert proc.wait(timeout=300) == 3, (tmp_path / "consumer.log").read_text()[-3000:]
        sides = dict(conn.execute("SELECT backend, last_seq FROM cn_search.consumer_side_offsets"))
        assert start < sides["meili"] < head and sides["meili"] == contract.consumer_offset(conn, contract.CONSUMER)
        assert sides["pg"] >= sides["meili"]  # the overall offset is the lagging side's: Meilisearch's
        for _ in range(3):  # the sensor keeps requesting catch-up runs while Meilisearch is down
            again = consumer.catch_up(conn, own, batch_size=50, retry=FAST)
            assert "meili" in again.stalled

        # reads during the outage: every answer is PostgreSQL's, none fails; the shadow side records errors
        asked = [(topics[i % len(topics)], q) for i, q in enumerate(QUERIES)]
        logged_before = conn.execute("SELECT count(*) FROM cn_search.shadow_read_logs").fetchone()[0]
        with ReadRouter(url, own) as router:
            for n, (topic, q) in enumerate(asked):
                got = router.search(topic, q, viewer=f"v{n}")
                want = pg_search.search(conn, topic, q, 20, 0)
                assert got["backend"] == "pg" and got["items"] == want.items, q
                assert router.suggest(q[:2], viewer=f"v{n}")["backend"] == "pg"
            router.drain()
        errors = conn.execute("SELECT count(*), count(secondary_error) FROM cn_search.shadow_read_logs").fetchone()
        assert errors[0] - logged_before == 2 * len(asked) and errors[1] == 2 * len(asked)

    services.up(own_meili)  # Meilisearch comes back with its data; catch-up replays what it missed
    catch_up_all(url, own)
    assert_invariant(url, "3 Meilisearch outage", own)
    with db.connect(url) as conn:
        with ReadRouter(url, own) as router:
            router.search(topics[0], QUERIES[0], viewer="after")
            router.drain()
        last = conn.execute("SELECT secondary_error FROM cn_search.shadow_read_logs ORDER BY log_id DESC LIMIT 1").fetchone()
        assert last == (None,)  # shadow reads work again
