"""The read router against real engines: routing by flags, deterministic shadow sampling, shadow logs,
and a secondary (or primary) Meilisearch that is really down."""

from __future__ import annotations

import psycopg
import pytest

from search_migration.write_path import meili_index
from search_migration.local import services
from search_migration.search.read_router import (BadRequest, ReadRouter, SearchUnavailable, _digest, decode_cursor,
                                          encode_cursor, sample_bucket)

from search_migration import db

from .support.writes import seed_indexed, topic


def _set_flags(url, **flags):
    with psycopg.connect(url, autocommit=True) as conn:
        for name, value in flags.items():
            conn.execute("UPDATE cn_search.runtime_flags SET flag_value = %s WHERE flag_name = %s", (str(value), name))


def _logs(url):
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT endpoint, topic_id, viewer_hash, query_hash, primary_backend, primary_ids, secondary_ids, "
            "overlap_at_10, primary_latency_ms, secondary_latency_ms, secondary_error "
            "FROM cn_search.shadow_read_logs ORDER BY log_id").fetchall()


@pytest.fixture
def seeded(database_url, meili, namespace):
    """The demo corpus in the product's per-topic indexes and in PostgreSQL's documents."""
    seed_indexed(database_url, meili, namespace, posts=1_500, topics=3, seed=3)
    return database_url


@pytest.fixture
def TOPIC(seeded):
    """The corpus's first topic: where the tests search."""
    with db.connect(seeded) as conn:
        return topic(conn)


def test_routes_by_flags_or_override_and_both_engines_answer_alike(seeded, meili, TOPIC):
    with ReadRouter(seeded, meili) as router:
        legacy = router.search(TOPIC, "ラーメン", limit=10)
        assert legacy["backend"] == "meili" and legacy["topic"] == TOPIC and legacy["query"] == "ラーメン"
        _set_flags(seeded, search_read_backend="pg", suggest_read_backend="pg")
        new = router.search(TOPIC, "ラーメン", limit=10)
        assert new["backend"] == "pg"
        assert {i["topic_id"] for i in new["items"]} == {TOPIC} and len(new["items"]) == 10
        overlap = {i["event_id"] for i in new["items"]} & {i["event_id"] for i in legacy["items"]}
        assert len(overlap) >= 8
        assert router.search(TOPIC, "ラーメン", backend="meili")["backend"] == "meili"
        assert router.suggest("rame", backend="pg")["backend"] == "pg"
        assert router.suggest("rame")["backend"] == "pg"
        with pytest.raises(BadRequest):
            router.search(TOPIC, "x", backend="elastic")


def test_cursor_pages_through_every_result_once(seeded, meili, TOPIC):
    with ReadRouter(seeded, meili) as router:
        for backend in ("pg", "meili"):
            seen, cursor, pages = [], None, 0
            while True:
                page = router.search(TOPIC, "東京", limit=25, cursor=cursor, backend=backend)
                seen += [i["event_id"] for i in page["items"]]
                pages += 1
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert len(seen) == len(set(seen)) == page["total"] and pages > 1, backend
    assert decode_cursor(encode_cursor(40)) == 40
    with pytest.raises(BadRequest):
        decode_cursor("not-a-cursor")


def test_sampling_is_deterministic_per_viewer_and_query():
    assert sample_bucket("alice", "ラーメン") == sample_bucket("alice", "ﾗｰﾒﾝ")
    assert sample_bucket("alice", "Tokyo  Ramen") == sample_bucket("alice", "tokyo ramen")  # normalized query
    buckets = {sample_bucket(f"viewer-{i}", "ramen") for i in range(400)}
    assert len(buckets) > 80 and all(0 <= b < 100 for b in buckets)


