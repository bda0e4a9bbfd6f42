"""The versioned document writer: newer wins, tombstones stay, replays change nothing."""

from __future__ import annotations

from search_migration import db
from search_migration.write_path import pg_documents
from search_migration.write_path.pg_documents import DocWrite
from search_migration.search.text import NORMALIZER_VERSION

POST = "a" * 64


def _rows(url):
    with db.connect(url) as conn:
        return conn.execute(
            "SELECT post_id, topic_id, content, source_seq, is_deleted, normalizer_version, "
            "search_tokens::text FROM cn_search.post_search_documents ORDER BY topic_id").fetchall()


def test_versioned_writes_never_regress_or_resurrect(migrated_url):
    with db.connect(migrated_url) as conn:
        assert pg_documents.apply(conn, [
            DocWrite(10, POST, "t1", False, "東京でラーメン", 1_700_000_000),
            DocWrite(11, POST, "t2", False, "東京でラーメン", 1_700_000_000),
        ]) == 2
        # a delete for one topic touches only that row
        assert pg_documents.apply(conn, [DocWrite(20, POST, "t1", True)]) == 1
        # an older upsert (a replay, a slow backfill page) neither resurrects nor regresses
        assert pg_documents.apply(conn, [DocWrite(12, POST, "t1", False, "old text", 1_700_000_000),
                                         DocWrite(5, POST, "t2", False, "older text", 1_700_000_000)]) == 0
    rows = _rows(migrated_url)
    assert [(r[1], r[3], r[4]) for r in rows] == [("t1", 20, True), ("t2", 11, False)]
    assert rows[0][2] == "" and rows[0][6] == ""  # a tombstone keeps no words
    assert rows[1][5] == NORMALIZER_VERSION and "'東京'" in rows[1][6] and "'らあめん'" in rows[1][6]  # Meilisearch's words


def test_applying_a_range_twice_gives_identical_state(migrated_url):
    writes = [DocWrite(s, f"{s:064x}", f"t{s % 3}", s % 7 == 0, f"post {s} café", 1_700_000_000 + s)
              for s in range(1, 200)]
    writes.append(DocWrite(300, f"{7:064x}", "t1", False, "back again", 1_700_000_007))
    with db.connect(migrated_url) as conn:
        pg_documents.apply(conn, writes)
        first = _rows(migrated_url)
        assert pg_documents.apply(conn, writes) == 0
        assert pg_documents.apply(conn, list(reversed(writes))) == 0
    assert _rows(migrated_url) == first


def test_one_batch_with_two_writes_for_one_row_keeps_the_newest(migrated_url):
    with db.connect(migrated_url) as conn:
        pg_documents.apply(conn, [DocWrite(2, POST, "t1", True), DocWrite(1, POST, "t1", False, "x", 1)])
    assert [(r[3], r[4]) for r in _rows(migrated_url)] == [(2, True)]


def test_same_version_is_rewritten_only_under_a_newer_normalizer(migrated_url):
    with db.connect(migrated_url) as conn:
        pg_documents.apply(conn, [DocWrite(7, POST, "t1", False, "東京", 1)])
        assert pg_documents.apply(conn, [DocWrite(7, POST, "t1", False, "東京", 1)]) == 0
        conn.execute("UPDATE cn_search.post_search_documents SET normalizer_version = normalizer_version - 1, "
                     "search_tokens = ''")
        assert pg_documents.apply(conn, [DocWrite(7, POST, "t1", False, "東京", 1)]) == 1
    assert _rows(migrated_url)[0][5] == NORMALIZER_VERSION and _rows(migrated_url)[0][6] != ""
