"""The backfill engine against real PostgreSQL: watermark, exact copy, resume, fencing, versioning."""

from __future__ import annotations

import pytest

from search_migration import backfill
from search_migration import db
from search_migration.local import demo_seed
from search_migration.local.demo_corpus import T_START
from search_migration.local.product_writer import ProductWriter, build_event
from search_migration.source import contract
from search_migration.write_path import handover, pg_documents
from search_migration.backfill import BackfillError, LeaseBusy, LeaseLost, PartitionOptions, Window
from search_migration.write_path.pg_documents import DocWrite

from .support.backfill import SPAN, capture, WEEK, WINDOWS, actual, expected
from .support.writes import NOW, note, seed_source, set_mode


def at_watermark(url: str, posts: int, topics: int) -> backfill.Watermark:
    """A seeded source with writes dual and the watermark captured: where every partition test starts."""
    seed_source(url, posts, topics)
    with db.connect(url) as conn:
        set_mode(conn, "dual")
        return capture(conn, by="test")


def topic_ids(url: str) -> list[str]:
    """The seeded source's topics, in id order."""
    with db.connect(url) as conn:
        return contract.topic_ids(conn)


def in_window(conn, topic: str, w: Window) -> set[str]:
    """The manifest's posts of a topic whose chunk (created_at clamped into the partitioned span) is in w."""
    return {e for (e,) in conn.execute("SELECT event_id FROM cn_search.backfill_manifest WHERE topic_id = %s "
                                       "AND chunk_at >= %s AND chunk_at < %s", (topic, w.start, w.end))}


def busiest(url: str, topic: str) -> Window:
    """The topic's week with the most manifest rows (several pages of small page sizes)."""
    with db.connect(url) as conn:
        counts = dict(conn.execute("SELECT chunk_at - (chunk_at - %s) %% %s, count(*) FROM cn_search.backfill_manifest "
                                   "WHERE topic_id = %s GROUP BY 1", (WINDOWS[0].start, WEEK, topic)).fetchall())
    start = max(counts, key=lambda s: (counts[s], s))
    assert counts[start] > 20, counts
    return Window(start, start + WEEK)


def chunk_of(created_at: int) -> int:
    return min(max(created_at, SPAN["chunk_floor"]), SPAN["chunk_ceiling"] - 1)


def run_all(url: str, topics: list[str], options: PartitionOptions | None = None) -> list[backfill.PartitionResult]:
    return [backfill.run_partition(url, f"{w.start}|{t}", t, w, owner="test", options=options)
            for t in topics for w in WINDOWS]


def add_post_after_watermark(conn, topic: str, created_at: int) -> str:
    """A note the product stores after the watermark, dated inside the corpus's history."""
    event = note("after-watermark", 0, [topic], created_at=created_at, content="after the watermark")
    ProductWriter(conn).publish(event, now=NOW)
    return event["id"]


_deletions = iter(range(1, 10**6))


def delete_post(conn, event_id: str) -> str:
    """The product's delete: the author's NIP-09 deletion (kind 5, itself posted in one of the post's
    topics); the relay marks the post deleted and writes one outbox delete per topic. Returns the
    deletion event's id."""
    pubkey, topic = conn.execute("SELECT e.pubkey, min(et.topic_id) FROM cn_relay.events e JOIN "
                                 "cn_relay.event_topics et USING (event_id) WHERE e.event_id = %s GROUP BY 1",
                                 (event_id,)).fetchone()
    at = NOW + next(_deletions)
    deletion = build_event(pubkey=pubkey, kind=5, content="", topics=[topic], created_at=at, tags=[["e", event_id]])
    assert ProductWriter(conn).publish(deletion, now=at)
    assert conn.execute("SELECT is_deleted FROM cn_relay.events WHERE event_id = %s", (event_id,)).fetchone()[0]
    return deletion["id"]


