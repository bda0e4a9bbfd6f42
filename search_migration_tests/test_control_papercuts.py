"""Operator papercuts of issue 16: a dry run reports and succeeds; a rollback from live returns to the
shadow rate the migration had before live."""

from __future__ import annotations

from search_migration import db
from search_migration.cutover import flags, stages

from .support.cutover import run_job, stage_flags


def test_a_dry_run_with_gates_missing_succeeds_and_says_it_would_refuse(dagster_env, seeded):
    instance = dagster_env
    with db.connect(seeded) as conn:
        flags.set_flags(conn, stages.BASE_FLAGS["dual"], by="test", reason="test: at dual")
    before = stage_flags(seeded)
    dry = run_job(instance, "cutover_job", target_stage="shadow", dry_run=True)  # no report was ever made
    assert dry.success
    said = [e.message for e in instance.all_logs(dry.run_id) if "DRY RUN: would refuse" in (e.message or "")]
    assert said and all(g in said[0] for g in ("backfill_complete", "catchup_lag", "drift_zero")), said
    assert stage_flags(seeded) == before
    forward = run_job(instance, "cutover_job", target_stage="shadow")  # the real move still refuses
    assert not forward.success and stage_flags(seeded) == before


def test_a_rollback_from_live_without_a_rate_returns_to_the_rate_before_live(dagster_env, seeded):
    instance = dagster_env
    with db.connect(seeded) as conn:
        for rate in ("5", "25", "50"):
            flags.set_flags(conn, {**stages.BASE_FLAGS["shadow"], "shadow_sample_rate": rate}, by="test",
                            reason="test: the ramp", stage_from="shadow", stage_to="shadow")
        flags.set_flags(conn, {**stages.BASE_FLAGS["live"], "shadow_sample_rate": "0"}, by="test",
                        reason="test: live", stage_from="shadow", stage_to="live")
    back = run_job(instance, "rollback_job", target_stage="shadow")
    assert back.success
    assert stage_flags(seeded)["shadow_sample_rate"] == "50"
    assert any("back to 50%" in (e.message or "") for e in instance.all_logs(back.run_id))
