"""The read side against the product's per-topic Meilisearch indexes, on real servers.

Search asks a topic's own index as the product's /v1/search does; suggest searches every topic index at
once; drift compares each engine with the source's own definition of searchable, per topic index.
Every test writes topics of its own namespace (all tests share one Meilisearch).
"""

from __future__ import annotations

import json
import random
import string
import time
import uuid

import pytest

from search_migration import db
from search_migration.gates import drift, shadow_report
from search_migration.local.product_fixture import apply_product_schema, build_product_world, searchable_pairs
from search_migration.local.product_indexer import ProductIndexer
from search_migration.local.product_writer import ProductWriter, build_event, pubkey_of
from search_migration.schema.migrate import migrate
from search_migration.search import meili_search
from search_migration.search.read_router import ReadRouter
from search_migration.source import contract
from search_migration.write_path import legacy_documents as legacy
from search_migration.write_path import meili_index, pg_documents
from search_migration_tests.support.processes import run_cli


def _word(n: int = 10) -> str:
    """A word no other test's document holds (letters only: one token for Meilisearch)."""
    return "".join(random.choice(string.ascii_lowercase) for _ in range(n))


@pytest.fixture
def ns() -> str:
    return "rd" + uuid.uuid4().hex[:10]


@pytest.fixture
def product(database_url: str, meili):
    """An empty product database (cn_relay as the product has it, cn_search migrated), its writer and the
    emulated product indexer; the indexes it created are deleted afterwards."""
    with db.connect(database_url) as conn:
        apply_product_schema(conn)
        migrate(database_url)
        indexer = ProductIndexer(conn, meili)
        yield conn, ProductWriter(conn), indexer
        for uid in indexer._known_uids:
            meili_index.delete_index(meili, uid)
        meili_search.topic_index_cache.clear()


def _publish(writer: ProductWriter, who: str, content: str, topics: list[str], at: int, **kw) -> dict:
    event = build_event(pubkey=pubkey_of(who), content=content, topics=topics, created_at=at, **kw)
    writer.publish(event, now=at)
    return event


def _raw_ids(meili, topic: str, q: str, limit: int, offset: int = 0) -> list[str]:
    """What Meilisearch itself answers to the product's request on the topic's index."""
    hits = meili.index(legacy.index_uid(topic)).search(q, {"limit": limit, "offset": offset})["hits"]
    return [h["event_id"] for h in hits]


# --------------------------------------------------------------------------- search


def test_search_answers_from_the_topics_own_index_with_offset_paging(product, meili, ns):
    conn, writer, indexer = product
    tokyo, rust = f"kukuri:{ns}-tokyo", f"kukuri:{ns}-rust"
    word = _word()
    now = int(time.time())
    for i in range(23):
        _publish(writer, f"user{i % 4}", f"{word} coffee near the station, visit number {i}", [tokyo], now - 100 + i)
    for i in range(5):
        _publish(writer, "bob", f"{word} borrow checker notes {i}", [rust], now - 50 + i)
    indexer.run(now=now)

    page = meili_search.search(meili, tokyo, word, limit=10)
    assert [i["event_id"] for i in page.items] == _raw_ids(meili, tokyo, word, 10)
    assert all(i["topic_id"] == tokyo for i in page.items) and page.total == 23 and page.next_offset == 10

    # the cursor is the offset; pages add up to what one large request returns, nothing twice
    collected, offset = [], 0
    while offset is not None:
        page = meili_search.search(meili, tokyo, word, limit=7, offset=offset)
        assert [i["event_id"] for i in page.items] == _raw_ids(meili, tokyo, word, 7, offset)
        collected += [i["event_id"] for i in page.items]
        offset = page.next_offset
    assert collected == _raw_ids(meili, tokyo, word, 50) and len(set(collected)) == 23

    # no filter: the other topic's posts live in their own index and never show up here
    assert {i["topic_id"] for i in meili_search.search(meili, rust, word, limit=50).items} == {rust}
    assert meili_search.search(meili, rust, word).total == 5

    # the product's limit: default 20, at most 50
    assert len(meili_search.search(meili, tokyo, word).items) == 20
    assert len(meili_search.search(meili, tokyo, word, limit=500).items) == 23

    # a topic without an index: no results, not an error
    missing = meili_search.search(meili, f"kukuri:{ns}-never-written", word)
    assert (missing.items, missing.total, missing.next_offset) == ([], 0, None)
    # a query without words asks nothing
    assert meili_search.search(meili, tokyo, "  ").items == []


