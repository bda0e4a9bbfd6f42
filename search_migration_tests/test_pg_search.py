"""PostgreSQL search against a real server: filters, Meilisearch-like ranking, pagination, suggest."""

from __future__ import annotations

import random

import pytest

from search_migration import db
from search_migration.local import demo_seed
from search_migration.write_path import meili_index
from search_migration.search import meili_search
from search_migration.write_path import pg_documents
from search_migration.search import pg_search
from search_migration.write_path.pg_documents import DocWrite
from search_migration.gates.measures import overlap_at_10

T1, T2 = "t-ramen", "t-tech"


def _post(n: int) -> str:
    return f"{n:064x}"


def _write(url, docs):
    """docs: (n, topic, content[, deleted]) with seq = n."""
    with db.connect(url) as conn:
        pg_documents.apply(conn, [DocWrite(seq, _post(n), topic, len(rest) > 0 and rest[0], content, 1_700_000_000 + n)
                                  for seq, (n, topic, content, *rest) in enumerate(docs, start=1)])


def _ids(page):
    return [int(i["event_id"], 16) for i in page.items]


@pytest.fixture
def conn(migrated_url):
    with db.connect(migrated_url) as c:
        yield c


def test_multi_topic_rows_deleted_private_and_old_normalizer_rows(migrated_url, conn):
    _write(migrated_url, [(1, T1, "東京でラーメン"), (1, T2, "東京でラーメン"), (2, T2, "ラーメン食べたい"),
                          (3, T1, "ラーメン屋"), (4, T1, "ラーメン好き", True), (5, T1, "ラーメンの写真"),
                          (6, T1, "ラーメンまつり")])
    conn.execute("UPDATE cn_search.post_search_documents SET visibility = 'private' WHERE post_id = %s", (_post(5),))
    conn.execute("UPDATE cn_search.post_search_documents SET normalizer_version = 1 WHERE post_id = %s", (_post(6),))
    t1 = pg_search.search(conn, T1, "ラーメン")
    assert sorted(_ids(t1)) == [1, 3] and t1.total == 2  # no tombstone, no private row, no stale tokens
    t2 = pg_search.search(conn, T2, "ラーメン")
    assert sorted(_ids(t2)) == [1, 2] and {i["topic_id"] for i in t2.items} == {T2}
    assert pg_search.search(conn, "t-none", "ラーメン").items == []


def test_words_bucket_then_proximity_position_exactness_and_post_id(migrated_url, conn):
    _write(migrated_url, [
        (10, T1, "rust tokyo meetup"),  # adjacent, in query order
        (11, T1, "tokyo rust"),  # adjacent, reversed
        (12, T1, "tokyo"),  # no `rust`
        (13, T1, "meetup rust"),  # no `tokyo`
        (14, T1, "new photo then rust and tokyo"),
        (15, T1, "rust is far from the city of tokyo"),
    ])
    # all words first, by proximity; then strategy `last` drops `tokyo`, never `rust`
    assert _ids(pg_search.search(conn, T1, "rust tokyo")) == [10, 11, 14, 15, 13]
    assert _ids(pg_search.search(conn, T1, "tokyo rust")) == [11, 10, 14, 15, 12]
    _write(migrated_url, [(20, T2, "coffee"), (21, T2, "coffee time"), (22, T2, "good coffee"),
                          (23, T2, "coffeehouse"), (24, T2, "the morning coffee"), (25, T2, "coffee")])
    # exact whole content first (post-id order among equals), then starts-with, then by word position
    assert _ids(pg_search.search(conn, T2, "coffee")) == [20, 25, 21, 23, 22, 24]


def test_last_word_is_a_prefix_and_cjk_queries_of_any_length(migrated_url, conn):
    _write(migrated_url, [(1, T1, "rustacean meetup"), (2, T1, "rust"), (3, T1, "猫がかわいい"),
                          (4, T1, "黒猫"), (5, T1, "#ラーメン 最高"), (6, T1, "ラーメン")])
    assert _ids(pg_search.search(conn, T1, "rus")) == [1, 2]  # both only start with it: post-id order
    assert _ids(pg_search.search(conn, T1, "rust")) == [2, 1]  # the whole content matches exactly
    assert _ids(pg_search.search(conn, T1, "rust meetup")) == [2]  # `rust` not last: no prefix; `meetup` dropped
    assert sorted(_ids(pg_search.search(conn, T1, "猫"))) == [3, 4]  # one character: bigram start or final unigram
    assert _ids(pg_search.search(conn, T1, "かわい")) == [3]
    # a tag is searched as its word, as Meilisearch's tokenizer does: the tagged post and the plain one
    assert sorted(_ids(pg_search.search(conn, T1, "#ラーメン"))) == [5, 6]
    assert sorted(_ids(pg_search.search(conn, T1, "ラーメン"))) == [5, 6]  # the word finds both


