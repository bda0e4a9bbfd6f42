"""The backfill engine against real PostgreSQL: watermark, exact copy, resume, fencing, versioning."""

from __future__ import annotations

import pytest

from search_migration import backfill
from search_migration import db
from search_migration.local import demo_seed
from search_migration.write_path import pg_documents
from search_migration.backfill import BackfillError, LeaseBusy, LeaseLost, PartitionOptions, Window
from search_migration.local.demo_corpus import EPOCH, topic_ids
from search_migration.write_path.pg_documents import DocWrite

from .support.backfill import capture, WEEK, WINDOWS, actual, expected
from .support.writes import seed_source, set_mode


def at_watermark(url: str, posts: int, topics: int) -> backfill.Watermark:
    """A seeded source with writes dual and the watermark captured: where every partition test starts."""
    seed_source(url, posts, topics)
    with db.connect(url) as conn:
        set_mode(conn, "dual")
        return capture(conn, by="test")


def run_all(url: str, topics: list[str], options: PartitionOptions | None = None) -> list[backfill.PartitionResult]:
    return [backfill.run_partition(url, f"{w.start}|{t}", t, w, owner="test", options=options)
            for t in topics for w in WINDOWS]


def add_post_after_watermark(conn, event_id: str, topic: str, created_at: int) -> None:
    with conn.transaction():
        conn.execute("INSERT INTO cn_relay.events (event_id, pubkey, kind, content, created_at) "
                     "VALUES (%s, 'p', 1, 'after the watermark', %s)", (event_id, created_at))
        conn.execute("INSERT INTO cn_relay.event_topics VALUES (%s, %s)", (event_id, topic))
        conn.execute("INSERT INTO cn_relay.events_outbox (op, event_id, topic_id, reason) "
                     "VALUES ('upsert', %s, %s, 'created')", (event_id, topic))


def test_watermark_is_refused_until_writes_are_dual(migrated_url):
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


def test_backfill_copies_exactly_the_live_rows_at_the_watermark(migrated_url):
    seed_source(migrated_url)
    topics = topic_ids(4)
    with db.connect(migrated_url) as conn:
        set_mode(conn, "dual")
        wm = capture(conn, by="test")
        # written after the watermark: catch-up's business, not the backfill's
        add_post_after_watermark(conn, "f" * 64, topics[0], EPOCH + 100)
        # deleted after the watermark (catch-up will write the tombstone): not copied as live
        gone = conn.execute("SELECT e.event_id FROM cn_relay.events e WHERE NOT is_deleted "
                            "ORDER BY event_id LIMIT 1").fetchone()[0]
        conn.execute("UPDATE cn_relay.events SET is_deleted = true WHERE event_id = %s", (gone,))
    results = run_all(migrated_url, topics, PartitionOptions(page_size=97))
    with db.connect(migrated_url) as conn:
        want = expected(conn, wm.seq)
        assert actual(conn) == want and len(want) > 2000
        assert not any(r[1] in ("f" * 64, gone) for r in actual(conn))
        per_topic = dict(conn.execute("SELECT topic_id, count(*) FROM cn_search.post_search_documents "
                                      "GROUP BY 1").fetchall())
        assert per_topic == {t: sum(1 for r in want if r[0] == t) for t in topics}
        statuses = conn.execute("SELECT DISTINCT status FROM cn_search.backfill_jobs").fetchall()
        assert statuses == [("succeeded",)]
        p = backfill.progress(conn)
        assert p.rows_done == p.rows_total == wm.manifest_rows
    assert sum(r.rows_copied for r in results) == len(want)
    assert sum(r.rows_copied + r.rows_skipped for r in results) == wm.manifest_rows


def test_rerun_of_a_complete_partition_is_a_noop_unless_rebuilt(migrated_url):
    at_watermark(migrated_url, 600, 2)
    topic = topic_ids(2)[0]
    w = WINDOWS[3]
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


def test_a_new_run_resumes_after_the_checkpoint(migrated_url):
    wm = at_watermark(migrated_url, 600, 2)
    topic = topic_ids(2)[0]
    w = WINDOWS[3]
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
        assert got == {x for x in want if w.start <= conn.execute(
            "SELECT created_at FROM cn_relay.events WHERE event_id = %s", (x[1],)).fetchone()[0] < w.end}


def test_a_zombie_lease_holder_can_write_nothing_after_a_takeover(migrated_url):
    wm = at_watermark(migrated_url, 600, 2)
    topic = topic_ids(2)[0]
    w = WINDOWS[3]
    with db.connect(migrated_url) as conn:
        zombie = backfill.acquire(conn, "p", topic, w, wm, owner="zombie", lease_timeout_s=30)
        first, second = backfill.read_page(conn, topic, w, None, 10), None
        backfill.write_page(conn, zombie, first, 0)
        # while the lease is live nobody else starts work
        with pytest.raises(LeaseBusy):
            backfill.acquire(conn, "p", topic, w, wm, owner="eager", lease_timeout_s=30)
        conn.execute("UPDATE cn_search.backfill_jobs SET heartbeat_at = now() - interval '1 minute'")
        owner = backfill.acquire(conn, "p", topic, w, wm, owner="new", lease_timeout_s=30)
        assert owner.after == (first[-1].created_at, first[-1].event_id)
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


def test_backfill_never_overwrites_a_newer_document_or_a_tombstone(migrated_url):
    wm = at_watermark(migrated_url, 600, 2)
    topic = topic_ids(2)[0]
    w = WINDOWS[3]
    with db.connect(migrated_url) as conn:
        rows = [r for r in backfill.read_page(conn, topic, w, None, 1000) if r.live]
        deleted, edited = rows[0], rows[1]
        # catch-up got there first with later outbox rows: a delete and an edit
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