def test_search_through_the_router_pages_with_cursors(product, meili, database_url, ns):
    conn, writer, indexer = product
    topic = f"kukuri:{ns}-cafe"
    word = _word()
    now = int(time.time())
    for i in range(12):
        _publish(writer, "alice", f"{word} latte art attempt {i}", [topic], now - 100 + i)
    indexer.run(now=now)
    with ReadRouter(database_url, meili) as router:
        out, ids, cursor = None, [], None
        while True:
            out = router.search(topic, word, limit=5, cursor=cursor, backend="meili")
            assert out["backend"] == "meili" and out["total"] == 12
            ids += [i["event_id"] for i in out["items"]]
            cursor = out["next_cursor"]
            if cursor is None:
                break
        assert ids == _raw_ids(meili, topic, word, 50)
        assert router.search(f"kukuri:{ns}-nothing", word, backend="meili")["items"] == []


def test_search_on_colliding_topics_returns_the_shared_index_as_the_product_does(product, meili, ns):
    conn, writer, indexer = product
    a, b = f"kukuri:{ns}-Night/Owls", f"kukuri:{ns}-night_owls"
    assert legacy.index_uid(a) == legacy.index_uid(b)
    word = _word()
    now = int(time.time())
    ea = _publish(writer, "owen", f"{word} 夜更かし仲間の集まり", [a], now - 10)
    eb = _publish(writer, "owen", f"{word} night owls unite", [b], now - 5)
    indexer.run(now=now)
    for topic in (a, b):
        page = meili_search.search(meili, topic, word)
        assert {(i["event_id"], i["topic_id"]) for i in page.items} == {(ea["id"], a), (eb["id"], b)}
        assert [i["event_id"] for i in page.items] == _raw_ids(meili, topic, word, 20)


# --------------------------------------------------------------------------- suggest


def test_suggest_searches_every_topic_index_at_once(product, meili, database_url, ns):
    conn, writer, indexer = product
    topics = [f"kukuri:{ns}-t{i}" for i in range(3)]
    word = _word(12)
    now = int(time.time())
    events = {}
    for n, topic in enumerate(topics):
        events[topic] = _publish(writer, f"u{n}", f"{word} is what I typed in topic {n}", [topic], now - 10 + n)
    both = _publish(writer, "z", f"{word} twice", topics[:2], now - 1)  # one post in two topics: suggested once
    _publish(writer, "y", "unrelated text entirely", [topics[0]], now)
    indexer.run(now=now)
    meili_search.topic_index_cache.clear()  # indexes created after another test's listing

    items = meili_search.suggest(meili, word[:6], limit=10)
    assert {(i["event_id"], i["topic_id"]) for i in items if i["event_id"] != both["id"]} == {
        (e["id"], t) for t, e in events.items()}
    assert [i["event_id"] for i in items].count(both["id"]) == 1
    assert all(i["text"].startswith(word) for i in items)
    assert len(meili_search.suggest(meili, word[:6], limit=2)) == 2
    assert meili_search.suggest(meili, "", limit=5) == []
    with ReadRouter(database_url, meili) as router:
        out = router.suggest(word[:6], limit=10, backend="meili")
    assert out["backend"] == "meili" and {i["event_id"] for i in out["items"]} == {i["event_id"] for i in items}


# --------------------------------------------------------------------------- drift


@pytest.fixture
def world(database_url: str, meili, ns):
    """The product's pre-migration world, PostgreSQL documents copied from its source tables (as a
    finished backfill leaves them) and our consumer at the outbox head: a consistent pair."""
    now = int(time.time())
    with db.connect(database_url) as conn:
        w = build_product_world(conn, meili, now=now, namespace=ns)
        migrate(database_url)
        pairs = searchable_pairs(conn, now)
        content = dict(conn.execute("SELECT event_id, content FROM cn_relay.events WHERE event_id = ANY(%s)",
                                    ([e for e, _ in pairs],)).fetchall())
        pg_documents.apply(conn, [pg_documents.DocWrite(1, e, t, False, content[e]) for e, t in sorted(pairs)])
        conn.execute("INSERT INTO cn_relay.consumer_offsets (consumer, last_seq) VALUES (%s, %s)",
                     (contract.CONSUMER, contract.outbox_head(conn)))
        yield conn, w
        for uid in {legacy.index_uid(t) for t in contract.topic_ids(conn)}:
            meili_index.delete_index(meili, uid)


