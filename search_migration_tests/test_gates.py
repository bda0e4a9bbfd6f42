"""Gate arithmetic on fixed reports: thresholds, strictness, and never passing on nothing."""

from __future__ import annotations

from search_migration.gates import policy
from search_migration.backfill import Progress
from search_migration.gates.drift import DriftReport, TopicDrift
from search_migration.gates.shadow_report import ShadowReport


def report(samples: int = 100, **kw) -> ShadowReport:
    base = dict(window_hours=24, shadow_samples={"search": samples, "suggest": samples}, compared_samples=samples,
                golden_queries=35,
                overlap_median=0.95, overlap_p10=0.8, ndcg_at_10=0.97, error_rate=0.0,
                zero_result_rate={"pg": 0.0, "meili": 0.0},
                latency_ms={"search/pg": {"p95": 40.0}, "suggest/pg": {"p95": 15.0}}, expected_sample_rate=5)
    return ShadowReport(**{**base, **kw})


DONE = Progress(9, "now", 100, 100, {"succeeded": 3}, 0.0, 0.0)


def by_name(results):
    return {g.name: g for g in results}


def test_a_good_report_passes_every_quality_gate():
    assert all(g.passed for g in policy.quality(report()))


def test_each_threshold_fails_its_own_gate():
    slow = by_name(policy.quality(report(latency_ms={"search/pg": {"p95": 181.0}, "suggest/pg": {"p95": 80.0}})))
    assert not slow["search_p95"].passed and slow["suggest_p95"].passed  # at most 80: 80 passes
    worse = by_name(policy.quality(report(overlap_median=0.69, ndcg_at_10=0.9, error_rate=0.01)))
    assert not worse["overlap_at_10"].passed and worse["ndcg_at_10"].passed  # at least 0.90: 0.90 passes
    assert not worse["error_rate"].passed  # below 1 %: 1 % fails
    custom = by_name(policy.quality(report(overlap_median=0.69), policy.Policy({**policy.DEFAULTS, "overlap_at_10": 0.5})))
    assert custom["overlap_at_10"].passed


def test_too_little_data_never_passes():
    thin = by_name(policy.quality(report(samples=3)))
    assert not thin["shadow_sample_size"].passed
    assert not thin["overlap_at_10"].passed and "insufficient sample" in thin["overlap_at_10"].detail
    empty = by_name(policy.quality(report(samples=0, overlap_median=None, ndcg_at_10=None, error_rate=None,
                                         latency_ms={})))
    assert not any(g.passed for g in empty.values())
    nothing_compared = by_name(policy.integrity(DriftReport(10, 0, False, [TopicDrift("t", 0, 0)]), 0, DONE))
    assert not nothing_compared["drift_zero"].passed and "insufficient sample" in nothing_compared["drift_zero"].detail
    lagging = by_name(policy.integrity(DriftReport(10, 0, True, []), 1000, DONE))
    assert not lagging["drift_zero"].passed and not lagging["catchup_lag"].passed  # < 1,000: 1,000 fails
    assert lagging["backfill_complete"].passed


def test_empty_pairs_are_no_evidence_of_quality():
    """30 real reads of which 10 were empty on both sides: 20 compared, under the 30 the policy needs."""
    thin = by_name(policy.quality(report(samples=30, compared_samples=20, empty_pairs={"shadow": 10, "golden": 35})))
    assert thin["shadow_sample_size"].passed and thin["error_rate"].passed
    for name in ("overlap_at_10", "ndcg_at_10"):
        assert not thin[name].passed
        assert thin[name].detail == "insufficient sample: 20 compared (10 empty on both sides excluded) < 30"


def test_the_error_rate_gate_names_the_engine_it_measures():
    failing = by_name(policy.quality(report(error_rate=0.2, error_rates={"pg": 0.2, "meili": 0.0})))["error_rate"]
    assert not failing.passed and failing.detail == "PostgreSQL error rate 0.2 >= 0.01"


def test_backfill_is_complete_only_at_its_watermark():
    clean = DriftReport(10, 0, False, [TopicDrift("t", 5, 5, sampled=5)])
    assert not by_name(policy.integrity(clean, 0, Progress(None, None, 0, 0, {}, 0.0, None)))["backfill_complete"].passed
    half = by_name(policy.integrity(clean, 0, Progress(9, "now", 100, 50, {}, 1.0, 50.0)))["backfill_complete"]
    assert not half.passed and half.detail == "50/100 rows at watermark 9"
    assert by_name(policy.integrity(clean, 0, DONE))["backfill_complete"].passed


def test_index_freshness_gate_reads_the_worst_engine_and_the_row_still_waiting():
    from search_migration.write_path.freshness import Summary

    t = policy.Policy({**policy.DEFAULTS})
    fresh = {"pg": Summary("pg", 500, 0.3, 0.9, 1.4), "meili": Summary("meili", 500, 0.5, 1.8, 3.0)}
    ok = policy.freshness(fresh, None, t)
    assert ok.passed and ok.value == 1.8 and ok.threshold == 2.0
    late = policy.freshness({**fresh, "meili": Summary("meili", 500, 0.9, 2.5, 9.0)}, 0.2, t)
    assert not late.passed and late.value == 2.5 and "Meilisearch 2.50s" in late.detail
    # fresh P95 but a row waiting past the bound: the write path stopped since (a tail run not running)
    stuck = policy.freshness(fresh, 45.0, t)
    assert not stuck.passed and stuck.value == 45.0 and "waits for 45s" in stuck.detail
    # nothing applied in the window: the waiting row decides; a quiet hour passes, saying so
    assert not policy.freshness({}, 30.0, t).passed
    assert policy.freshness({}, 0.5, t).passed
    quiet = policy.freshness({}, None, t)
    assert quiet.passed and quiet.value == 0.0 and "nothing was late" in quiet.detail
