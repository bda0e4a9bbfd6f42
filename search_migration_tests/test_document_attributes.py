"""The product's five searchable attributes reach PostgreSQL's documents through catch-up and the backfill
alike: a `title` tag (not the content's first line) and every `t` tag of the post (not only the topic's
own), as cn-index gives them to Meilisearch (write_path/legacy_documents.document)."""

from __future__ import annotations

import pytest

from search_migration import db
from search_migration.local.product_writer import ProductWriter, build_event, pubkey_of
from search_migration.search import meili_search, pg_search
from search_migration.source import contract
from search_migration.write_path import consumer, handover
from search_migration_tests.support.backfill import backfill_all
from search_migration_tests.support.writes import FAST, NOW, set_mode


def _publish(conn, namespace: str) -> tuple[str, str, str]:
    """A note titled by a tag in two topics: its title word and its second topic's word are nowhere in
    its content."""
    one, two = f"kukuri:{namespace}-one", f"kukuri:{namespace}-quokka"
    event = build_event(pubkey=pubkey_of("test:titled"), topics=[one, two], created_at=NOW,
                        content="今日の作業メモです\nsecond line about builds",
                        tags=[["title", "Zephyrine release notes"]])
    ProductWriter(conn).publish(event, now=NOW)
    return event["id"], one, two


def _found(conn, topic: str, q: str) -> set[str]:
    return {i["event_id"] for i in pg_search.search(conn, topic, q).items}


def _assert_attributes(conn, post: str, one: str, two: str) -> None:
    for topic in (one, two):
        assert post in _found(conn, topic, "zephyrine")  # the title tag's word
        assert post in _found(conn, topic, "quokka")  # the second topic's t tag, in both topics' documents
        assert post in _found(conn, topic, "作業")  # the content still
        assert post in _found(conn, topic, "release notes")
    assert _found(conn, one, "今日の作業メモです") == {post}


@pytest.fixture
def empty_product(migrated_url):
    with db.connect(migrated_url) as conn:
        conn.execute("INSERT INTO cn_relay.consumer_offsets (consumer, last_seq) VALUES ('index-v1', 0)")
    return migrated_url


def test_catch_up_indexes_the_title_tag_and_every_topic_tag(empty_product, meili, namespace):
    with db.connect(empty_product) as conn:
        handover.adopt(conn, from_consumer=contract.PRODUCT_INDEXER, by="test", reason="empty product")
        set_mode(conn, "dual")
        post, one, two = _publish(conn, namespace)
        result = consumer.catch_up(conn, meili, retry=FAST)
        assert not result.stalled
        _assert_attributes(conn, post, one, two)
        # Meilisearch (written by the same catch-up, cn-index's document) finds it by the same words
        for q in ("zephyrine", "quokka"):
            assert post in {i["event_id"] for i in meili_search.search(meili, one, q, 20).items}


def test_backfill_indexes_the_title_tag_and_every_topic_tag(empty_product, namespace):
    with db.connect(empty_product) as conn:
        post, one, two = _publish(conn, namespace)
        conn.execute("UPDATE cn_relay.consumer_offsets SET last_seq = (SELECT max(seq) FROM cn_relay.events_outbox) "
                     "WHERE consumer = 'index-v1'")  # the product indexed it: only the backfill brings it over
        handover.adopt(conn, from_consumer=contract.PRODUCT_INDEXER, by="test", reason="indexed product")
        set_mode(conn, "dual")
    backfill_all(empty_product)
    with db.connect(empty_product) as conn:
        docs = conn.execute("SELECT topic_id FROM cn_search.post_search_documents WHERE post_id = %s AND NOT is_deleted",
                            (post,)).fetchall()
        assert sorted(t for t, in docs) == [one, two]
        _assert_attributes(conn, post, one, two)
