"""Gates and cutover through real Dagster runs on one instance: checks are read across runs."""

from __future__ import annotations

from search_migration import db
from search_migration.write_path import meili_index
from search_migration.write_path import consumer
from search_migration.source import contract

from .support.backfill import backfill_all
from .support.cutover import check_results, failure_message, run_job, shadow_traffic, stage_flags
from .support.writes import TOPIC, meili_ids, new_posts


def to_shadow(instance, url: str) -> None:
    assert run_job(instance, "cutover_job", target_stage="dual").success
    backfill_all(url)
    assert all(check_results(instance, "search_drift_report").values())
    assert run_job(instance, "cutover_job", target_stage="shadow", shadow_rate=5).success


def test_legacy_to_live_to_complete_and_back(dagster_env, seeded, meili, index_uid):
    instance = dagster_env
    refused = run_job(instance, "cutover_job", target_stage="live")
    assert not refused.success and "one step at a time" in failure_message(refused)
    to_shadow(instance, seeded)
    for rate in (25, 50):
        shadow_traffic(seeded, meili, index_uid, int(stage_flags(seeded)["shadow_sample_rate"]))
        checks = check_results(instance, "shadow_read_report", "search_drift_report")
        assert all(checks.values()), checks
        assert run_job(instance, "cutover_job", target_stage="shadow", shadow_rate=rate).success
    assert run_job(instance, "cutover_job", target_stage="live").success
    assert stage_flags(seeded)["search_read_backend"] == "pg"

    # live -> complete (soak 0 here), then writes in pg_only never reach Meilisearch...
    check_results(instance, "shadow_read_report", "search_drift_report")
    assert run_job(instance, "cutover_job", target_stage="complete", soak_hours=0).success
    assert stage_flags(seeded)["search_write_mode"] == "pg_only"
    with db.connect(seeded) as conn:
        fresh = new_posts(conn, 25, "written-in-complete")
        assert consumer.catch_up(conn, meili, index_uid).end_offset == contract.outbox_head(conn)
    fresh_ids = {meili_index.doc_id(e, TOPIC) for e, _ in fresh}
    assert not fresh_ids & meili_ids(meili, index_uid)

    # ...until the rollback replays them, before reads go back to Meilisearch.
    back = run_job(instance, "rollback_job", target_stage="shadow", shadow_rate=5)
    assert back.success, failure_message(back)
    assert fresh_ids <= meili_ids(meili, index_uid)
    assert stage_flags(seeded) == {"search_write_mode": "dual", "search_read_backend": "meili",
                                   "suggest_read_backend": "meili", "shadow_sample_rate": "5"}
    with db.connect(seeded) as conn:
        audit = conn.execute("SELECT flag_name, new_value, stage_from, stage_to, changed_by, evidence IS NOT NULL "
                             "FROM cn_search.runtime_flag_audit ORDER BY audit_id").fetchall()
    assert ("search_write_mode", "dual", "complete", "complete", "oncall", True) in audit  # reverse catch-up first
    flip = audit.index(("search_read_backend", "meili", "complete", "shadow", "oncall", True))
    assert flip > audit.index(("search_write_mode", "dual", "complete", "complete", "oncall", True))
    assert ("search_read_backend", "pg", "shadow", "live", "oncall", True) in audit


def test_degraded_postgres_fails_drift_and_overlap_and_cutover_changes_nothing(dagster_env, seeded, meili,
                                                                               index_uid):
    instance = dagster_env
    to_shadow(instance, seeded)
    with db.connect(seeded) as conn:
        conn.execute("DELETE FROM cn_search.post_search_documents WHERE topic_id = %s", (TOPIC,))
    shadow_traffic(seeded, meili, index_uid, 5)  # readers of the degraded topic
    checks = check_results(instance, "search_drift_report", "shadow_read_report")
    assert checks["drift_zero"] is False and checks["overlap_at_10"] is False
    assert checks["catchup_lag"] is True and checks["shadow_sample_size"] is True
    before = stage_flags(seeded)
    refused = run_job(instance, "cutover_job", target_stage="shadow", shadow_rate=25)
    message = failure_message(refused)
    assert not refused.success and "drift_zero: failed" in message and "overlap_at_10: failed" in message
    assert stage_flags(seeded) == before


def test_empty_shadow_logs_fail_for_insufficient_sample(dagster_env, seeded):
    instance = dagster_env
    to_shadow(instance, seeded)
    checks = check_results(instance, "shadow_read_report")
    assert checks["shadow_sample_size"] is False and checks["overlap_at_10"] is False
    before = stage_flags(seeded)
    refused = run_job(instance, "cutover_job", target_stage="shadow", shadow_rate=25)
    message = failure_message(refused)
    assert not refused.success and "insufficient sample" in message
    assert stage_flags(seeded) == before
    wrong_way = run_job(instance, "cutover_job", target_stage="dual", dry_run=True)
    assert not wrong_way.success and "use rollback_job" in failure_message(wrong_way)
    rolled = run_job(instance, "rollback_job", target_stage="dual", dry_run=True)
    assert rolled.success and stage_flags(seeded) == before
