"""PostgreSQL search against a real server: filters, Meilisearch's ranking (checked against a real
per-topic Meilisearch index holding the same documents), pagination, suggest and its targeted candidates.

Converted to the product's shape (issue 14/15): documents are built from signed events as cn-index builds
them (pg_documents.doc_write_for_event for PostgreSQL, legacy_documents.document for the topic's own
Meilisearch index, created with the product's settings); topics are `kukuri:<namespace>-...`. The ranking
tests no longer spell out an order derived from our old emulation: Meilisearch is the oracle, and where
an intent is certain (a bucket order, a filter) it is asserted on its own as well.
"""

from __future__ import annotations

import random

import pytest

from search_migration import db
from search_migration.gates.measures import overlap_at_10
from search_migration.local.product_writer import pubkey_of
from search_migration.search import meili_search, pg_search
from search_migration.source import contract
from search_migration.write_path import legacy_documents, meili_index, pg_documents

BASE = 1_700_000_000


def _post(n: int) -> str:
    return f"{n:064x}"


def _raw(n: int, topic: str, content: str, tags: list | None = None, created_at: int | None = None) -> dict:
    return {"id": _post(n), "pubkey": pubkey_of("test:pg-search"), "created_at": created_at or BASE + n, "kind": 1,
            "tags": [["t", topic]] + (tags or []), "content": content}


def _write(conn, docs, meili=None):
    """docs: (n, topic, content[, deleted]) in insertion order (seq = place); with `meili`, the same
    documents into each topic's own index, in the same order."""
    writes, by_topic = [], {}
    for seq, (n, topic, content, *rest) in enumerate(docs, start=1):
        raw = _raw(n, topic, content)
        deleted = bool(rest and rest[0])
        if deleted:
            writes.append(pg_documents.DocWrite(seq, _post(n), topic, True, "", raw["created_at"]))
        else:
            writes.append(pg_documents.doc_write_for_event(seq, raw, topic))
            by_topic.setdefault(topic, []).append(legacy_documents.document({"raw_json": raw}, topic))
    pg_documents.apply(conn, writes)
    if meili is not None:
        for topic, batch in by_topic.items():
            uid, tasks = meili_index.ensure_topic_index(meili, topic)
            tasks.append(meili.index(uid).add_documents(batch).task_uid)
            for t in tasks:
                meili_index.wait(meili, t)


def _ids(page):
    return [int(i["event_id"], 16) for i in page.items]


def _meili_ids(meili, topic, q, limit=20):
    return [int(i["event_id"], 16) for i in meili_search.search(meili, topic, q, limit).items]


def _federated(meili, topics, q: str, limit: int = 5) -> list[int]:
    """Meilisearch's suggest over these topics' indexes only (a federated multi-search), one item per post."""
    uids = [meili_index.index_uid(t) for t in topics]
    hits = meili.multi_search([{"indexUid": u, "q": q} for u in uids], federation={"limit": 3 * limit})["hits"]
    return list(dict.fromkeys(int(h["event_id"], 16) for h in hits))[:limit]


@pytest.fixture
def no_bucket_scan(monkeypatch):
    """The test fails if the bucket scan, which ranks every match, answers a query."""
    def scan(*args, **kwargs):
        raise AssertionError("the bucket scan ranked every match")

    monkeypatch.setattr(pg_search, "_ranked", scan)


@pytest.fixture
def conn(migrated_url):
    with db.connect(migrated_url) as c:
        yield c


@pytest.fixture
def topics(namespace):
    return f"kukuri:{namespace}-ramen", f"kukuri:{namespace}-tech"


def test_multi_topic_rows_deleted_private_and_old_normalizer_rows(conn, topics):
    t1, t2 = topics
    _write(conn, [(1, t1, "東京でラーメン"), (1, t2, "東京でラーメン"), (2, t2, "ラーメン食べたい"),
                  (3, t1, "ラーメン屋"), (4, t1, "ラーメン好き", True), (5, t1, "ラーメンの写真"),
                  (6, t1, "ラーメンまつり")])
    conn.execute("UPDATE cn_search.post_search_documents SET visibility = 'private' WHERE post_id = %s", (_post(5),))
    conn.execute("UPDATE cn_search.post_search_documents SET normalizer_version = 1 WHERE post_id = %s", (_post(6),))
    first = pg_search.search(conn, t1, "ラーメン")
    assert sorted(_ids(first)) == [1, 3] and first.total == 2  # no tombstone, no private row, no stale tokens
    second = pg_search.search(conn, t2, "ラーメン")
    assert sorted(_ids(second)) == [1, 2] and {i["topic_id"] for i in second.items} == {t2}
    assert pg_search.search(conn, "kukuri:none", "ラーメン").items == []