def test_rate_0_logs_nothing_rate_100_logs_one_row_per_request(seeded, meili, TOPIC):
    with ReadRouter(seeded, meili) as router:
        router.search(TOPIC, "ラーメン", viewer="alice")
        router.drain()
        assert _logs(seeded) == []
        _set_flags(seeded, shadow_sample_rate=100)
        first = router.search(TOPIC, "ラーメン", viewer="alice")
        router.suggest("ラー", viewer="alice")
        router.search(TOPIC, "ラーメン", viewer="bob")
        router.drain()
    rows = _logs(seeded)  # written by the shadow workers as each finishes: any order
    assert sorted(r[0] for r in rows) == ["search", "search", "suggest"]
    alice, bob = _digest("viewer", "alice"), _digest("viewer", "bob")
    by = {(r[0], r[2]): r for r in rows}
    assert set(by) == {("search", alice), ("suggest", alice), ("search", bob)}
    endpoint, topic, viewer_hash, query_hash, primary, p_ids, s_ids, overlap, p_ms, s_ms, error = by["search", alice]
    assert (topic, primary, error) == (TOPIC, "meili", None)
    assert p_ids == [i["event_id"] for i in first["items"]] and len(s_ids) == len(p_ids) == 20
    assert 0.8 <= overlap <= 1.0 and p_ms > 0 and s_ms > 0
    assert len(viewer_hash) == 64 and "alice" not in viewer_hash
    assert by["search", bob][3] == query_hash  # another viewer, the same query
    assert by["suggest", alice][1] is None  # suggest spans topics


def test_a_sample_rate_between_logs_exactly_the_sampled_viewers(seeded, meili, TOPIC):
    _set_flags(seeded, shadow_sample_rate=30)
    viewers = [f"viewer-{i}" for i in range(30)]
    expected = [v for v in viewers if sample_bucket(v, "東京") < 30]
    with ReadRouter(seeded, meili) as router:
        for v in viewers:
            router.search(TOPIC, "東京", limit=5, viewer=v)
        router.drain()
        first = len(_logs(seeded))
        for v in viewers:  # the same requests again: the same ones are sampled
            router.search(TOPIC, "東京", limit=5, viewer=v)
        router.drain()
    assert 0 < first == len(expected) < len(viewers)
    assert len(_logs(seeded)) == 2 * first


def test_a_dead_secondary_never_fails_the_primary(servers, seeded, own_meili, TOPIC):
    own = meili_index.client(own_meili.meili_url, own_meili.meili_master_key, timeout=5)
    _set_flags(seeded, search_read_backend="pg", suggest_read_backend="pg", shadow_sample_rate=100)
    services.down(own_meili)  # the legacy engine is really gone
    with ReadRouter(seeded, own) as router:
        result = router.search(TOPIC, "ラーメン", viewer="carol")
        suggestions = router.suggest("ラー", viewer="carol")
        router.drain()
    assert result["backend"] == "pg" and len(result["items"]) == 20
    assert suggestions["backend"] == "pg" and suggestions["items"]
    rows = _logs(seeded)
    assert len(rows) == 2
    for row in rows:
        assert row[4] == "pg" and row[6] is None and row[7] is None and row[9] is None
        assert "unreachable" in row[10]


def test_meilisearch_down_as_primary_is_one_clear_error(servers, seeded, own_meili, TOPIC):
    own = meili_index.client(own_meili.meili_url, own_meili.meili_master_key, timeout=5)
    services.down(own_meili)
    with ReadRouter(seeded, own) as router:
        with pytest.raises(SearchUnavailable, match="^search unavailable: Meilisearch at .* is unreachable$"):
            router.search(TOPIC, "ラーメン")
        with pytest.raises(SearchUnavailable):
            router.suggest("ラー")
        # PostgreSQL reads keep working while Meilisearch is down
        assert router.search(TOPIC, "ラーメン", backend="pg")["items"]


def test_the_read_path_loads_its_dictionaries_at_start_not_on_a_users_first_query(servers, migrated_url):
    """A fresh process: the router's construction loads the Japanese and Chinese dictionaries (about a
    second), so the first shadow-measured query is not a one-second outlier in the latency gates."""
    import subprocess
    import sys

    script = ("import sys\n"
              "from search_migration.search import segment\n"
              "from search_migration.search.read_router import ReadRouter\n"
              "from search_migration.write_path import meili_index\n"
              "assert segment._lindera.cache_info().currsize == 0\n"
              "with ReadRouter(sys.argv[1], meili_index.client(sys.argv[2], sys.argv[3])):\n"
              "    loaded = [f.cache_info().currsize for f in (segment._lindera, segment._jieba, segment._kvariants)]\n"
              "print(loaded)\n")
    out = subprocess.run([sys.executable, "-c", script, migrated_url, servers.meili_url, servers.meili_key or ""],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[1, 1, 1]"