def test_watermark_is_refused_until_writes_are_dual(database_url):
    migrated_url = database_url
    seed_source(migrated_url, 300, 2)
    with db.connect(migrated_url) as conn:
        with pytest.raises(BackfillError, match="meili_only"):
            capture(conn, by="test")
        assert conn.execute("SELECT count(*) FROM cn_search.backfill_watermarks").fetchone()[0] == 0
        set_mode(conn, "dual")
        wm = capture(conn, by="test")
        head = conn.execute("SELECT max(seq) FROM cn_relay.events_outbox").fetchone()[0]
        assert wm.seq == head and wm.manifest_rows > 0
        assert backfill.latest_watermark(conn) == wm


def test_backfill_copies_exactly_the_live_rows_at_the_watermark(database_url):
    migrated_url = database_url
    seed_source(migrated_url)
    topics = topic_ids(migrated_url)
    with db.connect(migrated_url) as conn:
        # the relay's retention pruned the outbox history of everything ingested 30 days before NOW
        pruned = ProductWriter(conn).retention(outbox_days=30, now=NOW)["events_outbox"]
        assert pruned > 1000
        set_mode(conn, "dual")
        wm = capture(conn, by="test")
        # written after the watermark: catch-up's business, not the backfill's
        fresh = add_post_after_watermark(conn, topics[0], T_START + 3600)
        # deleted after the watermark (catch-up will write the tombstone): not copied as live
        gone = conn.execute(f"SELECT e.event_id FROM cn_relay.events e WHERE {contract.SEARCHABLE} AND kind = 1 "
                            "ORDER BY event_id LIMIT 1", {"now": contract.now_unix()}).fetchone()[0]
        deletion = delete_post(conn, gone)
    results = run_all(migrated_url, topics, PartitionOptions(page_size=97))
    with db.connect(migrated_url) as conn:
        want = expected(conn, wm.seq)
        assert actual(conn) == want and len(want) > 2000
        assert not any(r[1] in (fresh, gone, deletion) for r in actual(conn))
        # posts without any outbox row left are copied all the same, at version 0 (any later row wins)
        assert 1000 < sum(1 for r in want if r[3] == 0) < len(want)
        backdated = conn.execute("SELECT count(*) FROM cn_search.post_search_documents WHERE created_at < %s",
                                 (SPAN["chunk_floor"],)).fetchone()[0]
        assert backdated > 0  # dated before the partitioned span: in its first window
        per_topic = dict(conn.execute("SELECT topic_id, count(*) FROM cn_search.post_search_documents "
                                      "GROUP BY 1").fetchall())
        assert per_topic == {t: sum(1 for r in want if r[0] == t) for t in topics}
        statuses = conn.execute("SELECT DISTINCT status FROM cn_search.backfill_jobs").fetchall()
        assert statuses == [("succeeded",)]
        p = backfill.progress(conn)
        assert p.rows_done == p.rows_total == wm.manifest_rows
    assert sum(r.rows_copied for r in results) == len(want)
    assert sum(r.rows_copied + r.rows_skipped for r in results) == wm.manifest_rows