def test_pagination_cursor_and_total(migrated_url, conn):
    _write(migrated_url, [(n, T1, f"photo number {n}" if n % 3 else f"my photo {n}") for n in range(1, 46)])
    first = pg_search.search(conn, T1, "photo", limit=20)
    assert first.total == 45 and len(first.items) == 20 and first.next_offset == 20
    second = pg_search.search(conn, T1, "photo", limit=20, offset=first.next_offset)
    third = pg_search.search(conn, T1, "photo", limit=20, offset=second.next_offset)
    assert len(third.items) == 5 and third.next_offset is None
    seen = _ids(first) + _ids(second) + _ids(third)
    assert sorted(seen) == list(range(1, 46))  # every document exactly once
    assert _ids(first)[:3] == [1, 2, 4]  # `photo` first in the content ranks before `my photo`


def test_suggest_is_a_prefix_search_across_topics_one_item_per_post(migrated_url, conn):
    _write(migrated_url, [(1, T1, "ramen tonight"), (1, T2, "ramen tonight"), (2, T2, "rampart"),
                          (3, T1, "ラーメン食べたい"), (4, T2, "cold soba")])
    items = pg_search.suggest(conn, "ram", limit=5)
    assert [int(i["event_id"], 16) for i in items] == [1, 2]
    assert items[0]["text"] == "ramen tonight"
    assert [int(i["event_id"], 16) for i in pg_search.suggest(conn, "ラ")] == [3]
    assert pg_search.suggest(conn, "   🍜 ") == []


def _load_documents(url):
    """The seeded source into post_search_documents, through the real writer."""
    with db.connect(url) as conn:
        rows = conn.execute(demo_seed.LIVE_ROWS_SQL).fetchall()
        pg_documents.apply(conn, [DocWrite(1, e, t, False, c, ts) for e, t, c, ts in rows])
        conn.execute("ANALYZE cn_search.post_search_documents")


def test_top_10_agrees_with_meilisearch_on_a_seeded_corpus(migrated_url, meili, index_uid):
    with db.connect(migrated_url) as conn:
        demo_seed.seed(conn, meili, index_uid, posts=4_000, topics=4, seed=5)
    _load_documents(migrated_url)
    queries = ["ラーメン", "東京", "猫", "カメラ", "コーヒー 猫", "東京 写真", "rust", "python release",
               "coffee", "tokyo photo", "sea", "ram", "検索", "データ"]
    overlaps = []
    with db.connect(migrated_url) as conn:
        for topic in ("t0000-ramen", "t0001-tech"):
            for q in queries:
                pg = pg_search.search(conn, topic, q, limit=10)
                ms = meili_search.search(meili, index_uid, topic, q, limit=10)
                overlaps.append((topic, q) and overlap_at_10([i["event_id"] for i in pg.items], [i["event_id"] for i in ms.items]))
    assert sum(overlaps) / len(overlaps) >= 0.9, list(zip(queries * 2, overlaps))


def test_equal_documents_indexed_live_in_any_order_rank_the_same_in_both(migrated_url, conn, meili, index_uid):
    """Posts indexed one by one as they arrive: Meilisearch's tie-break is the index setting, not arrival."""
    arrivals = list(range(1, 41))
    random.Random(7).shuffle(arrivals)
    meili_index.ensure_index(meili, index_uid)
    for n in arrivals:  # one task per post: internal ids follow arrival order
        meili_index.wait(meili, meili.index(index_uid).add_documents(
            [meili_index.document(_post(n), T1, "rust coffee", 1_700_000_000)]).task_uid)
    _write(migrated_url, [(n, T1, "rust coffee") for n in arrivals])
    for q in ("rust", "coffee", "rust coffee"):
        expected = [int(i["event_id"], 16) for i in meili_search.search(meili, index_uid, T1, q, limit=10).items]
        assert _ids(pg_search.search(conn, T1, q, 10)) == expected == list(range(1, 11))