def test_words_bucket_then_proximity_attribute_and_exactness_as_meilisearch(conn, meili, topics):
    t1, t2 = topics
    _write(conn, [
        (10, t1, "rust tokyo meetup"),  # adjacent, in query order
        (11, t1, "tokyo rust"),  # adjacent, reversed
        (12, t1, "tokyo"),  # no `rust`
        (13, t1, "meetup rust"),  # no `tokyo`
        (14, t1, "new photo then rust and tokyo"),
        (15, t1, "rust is far from the city of tokyo"),
        (20, t2, "coffee"), (21, t2, "coffee time"), (22, t2, "good coffee"),
        (23, t2, "coffeehouse"), (24, t2, "the morning coffee"), (25, t2, "coffee"),
    ], meili)
    for topic, q in ((t1, "rust tokyo"), (t1, "tokyo rust"), (t2, "coffee"), (t2, "coffee time"), (t1, "tokio rust")):
        assert _ids(pg_search.search(conn, topic, q)) == _meili_ids(meili, topic, q), q
    # strategy `last`: all words first; then `tokyo` is dropped, never `rust`
    found = _ids(pg_search.search(conn, t1, "rust tokyo"))
    assert set(found[:4]) == {10, 11, 14, 15} and 12 not in found and found[-1] == 13
    assert _ids(pg_search.search(conn, t2, "coffee"))[:2] == [20, 25]  # the exact whole value first


def test_last_word_is_a_prefix_typos_and_cjk_words_as_meilisearch(conn, meili, topics):
    t1, _ = topics
    _write(conn, [(1, t1, "rustacean meetup"), (2, t1, "rust"), (3, t1, "猫がかわいい"),
                  (4, t1, "黒猫"), (5, t1, "#ラーメン 最高"), (6, t1, "ラーメン"), (7, t1, "implements the tables"),
                  (8, t1, "現在状態を確認する")], meili)
    for q in ("rus", "rust", "rust meetup", "猫", "かわい", "#ラーメン", "ラーメン", "implemented", "table"):
        assert _ids(pg_search.search(conn, t1, q)) == _meili_ids(meili, t1, q), q
    assert _ids(pg_search.search(conn, t1, "rus")) == [1, 2]  # both only start with it: insertion order
    assert _ids(pg_search.search(conn, t1, "rust")) == [2, 1]  # the exact word first
    # a tag is searched as its word; the post that is exactly the word first (exactness: equal attribute)
    assert _ids(pg_search.search(conn, t1, "#ラーメン")) == [6, 5]
    assert _ids(pg_search.search(conn, t1, "implemented")) == [7]  # one typo from 9 letters: implements


def test_kanji_only_query_is_chinese_to_meilisearch(conn, meili, topics):
    """Meilisearch detects a kanji-only query as Chinese and folds its kVariants (状 -> 狀), so it misses
    the 状態 of Japanese text; segment.py folds the same way, so both engines answer alike."""
    t1, _ = topics
    _write(conn, [(8, t1, "現在状態を確認する")], meili)
    for q in ("状態", "現在状態"):
        assert _ids(pg_search.search(conn, t1, q)) == _meili_ids(meili, t1, q), q


def test_a_kanji_query_cut_into_characters_is_read_from_its_tiers_as_meilisearch_ranks_it(conn, meili, topics,
                                                                                           no_bucket_scan):
    """鴨川 reaches both engines as 鴨 川 (Chinese to Meilisearch): documents holding the two apart (a
    kanji-only hashtag) rank first, placed by where they hold them apart, then those holding the Japanese
    word 鴨川 (the ngram: 2 typos) by its position. Answered from the ngram's title tiers and the few
    documents holding the words apart, not by ranking every match (the bucket scan)."""
    t1, t2 = topics
    docs = [(1, t1, "鴨川でカメラを食べた。 the update was great this client #鴨川"),
            (2, t1, "the library was great #鴨川"), (3, t2, "鴨川駅の近くで"), (4, t1, "今日は鴨川の温泉がよかった"),
            (5, t2, "写真 #鴨川"), (6, t1, "静かな店 鴨川")]
    docs += [(n, t1 if n % 2 else t2, f"鴨川{'のカメラ' if n % 3 else 'で写真'}を撮った {n}") for n in range(7, 40)]
    _write(conn, docs, meili)
    for topic in topics:
        for q in ("鴨川", "鴨川 "):
            assert _ids(pg_search.search(conn, topic, q, 10)) == _meili_ids(meili, topic, q, 10), (q, topic)
    expected = _federated(meili, topics, "鴨川")
    assert [int(i["event_id"], 16) for i in pg_search.suggest(conn, "鴨川", 5)] == expected
    assert expected[:2] == [5, 2]  # apart, early: before the 鴨川 at position 0 of post 1


