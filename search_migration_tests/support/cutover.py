"""Cutover and rollback jobs and the gates' checks, run in-process on a test instance; shadow traffic."""

from __future__ import annotations

import json

import dagster as dg

from search_migration import db
from search_migration.cutover import flags
from search_migration.definitions import defs
from search_migration.search import read_router
from search_migration.search.read_router import ReadRouter

from .writes import topic

QUERIES = ["ラーメン", "東京", "rust", "coffee", "カメラ", "検索", "写真", "release", "猫", "python"]

# Latency gates measure this machine, not the code, and a soak takes a day: tests run under a deployment
# policy that lifts them (their logic is tested in test_gates). It is a policy file, as a deployment's
# would be: every check records it, and the cutover in the same environment reads the same one.
# test posts carry a fixed past commit time (support.writes.NOW): their commit -> applied is days, not seconds
TEST_POLICY = {"search_p95_ms": 1e9, "suggest_p95_ms": 1e9, "soak_hours": 0, "index_freshness_p95_s": 1e9}


def use_policy(monkeypatch, tmp_path, **values) -> str:
    """Make `values` (over the defaults) this process's gate policy; returns the file."""
    path = tmp_path / "gate_policy.json"
    path.write_text(json.dumps(values))
    monkeypatch.setenv("SEARCH_MIGRATION_GATE_POLICY", str(path))
    return str(path)


def run_job(instance, name: str, **config) -> dg.ExecuteInProcessResult:
    """cutover_job or rollback_job with this op config (by/reason default to oncall/test); failures returned."""
    op = {"cutover_job": "cutover_op", "rollback_job": "rollback_op"}[name]
    config.setdefault("by", "oncall")
    config.setdefault("reason", "test")
    return defs.resolve_job_def(name).execute_in_process(
        instance=instance, run_config={"ops": {op: {"config": config}}}, raise_on_error=False)


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(e.step_failure_data.error.message for e in result.all_events if e.is_step_failure)


def evaluations(instance, *names: str) -> list[dg.AssetCheckEvaluation]:
    """Materialize reports in their own run; return their check evaluations."""
    assets = [a for a in defs.assets if getattr(a, "key", None) and a.key.to_user_string() in names]
    result = dg.materialize(assets, instance=instance, resources=defs.resources, raise_on_error=False)
    return [e.asset_check_evaluation_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]


def check_results(instance, *names: str) -> dict[str, bool]:
    """Materialize the reports; {check name: passed} of their checks."""
    return {c.check_name: c.passed for c in evaluations(instance, *names)}


def shadow_traffic(url: str, meili, rate: int, n: int = 40, topic_id: str | None = None,
                   queries: list[str] = QUERIES) -> None:
    """Requests whose (viewer, query) the router samples at this rate, searches (in the corpus's first topic
    by default) and suggests."""
    picked = [(f"viewer-{i}", q) for i in range(5_000) for q in queries if read_router.sample_bucket(f"viewer-{i}", q)
              < rate][:n]
    if topic_id is None:
        with db.connect(url) as conn:
            topic_id = topic(conn)
    with ReadRouter(url, meili) as router:
        for viewer, q in picked:
            router.search(topic_id, q, viewer=viewer)
            router.suggest(q[:2], viewer=viewer)
        router.drain()


def stage_flags(url: str) -> dict[str, str]:
    with db.connect(url) as conn:
        return flags.read_all(conn)