def _topic(report: drift.DriftReport, topic_id: str) -> drift.TopicDrift:
    return next(t for t in report.topics if topic_id in t.topics)


def _a_searchable_post(w, role: str) -> str:
    """A searchable post of that topic alone (a multi-topic post would change two topics at once)."""
    topics_of: dict[str, set[str]] = {}
    for e, t in w.searchable:
        topics_of.setdefault(e, set()).add(t)
    return sorted(e for e, ts in topics_of.items() if ts == {w.topics[role]})[0]


def test_drift_is_zero_on_a_consistent_pair_and_reports_collisions_and_defects_apart(world, meili):
    conn, w = world
    report = drift.report(conn, meili, now=w.now)
    assert report.drift == 0, [(t.topic_id, t) for t in report.drifting_topics]
    assert report.backlog_too_large is False and report.pending_excluded == 0
    # every source row of the namespace was compared, and each side counted exactly
    ours = [t for t in report.topics if any(x in w.topics.values() for x in t.topics)]
    assert sum(t.sampled for t in ours) == len({(e, legacy.index_uid(t)) for e, t in w.searchable | w.legacy_only})
    tokyo = _topic(report, w.topics["tokyo"])
    expected = sum(1 for _, t in w.searchable if t == w.topics["tokyo"])
    assert tokyo.source_documents == tokyo.pg_documents == tokyo.meili_documents == expected
    # the two topics sharing one index: a finding of their own, compared as one index, not drift
    uid = legacy.index_uid(w.topics["owls_a"])
    assert report.collisions == {uid: sorted([w.topics["owls_a"], w.topics["owls_b"]])}
    owls = _topic(report, w.topics["owls_a"])
    assert owls.collision and owls.uid == uid and owls.meili_documents == owls.source_documents == 2
    # the product indexer's stale version left in a topic its newer version left: listed, not drift
    assert _topic(report, w.topics["cafe"]).legacy_defects == sorted(e for e, _ in w.legacy_only)
    assert report.legacy_defects == len(w.legacy_only) == 1


def test_drift_sees_a_document_missing_from_postgresql(world, meili):
    conn, w = world
    post = _a_searchable_post(w, "rust")
    conn.execute("DELETE FROM cn_search.post_search_documents WHERE post_id = %s AND topic_id = %s",
                 (post, w.topics["rust"]))
    report = drift.report(conn, meili, now=w.now)
    rust = _topic(report, w.topics["rust"])
    assert rust.missing_in_pg == [post] and rust.missing_in_meili == [] and rust.extra_in_meili == []
    assert rust.pg_documents == rust.source_documents - 1 and rust.drift == 2
    assert [t.topic_id for t in report.drifting_topics] == [rust.topic_id]


def test_drift_sees_a_document_missing_from_meilisearch(world, meili):
    conn, w = world
    post = _a_searchable_post(w, "tokyo")
    meili_index.wait(meili, meili.index(legacy.index_uid(w.topics["tokyo"])).delete_document(post).task_uid)
    report = drift.report(conn, meili, now=w.now)
    tokyo = _topic(report, w.topics["tokyo"])
    assert tokyo.missing_in_meili == [post] and tokyo.missing_in_pg == [] and tokyo.extra_in_pg == []
    assert tokyo.meili_documents == tokyo.source_documents - 1 and report.drift == 2


def test_drift_sees_a_document_both_engines_lost_and_one_both_kept(world, meili):
    """The engines agree with each other, yet disagree with the source: that is drift."""
    conn, w = world
    lost = _a_searchable_post(w, "tokyo")
    conn.execute("DELETE FROM cn_search.post_search_documents WHERE post_id = %s AND topic_id = %s",
                 (lost, w.topics["tokyo"]))
    meili_index.wait(meili, meili.index(legacy.index_uid(w.topics["tokyo"])).delete_document(lost).task_uid)
    kept = _a_searchable_post(w, "rust")  # the source deletes it (the outbox row was consumed), no engine does
    conn.execute("UPDATE cn_relay.events SET is_deleted = true WHERE event_id = %s", (kept,))
    report = drift.report(conn, meili, now=w.now)
    tokyo, rust = _topic(report, w.topics["tokyo"]), _topic(report, w.topics["rust"])
    assert tokyo.missing_in_pg == tokyo.missing_in_meili == [lost]
    assert tokyo.pg_documents == tokyo.meili_documents == tokyo.source_documents - 1
    assert kept in rust.extra_in_pg and kept in rust.extra_in_meili
    assert tokyo.drift > 0 and rust.drift > 0