def test_a_typo_no_document_holds_is_read_from_the_tiers_of_the_words_it_derives(conn, meili, topics, no_bucket_scan):
    """`zepelin` (one typo from 7 letters) is held by no document: every match holds a word one typo away
    (zeppelin, zeppelins as the prefix goes on), so those words' title tiers answer it, in Meilisearch's
    order, without ranking every match."""
    t1, t2 = topics
    docs = [(n, t1 if n % 2 else t2, text) for n, text in enumerate(
        ["zeppelin over the bay", "a zeppelins fleet", "we saw the zeppelin today", "old photos of a zeppelin",
         "zeppelin", "the red zeppelin in the sky again"] + [f"zeppelin story {n}" for n in range(30)], start=1)]
    _write(conn, docs, meili)
    for topic in topics:
        for q in ("zepelin", "zeppelni "):
            assert _ids(pg_search.search(conn, topic, q, 10)) == _meili_ids(meili, topic, q, 10), (q, topic)
    expected = _federated(meili, topics, "zepelin")
    assert [int(i["event_id"], 16) for i in pg_search.suggest(conn, "zepelin", 5)] == expected and expected


def test_pagination_cursor_and_total(conn, topics):
    t1, _ = topics
    _write(conn, [(n, t1, f"photo number {n}" if n % 3 else f"my photo {n}") for n in range(1, 46)])
    first = pg_search.search(conn, t1, "photo", limit=20)
    assert first.total == 45 and len(first.items) == 20 and first.next_offset == 20
    second = pg_search.search(conn, t1, "photo", limit=20, offset=first.next_offset)
    third = pg_search.search(conn, t1, "photo", limit=20, offset=second.next_offset)
    assert len(third.items) == 5 and third.next_offset is None
    seen = _ids(first) + _ids(second) + _ids(third)
    assert sorted(seen) == list(range(1, 46))  # every document exactly once
    assert _ids(first)[:3] == [1, 2, 4]  # `photo` first in the title ranks before `my photo`


def test_suggest_is_a_prefix_search_across_topics_one_item_per_post(conn, meili, topics):
    """Across topics like a federated multi-search of the topics' indexes, one item per post. The first
    topic's id ends in `-ramen`, and a post's topics are its `tags` attribute: so its ラーメン post matches
    `ram` too, after the two posts whose title starts with it, in Meilisearch as here."""
    t1, t2 = topics
    _write(conn, [(1, t1, "ramen tonight"), (1, t2, "ramen tonight"), (2, t2, "rampart"),
                  (3, t1, "ラーメン食べたい"), (4, t2, "cold soba")], meili)

    items = pg_search.suggest(conn, "ram", limit=5)
    # post 1 once, though in two topics
    assert [int(i["event_id"], 16) for i in items] == [1, 2, 3] == _federated(meili, topics, "ram")
    assert [int(i["event_id"], 16) for i in pg_search.suggest(conn, "ラ")] == [3] == _federated(meili, topics, "ラ")
    assert pg_search.suggest(conn, "   🍜 ") == []


def test_suggest_finds_a_title_starting_with_the_prefix_beyond_the_first_matches(conn, topics):
    """The targeted candidates (lead_word): more posts than suggest's candidate cap mention the prefix's
    word late in their text, and the one post whose title starts with it comes last in insertion order;
    Meilisearch ranks it first (attribute title, position 0), so must we."""
    t1, t2 = topics
    n = pg_search.SUGGEST_CANDIDATES + 100
    _write(conn, [(i, t1 if i % 2 else t2, f"notes about builds and the zebrafish lab {i}") for i in range(1, n + 1)]
           + [(n + 1, t2, "zebra crossing tonight")])
    conn.execute("ANALYZE cn_search.post_search_documents")
    assert [int(i["event_id"], 16) for i in pg_search.suggest(conn, "zeb", limit=3)][0] == n + 1
    assert [int(i["event_id"], 16) for i in pg_search.suggest(conn, "zebra", limit=3)][0] == n + 1


TITLE_WORDS_SQL = """
SELECT word, tier, uid, created_at, post_id, topic_id FROM cn_search.post_title_words
WHERE topic_id = ANY(%(topics)s) ORDER BY post_id, topic_id, word
"""