def delete_post(conn, event_id: str) -> None:
    """The product's delete: the event flagged and one outbox delete per topic, in one transaction."""
    with conn.transaction():
        conn.execute("UPDATE cn_relay.events SET is_deleted = true WHERE event_id = %s", (event_id,))
        conn.execute("INSERT INTO cn_relay.events_outbox (op, event_id, topic_id, reason) "
                     "SELECT 'delete', event_id, topic_id, 'deleted' FROM cn_relay.event_topics WHERE event_id = %s",
                     (event_id,))


def test_a_post_deleted_by_catch_up_during_its_backfill_stays_deleted(migrated_url, meili, index_uid):
    from search_migration.write_path import consumer

    with db.connect(migrated_url) as conn:
        demo_seed.seed(conn, meili, index_uid, posts=1500, topics=2, seed=3)
        set_mode(conn, "dual")
        wm = capture(conn, by="test")
        topic, start = conn.execute(
            "SELECT topic_id, created_at - (created_at - %s) %% %s AS wk FROM cn_search.backfill_manifest "
            "GROUP BY 1, 2 ORDER BY count(*) DESC LIMIT 1", (WINDOWS[0].start, WEEK)).fetchone()
        w = Window(start, start + WEEK)
        # race 1: the backfill read the post while it was live, catch-up deletes it, then the page is written
        lease = backfill.acquire(conn, "p", topic, w, wm, owner="first", lease_timeout_s=30)
        page = backfill.read_page(conn, topic, w, None, 10)
        read_live = page[3]
        assert read_live.live
        delete_post(conn, read_live.event_id)
        applied = consumer.catch_up(conn, meili, index_uid)
        assert applied.rows_applied >= 1
        result = backfill.write_page(conn, lease, page, 0)
        assert result.rows_skipped >= 1  # the stale live copy lost to the tombstone
        conn.execute("UPDATE cn_search.backfill_jobs SET heartbeat_at = now() - interval '1 hour'")  # holder gone
        rest = [r for r in backfill.read_page(conn, topic, w, (page[-1].created_at, page[-1].event_id), 1000) if r.live]
        later = rest[len(rest) // 2]  # a post the resumed run reaches only after several pages

    # race 2: deleted (and caught up) while the resumed run is paging through the window
    def on_page(progress: backfill.PartitionResult) -> None:
        if progress.pages == 1:
            with db.connect(migrated_url) as c:
                delete_post(c, later.event_id)
                consumer.catch_up(c, meili, index_uid)
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
        want = {x for x in expected(conn, head) if x[0] == topic and conn.execute(
            "SELECT created_at FROM cn_relay.events WHERE event_id = %s", (x[1],)).fetchone()[0] in range(w.start, w.end)}
        assert {(t, p, h) for t, p, h, _ in live_docs} == {(t, p, h) for t, p, h, _ in want}


def test_a_window_the_manifest_shows_empty_finishes_without_a_page(migrated_url):
    at_watermark(migrated_url, 300, 2)
    topic = topic_ids(2)[0]
    before_corpus = Window(EPOCH - 2 * WEEK, EPOCH - WEEK)
    r = backfill.run_partition(migrated_url, "empty", topic, before_corpus, owner="t")
    assert (r.rows_total, r.rows_done, r.pages, r.noop) == (0, 0, 0, False)
    with db.connect(migrated_url) as conn:
        assert conn.execute("SELECT status, attempts FROM cn_search.backfill_jobs WHERE partition_key = 'empty'"
                            ).fetchone() == ("succeeded", 1)
        assert not conn.execute("SELECT 1 FROM cn_search.backfill_checkpoints WHERE partition_key = 'empty'").fetchall()


def test_a_failure_in_the_first_page_is_recorded_and_a_retry_completes(migrated_url):
    """The lease and the first page share a transaction: a failing page leaves no document, and the
    failure (class and message, never content) is still recorded on the job."""
    wm = at_watermark(migrated_url, 600, 2)
    topic = topic_ids(2)[0]
    w = WINDOWS[3]

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
        want = {x for x in expected(conn, wm.seq) if x[0] == topic and w.start <= conn.execute(
            "SELECT created_at FROM cn_relay.events WHERE event_id = %s", (x[1],)).fetchone()[0] < w.end}
        assert actual(conn) == want and len(want) == r.rows_copied


def test_small_partitions_share_a_transaction_and_the_others_go_alone(migrated_url):
    """run_many (what a Dagster run calls): small windows are taken, copied and finished together, one
    partition per topic per transaction; a window over a page, one resuming after a checkpoint and one
    already complete take their own way; the copy is exact either way."""
    wm = at_watermark(migrated_url, 2000, 4)
    topics = topic_ids(4)
    parts = [(f"{w.start}|{t}", t, w) for w in WINDOWS for t in topics]
    with db.connect(migrated_url) as conn:
        sizes = dict(conn.execute(
            "SELECT p.key, (SELECT count(*) FROM cn_search.backfill_manifest m WHERE m.topic_id = p.topic "
            "AND m.created_at >= p.s AND m.created_at < p.e) FROM unnest(%s::text[], %s::text[], %s::bigint[], "
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


def test_a_batch_that_fails_leaves_nothing_and_its_partitions_fail_alone(migrated_url):
    at_watermark(migrated_url, 600, 2)
    parts = [(f"{w.start}|{t}", t, w) for w in WINDOWS[:6] for t in topic_ids(2)]
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