def test_drift_sees_changed_content_and_leaves_rows_in_flight_out(world, meili):
    conn, w = world
    post = _a_searchable_post(w, "cafe")
    conn.execute("UPDATE cn_search.post_search_documents SET content = content || ' (edited)' "
                 "WHERE post_id = %s AND topic_id = %s", (post, w.topics["cafe"]))
    report = drift.report(conn, meili, now=w.now)
    assert _topic(report, w.topics["cafe"]).content_mismatch == [post] and report.drift == 1
    # a new product write our consumer has not applied yet: in flight, not drift
    writer = ProductWriter(conn)
    writer.publish(build_event(pubkey=pubkey_of("newbie"), content="まだ索引されていない投稿", topics=[w.topics["tokyo"]],
                               created_at=w.now), now=w.now)
    conn.execute("UPDATE cn_search.post_search_documents SET content = %s WHERE post_id = %s AND topic_id = %s",
                 ("", post, w.topics["cafe"]))
    conn.execute("UPDATE cn_search.post_search_documents d SET content = e.content FROM cn_relay.events e "
                 "WHERE e.event_id = d.post_id AND d.post_id = %s", (post,))
    report = drift.report(conn, meili, now=w.now)
    assert report.pending_excluded == 1 and report.drift == 0


# --------------------------------------------------------------------------- CLI


def test_cli_search_and_suggest_read_the_topic_indexes(product, meili, servers, database_url, ns):
    conn, writer, indexer = product
    topic = f"kukuri:{ns}-Cli/Topic"  # a uid the topic id only reaches through sanitizing
    word = _word()
    now = int(time.time())
    for i in range(4):
        _publish(writer, "cli", f"{word} from the command line {i}", [topic], now - 10 + i)
    indexer.run(now=now)
    env = servers.env(DATABASE_URL=database_url)
    out = run_cli("search", "--topic", topic, "--q", word, "--limit", "3", "--backend", "meili", env=env)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert [i["event_id"] for i in body["items"]] == _raw_ids(meili, topic, word, 3)
    assert body["total"] == 4 and body["next_cursor"] and body["backend"] == "meili"
    out = run_cli("search", "--topic", topic, "--q", word, "--limit", "3", "--cursor", body["next_cursor"],
                  "--backend", "meili", env=env)
    assert [i["event_id"] for i in json.loads(out.stdout)["items"]] == _raw_ids(meili, topic, word, 3, 3)
    out = run_cli("suggest", "--q", word[:5], "--backend", "meili", env=env)
    assert out.returncode == 0, out.stderr
    assert {i["topic_id"] for i in json.loads(out.stdout)["items"]} == {topic}


# --------------------------------------------------------------------------- golden replay


def test_golden_queries_replay_on_each_topics_own_index(product, meili, database_url, ns):
    conn, writer, indexer = product
    topics = [f"kukuri:{ns}-Golden/A", f"kukuri:{ns}-golden-b"]
    word = _word()
    now = int(time.time())
    for n, topic in enumerate(topics):
        for i in range(3):
            _publish(writer, f"g{n}", f"{word} golden post {i}", [topic], now - 20 + 3 * n + i)
    indexer.run(now=now)
    golden = [shadow_report.GoldenQuery(t, word) for t in topics]
    with ReadRouter(database_url, meili) as router:
        replay = shadow_report.replay_golden(router, golden)
        report = shadow_report.build(conn, router, golden=golden)
    for row, topic in zip(replay.itertuples(), topics):
        assert row.index == legacy.index_uid(topic) and row.meili_ids == _raw_ids(meili, topic, word, 10)
        assert len(row.meili_ids) == 3
    assert report.golden_queries == 2 and [q["index"] for q in report.per_query] == [legacy.index_uid(t) for t in topics]