def test_title_words_follow_every_write_and_serve_a_frequent_word_in_meilisearchs_order(conn, meili, topics):
    """cn_search.post_title_words (migration 0016) is kept by the documents' triggers through inserts, newer
    versions, tombstones and a rebuild; the tiers it serves rank a word frequent in titles as Meilisearch
    does: the title's first word first, then by position, ties in insertion order, across topics by uid."""
    t1, t2 = topics
    docs = [(n, t1 if n % 3 else t2, f"{'ramen' if n % 4 == 0 else 'soba'} then more ramen words {n}")
            for n in range(1, 41)] + [(41, t1, "late soba"), (42, t2, "ramen")]
    _write(conn, docs, meili)

    def recomputed() -> list[tuple]:
        sql = conn.execute("SELECT cn_search.title_words_sql('cn_search.post_search_documents')").fetchone()[0]
        return sorted(r for r in conn.execute(sql) if r[5] in topics)

    held = sorted(conn.execute(TITLE_WORDS_SQL, {"topics": list(topics)}))
    assert held == recomputed() and any(r[0] == "ramen" and r[1] == 0 for r in held)
    for q, topic in (("ramen", t1), ("ramen", t2), ("soba", t1), ("ram", t1), ("words", t2)):
        assert _ids(pg_search.search(conn, topic, q)) == _meili_ids(meili, topic, q), (q, topic)
    # a newer version, a tombstone: the title words follow
    raw = _raw(5, t1, "udon only")
    pg_documents.apply(conn, [pg_documents.doc_write_for_event(100, raw, t1),
                              pg_documents.DocWrite(101, _post(6), t2, True, "", BASE + 6)])
    held = sorted(conn.execute(TITLE_WORDS_SQL, {"topics": list(topics)}))
    assert held == recomputed()
    assert {r[0] for r in held if r[4] == _post(5)} == {"udon", "only"} and not [r for r in held if r[4] == _post(6)]
    assert pg_search.suggest(conn, "udo", limit=3)[0]["event_id"] == _post(5)


SEARCHABLE_RAW_SQL = f"""
SELECT e.raw_json, et.topic_id FROM cn_relay.event_topics et JOIN cn_relay.events e ON e.event_id = et.event_id
WHERE {contract.SEARCHABLE} ORDER BY e.created_at, e.event_id
"""


def test_top_10_agrees_with_meilisearch_on_the_demo_corpus(legacy, meili):
    """The demo corpus as the product indexed it (legacy), and PostgreSQL's documents of the same events."""
    with db.connect(legacy) as conn:
        rows = conn.execute(SEARCHABLE_RAW_SQL, {"now": contract.now_unix()}).fetchall()
        pg_documents.apply(conn, [pg_documents.doc_write_for_event(seq, raw, t) for seq, (raw, t) in enumerate(rows, 1)])
        conn.execute("ANALYZE cn_search.post_search_documents")
        topic_ids = contract.topic_ids(conn)[:2]
        queries = ["ラーメン", "東京", "猫", "カメラ", "コーヒー 猫", "東京 写真", "rust", "python release",
                   "coffee", "tokyo photo", "sea", "ram", "検索", "データ"]
        overlaps = []
        for topic in topic_ids:
            for q in queries:
                pg = pg_search.search(conn, topic, q, limit=10)
                ms = meili_search.search(meili, topic, q, limit=10)
                overlaps.append(overlap_at_10([i["event_id"] for i in pg.items], [i["event_id"] for i in ms.items]))
    assert sum(overlaps) / len(overlaps) >= 0.9, list(zip(queries * 2, overlaps))


def test_equal_documents_indexed_live_rank_in_insertion_order_in_both(conn, meili, topics):
    """Posts indexed one by one as they arrive (ids in no particular order): Meilisearch breaks ties by
    insertion order, PostgreSQL by (created_at, event id), which is the outbox order for posts arriving
    in time order."""
    t1, _ = topics
    ids = list(range(1, 41))
    random.Random(7).shuffle(ids)
    uid, tasks = meili_index.ensure_topic_index(meili, t1)
    for t in tasks:
        meili_index.wait(meili, t)
    writes = []
    for seq, n in enumerate(ids, start=1):  # one task per post: internal ids follow arrival order
        raw = _raw(n, t1, "rust coffee", created_at=BASE + seq)
        meili_index.wait(meili, meili.index(uid).add_documents([legacy_documents.document({"raw_json": raw}, t1)]).task_uid)
        writes.append(pg_documents.doc_write_for_event(seq, raw, t1))
    pg_documents.apply(conn, writes)
    for q in ("rust", "coffee", "rust coffee"):
        expected = _meili_ids(meili, t1, q, 10)
        assert _ids(pg_search.search(conn, t1, q, 10)) == expected == ids[:10]