def test_a_run_that_filled_the_tables_leaves_their_statistics_fresh(database_url):
    """Reads right after a first backfill must not be planned for empty tables: a run that wrote a tenth
    of what the planner thinks the documents hold ANALYZEs what it filled (reltuples is ANALYZE's count)."""
    at_watermark(database_url, 2000, 4)
    partitions = [(f"{w.start}|{t}", t, w) for t in topic_ids(database_url) for w in WINDOWS]
    reltuples = ("SELECT c.relname, c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                 "WHERE n.nspname = 'cn_search' AND c.relname IN ('post_search_documents', 'post_title_words')")
    with backfill.Backfiller(database_url, owner="test") as b:
        copied = sum(r.rows_copied for r in b.run_many(partitions))
    with db.connect(database_url) as conn:
        counted = dict(conn.execute(reltuples).fetchall())
        title_words = conn.execute("SELECT count(*) FROM cn_search.post_title_words").fetchone()[0]
    assert copied > 2000 and counted == {"post_search_documents": copied, "post_title_words": title_words}


def test_rerun_of_a_complete_partition_is_a_noop_unless_rebuilt(database_url):
    migrated_url = database_url
    at_watermark(migrated_url, 600, 2)
    topic = topic_ids(migrated_url)[0]
    w = busiest(migrated_url, topic)
    first = backfill.run_partition(migrated_url, "p", topic, w, owner="a", options=PartitionOptions(page_size=5))
    assert first.rows_copied > 5 and not first.noop
    again = backfill.run_partition(migrated_url, "p", topic, w, owner="b", options=PartitionOptions(page_size=5))
    assert again.noop and again.pages == 0 and again.rows_done == first.rows_done
    rebuilt = backfill.run_partition(migrated_url, "p", topic, w, owner="c",
                                     options=PartitionOptions(page_size=5, rebuild=True))
    # a rebuild walks the window again; the versioned writer keeps identical documents unchanged
    assert not rebuilt.noop and rebuilt.rows_done == first.rows_done and rebuilt.rows_copied == 0
    with db.connect(migrated_url) as conn:
        assert conn.execute("SELECT attempts FROM cn_search.backfill_jobs WHERE partition_key = 'p'").fetchone()[0] == 2


def test_a_new_run_resumes_after_the_checkpoint(database_url):
    migrated_url = database_url
    wm = at_watermark(migrated_url, 600, 2)
    topic = topic_ids(migrated_url)[0]
    w = busiest(migrated_url, topic)
    with db.connect(migrated_url) as conn:
        lease = backfill.acquire(conn, "p", topic, w, wm, owner="crashed")
        page = backfill.read_page(conn, topic, w, None, 10)
        backfill.write_page(conn, lease, page, 0)
        # the crashed holder stops heartbeating; its lease ages past the timeout
        conn.execute("UPDATE cn_search.backfill_jobs SET heartbeat_at = now() - interval '1 hour'")
    r = backfill.run_partition(migrated_url, "p", topic, w, owner="retry", options=PartitionOptions(page_size=10))
    assert r.resumed_after_rows == 10 and r.rows_done == r.rows_total
    assert r.rows_copied + r.rows_skipped == r.rows_total - 10
    with db.connect(migrated_url) as conn:
        want = {x for x in expected(conn, wm.seq) if x[0] == topic}
        got = {x for x in actual(conn) if x[0] == topic}
        window = in_window(conn, topic, w)
        assert got == {x for x in want if x[1] in window} and got


def test_a_zombie_lease_holder_can_write_nothing_after_a_takeover(database_url):
    migrated_url = database_url
    wm = at_watermark(migrated_url, 600, 2)
    topic = topic_ids(migrated_url)[0]
    w = busiest(migrated_url, topic)
    with db.connect(migrated_url) as conn:
        zombie = backfill.acquire(conn, "p", topic, w, wm, owner="zombie", lease_timeout_s=30)
        first, second = backfill.read_page(conn, topic, w, None, 10), None
        backfill.write_page(conn, zombie, first, 0)
        # while the lease is live nobody else starts work
        with pytest.raises(LeaseBusy):
            backfill.acquire(conn, "p", topic, w, wm, owner="eager", lease_timeout_s=30)
        conn.execute("UPDATE cn_search.backfill_jobs SET heartbeat_at = now() - interval '1 minute'")
        owner = backfill.acquire(conn, "p", topic, w, wm, owner="new", lease_timeout_s=30)
        assert owner.after == (first[-1].chunk_at, first[-1].event_id)
        before = (conn.execute("SELECT * FROM cn_search.backfill_jobs").fetchall(),
                  conn.execute("SELECT * FROM cn_search.backfill_checkpoints").fetchall(),
                  conn.execute("SELECT count(*) FROM cn_search.post_search_documents").fetchone())
        second = backfill.read_page(conn, topic, w, owner.after, 10)
        with pytest.raises(LeaseLost):
            backfill.write_page(conn, zombie, second, 10)  # documents + checkpoint + progress
        with pytest.raises(LeaseLost):
            backfill.heartbeat(conn, zombie)
        with pytest.raises(LeaseLost):
            backfill.finish(conn, zombie)
        with pytest.raises(LeaseLost):
            backfill.fail(conn, zombie, "zombie")
        after = (conn.execute("SELECT * FROM cn_search.backfill_jobs").fetchall(),
                 conn.execute("SELECT * FROM cn_search.backfill_checkpoints").fetchall(),
                 conn.execute("SELECT count(*) FROM cn_search.post_search_documents").fetchone())
        assert after == before
        assert not conn.execute("SELECT 1 FROM cn_search.post_search_documents WHERE post_id = ANY(%s)",
                                ([r.event_id for r in second],)).fetchall()
        backfill.write_page(conn, owner, second, 10)  # the live holder still can
        assert conn.execute("SELECT rows_done, lease_token FROM cn_search.backfill_checkpoints").fetchone() == (
            10 + len(second), owner.token)


def test_backfill_never_overwrites_a_newer_document_or_a_tombstone(database_url):
    migrated_url = database_url
    wm = at_watermark(migrated_url, 600, 2)
    topic = topic_ids(migrated_url)[0]
    w = busiest(migrated_url, topic)
    with db.connect(migrated_url) as conn:
        rows = [r for r in backfill.read_page(conn, topic, w, None, 1000) if r.live]
        deleted, edited = rows[0], rows[1]
        # catch-up got there first with later outbox rows for the same (post, topic): a delete, and a
        # later upsert (its document as PostgreSQL holds it, content marked so a copy over it shows)
        pg_documents.apply(conn, [DocWrite(wm.seq + 1, deleted.event_id, topic, True),
                                  DocWrite(wm.seq + 2, edited.event_id, topic, False, "edited later", edited.created_at)])
    r = backfill.run_partition(migrated_url, "p", topic, w, owner="t")
    assert r.rows_skipped >= 2
    with db.connect(migrated_url) as conn:
        docs = dict(((p, (d, c, s)) for p, d, c, s in conn.execute(
            "SELECT post_id, is_deleted, content, source_seq FROM cn_search.post_search_documents "
            "WHERE post_id = ANY(%s) AND topic_id = %s", ([deleted.event_id, edited.event_id], topic))))
    assert docs[deleted.event_id] == (True, "", wm.seq + 1)
    assert docs[edited.event_id] == (False, "edited later", wm.seq + 2)


def test_the_staged_writer_keeps_the_versioning_rule(migrated_url):
    post = "b" * 64
    with db.connect(migrated_url) as conn:
        with pytest.raises(ValueError):
            pg_documents.apply_staged(conn, [DocWrite(1, post, "t1", False, "x", 1)])  # needs a transaction
        with conn.transaction():
            assert pg_documents.apply_staged(conn, [DocWrite(10, post, "t1", False, "東京でラーメン", 5),
                                                    DocWrite(11, post, "t2", False, "東京", 5)]) == {"t1": 1, "t2": 1}
        with conn.transaction():
            assert pg_documents.apply_staged(conn, [DocWrite(20, post, "t1", True)]) == {"t1": 1}
        with conn.transaction():  # older writes neither resurrect nor regress
            assert pg_documents.apply_staged(conn, [DocWrite(12, post, "t1", False, "old", 5),
                                                    DocWrite(9, post, "t2", False, "older", 5)]) == {}
        staged = conn.execute("SELECT topic_id, source_seq, is_deleted, content, search_tokens::text "
                              "FROM cn_search.post_search_documents ORDER BY 1").fetchall()
        conn.execute("TRUNCATE cn_search.post_search_documents")
        pg_documents.apply(conn, [DocWrite(10, post, "t1", False, "東京でラーメン", 5),
                                  DocWrite(11, post, "t2", False, "東京", 5)])
        pg_documents.apply(conn, [DocWrite(20, post, "t1", True)])
        unnest = conn.execute("SELECT topic_id, source_seq, is_deleted, content, search_tokens::text "
                              "FROM cn_search.post_search_documents ORDER BY 1").fetchall()
    assert staged == unnest and [(r[0], r[1], r[2]) for r in staged] == [("t1", 20, True), ("t2", 11, False)]


def test_a_post_deleted_by_catch_up_during_its_backfill_stays_deleted(database_url, meili, namespace):
    from search_migration.write_path import consumer

    migrated_url = database_url
    demo_seed.seed(migrated_url, meili, posts=1500, topics=2, seed=3, namespace=namespace)
    with db.connect(migrated_url) as conn:
        handover.adopt(conn, from_consumer=contract.PRODUCT_INDEXER, by="test", reason="backfill race")
        set_mode(conn, "dual")
        wm = capture(conn, by="test")
        topic, start = conn.execute(
            "SELECT topic_id, chunk_at - (chunk_at - %s) %% %s AS wk FROM cn_search.backfill_manifest "
            "GROUP BY 1, 2 ORDER BY count(*) DESC LIMIT 1", (WINDOWS[0].start, WEEK)).fetchone()
        w = Window(start, start + WEEK)
        # race 1: the backfill read the post while it was live, catch-up deletes it, then the page is written
        lease = backfill.acquire(conn, "p", topic, w, wm, owner="first", lease_timeout_s=30)
        page = backfill.read_page(conn, topic, w, None, 10)
        read_live = next(r for r in page[2:] if r.live and r.kind == 1)
        delete_post(conn, read_live.event_id)
        applied = consumer.catch_up(conn, meili)
        assert applied.rows_applied >= 1
        result = backfill.write_page(conn, lease, page, 0)
        assert result.rows_skipped >= 1  # the stale live copy lost to the tombstone
        conn.execute("UPDATE cn_search.backfill_jobs SET heartbeat_at = now() - interval '1 hour'")  # holder gone
        rest = [r for r in backfill.read_page(conn, topic, w, (page[-1].chunk_at, page[-1].event_id), 1000)
                if r.live and r.kind == 1]
        later = rest[len(rest) // 2]  # a post the resumed run reaches only after several pages

    # race 2: deleted (and caught up) while the resumed run is paging through the window
    def on_page(progress: backfill.PartitionResult) -> None:
        if progress.pages == 1:
            with db.connect(migrated_url) as c:
                delete_post(c, later.event_id)
                consumer.catch_up(c, meili)
    r = backfill.run_partition(migrated_url, "p", topic, w, owner="second",
                               options=PartitionOptions(page_size=5), on_page=on_page)
    assert r.pages > 2 and r.rows_done == r.rows_total

    with db.connect(migrated_url) as conn:
        docs = {p: (d, s) for p, d, s in conn.execute(
            "SELECT post_id, is_deleted, source_seq FROM cn_search.post_search_documents WHERE topic_id = %s "
            "AND post_id = ANY(%s)", (topic, [read_live.event_id, later.event_id]))}
        assert docs[read_live.event_id][0] and docs[read_live.event_id][1] > wm.seq
        assert docs[later.event_id][0] and docs[later.event_id][1] > wm.seq
        live_docs = {x for x in actual(conn) if x[0] == topic}
        assert not {read_live.event_id, later.event_id} & {x[1] for x in live_docs}
        head = conn.execute("SELECT max(seq) FROM cn_relay.events_outbox").fetchone()[0]
        created = dict(conn.execute("SELECT event_id, created_at FROM cn_relay.events"))
        window = {p for p, at in created.items() if w.start <= chunk_of(at) < w.end}
        live_docs = {x for x in live_docs if x[1] in window}  # the deletion events, caught up, are live elsewhere
        want = {x for x in expected(conn, head) if x[0] == topic and x[1] in window}
        assert {(t, p, h) for t, p, h, _ in live_docs} == {(t, p, h) for t, p, h, _ in want}


def test_a_window_the_manifest_shows_empty_finishes_without_a_page(database_url):
    migrated_url = database_url
    at_watermark(migrated_url, 300, 2)
    topic = topic_ids(migrated_url)[0]
    # before the partitioned span: posts dated earlier (backdated by years) are chunked into its first week
    before_corpus = Window(SPAN["chunk_floor"] - 2 * WEEK, SPAN["chunk_floor"] - WEEK)
    r = backfill.run_partition(migrated_url, "empty", topic, before_corpus, owner="t")
    assert (r.rows_total, r.rows_done, r.pages, r.noop) == (0, 0, 0, False)
    with db.connect(migrated_url) as conn:
        assert conn.execute("SELECT status, attempts FROM cn_search.backfill_jobs WHERE partition_key = 'empty'"
                            ).fetchone() == ("succeeded", 1)
        assert not conn.execute("SELECT 1 FROM cn_search.backfill_checkpoints WHERE partition_key = 'empty'").fetchall()


def test_a_failure_in_the_first_page_is_recorded_and_a_retry_completes(database_url):
    """The lease and the first page share a transaction: a failing page leaves no document, and the
    failure (class and message, never content) is still recorded on the job."""
    migrated_url = database_url
    wm = at_watermark(migrated_url, 600, 2)
    topic = topic_ids(migrated_url)[0]
    w = busiest(migrated_url, topic)

    def broken_writer(conn, writes):
        pg_documents.apply(conn, writes)  # written, then rolled back with the page
        raise RuntimeError("writer broke")

    with pytest.raises(RuntimeError):
        backfill.run_partition(migrated_url, "p", topic, w, owner="a",
                               options=PartitionOptions(page_size=10, writer=broken_writer))
    with db.connect(migrated_url) as conn:
        assert conn.execute("SELECT status, last_error, attempts FROM cn_search.backfill_jobs").fetchone() == (
            "failed", "RuntimeError: writer broke", 1)
        assert conn.execute("SELECT count(*) FROM cn_search.post_search_documents").fetchone()[0] == 0
        assert not conn.execute("SELECT 1 FROM cn_search.backfill_checkpoints").fetchall()
    r = backfill.run_partition(migrated_url, "p", topic, w, owner="b", options=PartitionOptions(page_size=10))
    assert r.resumed_after_rows == 0 and r.rows_done == r.rows_total > 10
    with db.connect(migrated_url) as conn:
        assert conn.execute("SELECT status, attempts FROM cn_search.backfill_jobs").fetchone() == ("succeeded", 2)
        window = in_window(conn, topic, w)
        want = {x for x in expected(conn, wm.seq) if x[0] == topic and x[1] in window}
        assert actual(conn) == want and len(want) == r.rows_copied


def test_small_partitions_share_a_transaction_and_the_others_go_alone(database_url):
    """run_many (what a Dagster run calls): small windows are taken, copied and finished together, one
    partition per topic per transaction; a window over a page, one resuming after a checkpoint and one
    already complete take their own way; the copy is exact either way."""
    migrated_url = database_url
    wm = at_watermark(migrated_url, 2000, 4)
    topics = topic_ids(migrated_url)
    parts = [(f"{w.start}|{t}", t, w) for w in WINDOWS for t in topics]
    with db.connect(migrated_url) as conn:
        sizes = dict(conn.execute(
            "SELECT p.key, (SELECT count(*) FROM cn_search.backfill_manifest m WHERE m.topic_id = p.topic "
            "AND m.chunk_at >= p.s AND m.chunk_at < p.e) FROM unnest(%s::text[], %s::text[], %s::bigint[], "
            "%s::bigint[]) AS p(key, topic, s, e)", ([p[0] for p in parts], [p[1] for p in parts],
                                                     [p[2].start for p in parts], [p[2].end for p in parts])).fetchall())
    page = sorted(sizes.values())[len(sizes) * 9 // 10]  # one window in ten needs more than a page
    resuming, complete = [p for p in parts if sizes[p[0]] > 10][:2]
    backfill.run_partition(migrated_url, complete[0], complete[1], complete[2], owner="earlier")
    with db.connect(migrated_url) as conn:
        lease = backfill.acquire(conn, resuming[0], resuming[1], resuming[2], wm, owner="crashed")
        backfill.write_page(conn, lease, backfill.read_page(conn, resuming[1], resuming[2], None, 10), 0)
        conn.execute("UPDATE cn_search.backfill_jobs SET heartbeat_at = now() - interval '1 hour' "
                     "WHERE partition_key = %s", (resuming[0],))

    with backfill.Backfiller(migrated_url, owner="run", options=PartitionOptions(page_size=page)) as b:
        results = list(b.run_many(parts))

    assert [r.partition_key for r in results] == [p[0] for p in parts]
    by_key = {r.partition_key: r for r in results}
    assert by_key[complete[0]].noop and by_key[resuming[0]].resumed_after_rows == 10
    assert all(r.rows_done == r.rows_total == sizes[r.partition_key] for r in results)
    with db.connect(migrated_url) as conn:
        want = expected(conn, wm.seq)
        assert actual(conn) == want
        assert conn.execute("SELECT sum(rows_copied), count(*) FILTER (WHERE status <> 'succeeded') "
                            "FROM cn_search.backfill_jobs").fetchone() == (len(want), 0)
        tokens = conn.execute("SELECT lease_token, count(*), count(DISTINCT topic_id), bool_or(rows_total > %s) "
                              "FROM cn_search.backfill_jobs GROUP BY 1", (page,)).fetchall()
    shared = [t for t in tokens if t[1] > 1]
    assert len(shared) >= len(parts) // (2 * len(topics))  # most windows went in batches ...
    assert all(n == distinct for _, n, distinct, _ in tokens)  # ... of one partition per topic
    assert all(n == 1 for _, n, _, big in tokens if big)  # a window over a page went alone


def test_a_batch_that_fails_leaves_nothing_and_its_partitions_fail_alone(database_url):
    migrated_url = database_url
    at_watermark(migrated_url, 600, 2)
    parts = [(f"{w.start}|{t}", t, w) for w in WINDOWS[:6] for t in topic_ids(migrated_url)]
    with db.connect(migrated_url) as conn:  # another run holds the fourth partition's lease
        wm = backfill.require_watermark(conn)
        backfill.acquire(conn, parts[3][0], parts[3][1], parts[3][2], wm, owner="other run")

    def broken_writer(conn, writes):
        raise RuntimeError("writer broke")

    with backfill.Backfiller(migrated_url, owner="a", options=PartitionOptions(writer=broken_writer)) as b:
        with pytest.raises(RuntimeError):
            next(b.run_many(parts))
    with backfill.Backfiller(migrated_url, owner="b") as b:
        done = []
        with pytest.raises(LeaseBusy):
            for r in b.run_many(parts):
                done.append(r)
    assert [r.partition_key for r in done] == [p[0] for p in parts[:3]]
    with db.connect(migrated_url) as conn:
        jobs = dict(conn.execute("SELECT partition_key, status FROM cn_search.backfill_jobs").fetchall())
        assert conn.execute("SELECT attempts, last_error FROM cn_search.backfill_jobs WHERE partition_key = %s",
                            (parts[0][0],)).fetchone() == (2, None)
    assert jobs[parts[3][0]] == "running" and all(jobs[p[0]] == "succeeded" for p in parts[:3])
