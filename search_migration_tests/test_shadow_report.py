"""The shadow-read report against real engines: samples, golden replay, and the observed sampling rate."""

from __future__ import annotations

import pytest

from search_migration import db
from search_migration.cutover import flags
from search_migration.gates import shadow_report
from search_migration.search.read_router import ReadRouter
from search_migration.gates.shadow_report import GoldenQuery

from .support.writes import topic


def test_report_counts_samples_replays_golden_and_observes_the_rate(seeded, meili):
    with db.connect(seeded) as conn, ReadRouter(seeded, meili) as router:
        TOPIC = topic(conn)
        golden = [GoldenQuery(TOPIC, "ラーメン"), GoldenQuery(TOPIC, "rust")]
        flags.set_flags(conn, {"shadow_sample_rate": "100"}, by="test", reason="every request sampled")
        for i in range(12):
            router.search(TOPIC, ["東京", "coffee", "写真"][i % 3], viewer=f"v{i}")
        full = shadow_report.build(conn, router, golden=golden, expected_sample_rate=100)
        assert full.sample_size == 12 and full.observed_sample_rate == 100.0
        assert full.golden_queries == 2 and [r["query"] for r in full.per_query] == ["ラーメン", "rust"]
        assert full.overlap_median is not None and full.ndcg_at_10 is not None and full.error_rate == 0.0
        assert {"search/pg", "search/meili"} <= set(full.latency_ms)

        flags.set_flags(conn, {"shadow_sample_rate": "0"}, by="test", reason="sampling off")
        for i in range(12):
            router.search(TOPIC, "東京", viewer=f"w{i}")
        half = shadow_report.build(conn, router, golden=[], expected_sample_rate=0)
    assert half.sample_size == 12 and half.observed_sample_rate == 50.0  # 12 sampled of 24 auto requests


def test_the_golden_set_is_the_operators_file_else_the_demos(tmp_path, monkeypatch):
    demo = shadow_report.load_golden()
    assert len(demo) == 35 and all(g.topic.startswith("kukuri:") for g in demo)  # the demo's own topics
    mine = tmp_path / "golden.json"
    mine.write_text('[{"topic": "kukuri:books", "q": "novel", "judgments": {"e1": 3}}]')
    monkeypatch.setenv(shadow_report.GOLDEN_ENV, str(mine))
    assert shadow_report.load_golden() == [GoldenQuery("kukuri:books", "novel", {"e1": 3})]
    monkeypatch.setenv(shadow_report.GOLDEN_ENV, str(tmp_path / "absent.json"))
    with pytest.raises(shadow_report.GoldenQueriesMissing, match=r"^golden query set not found: "
                       r"SEARCH_MIGRATION_GOLDEN_QUERIES=.*absent\.json$"):
        shadow_report.load_golden()
    mine.write_text('{"topic": "kukuri:books"}')
    monkeypatch.setenv(shadow_report.GOLDEN_ENV, str(mine))
    with pytest.raises(shadow_report.GoldenQueriesMissing, match="is not a JSON list"):
        shadow_report.load_golden()
