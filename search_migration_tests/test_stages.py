"""The stage table: flags per stage, one step forward with its gates, any step back without."""

import pytest

from search_migration.cutover import stages
from search_migration.cutover.stages import BASE_FLAGS, StageError, current, plan


def flags_at(stage: str, rate: int = 0) -> dict[str, str]:
    return {"shadow_sample_rate": str(rate), **BASE_FLAGS[stage]}


def test_the_whole_forward_path_one_step_at_a_time():
    f = flags_at("legacy")
    path = [("dual", None), ("shadow", 5), ("shadow", 25), ("shadow", 50), ("live", None), ("complete", None)]
    seen = []
    for target, rate in path:
        move = plan(f, target, rate)
        assert not move.rollback and move.gates
        f.update(move.changes)
        seen.append((current(f), f["shadow_sample_rate"]))
    assert seen == [("dual", "0"), ("shadow", "5"), ("shadow", "25"), ("shadow", "50"), ("live", "0"),
                    ("complete", "0")]
    assert f == BASE_FLAGS["complete"]


def test_ramp_steps_need_quality_gates_and_entering_shadow_needs_integrity():
    assert plan(flags_at("dual"), "shadow").gates == stages.INTEGRITY_GATES
    ramp = plan(flags_at("shadow", 5), "shadow", 25)
    assert set(stages.QUALITY_GATES) <= set(ramp.gates)


@pytest.mark.parametrize("source,rate,target,target_rate", [
    ("legacy", 0, "shadow", None), ("dual", 0, "live", None), ("shadow", 5, "shadow", 50),
    ("shadow", 25, "live", None), ("dual", 0, "complete", None)])
def test_skipping_a_step_is_refused(source, rate, target, target_rate):
    with pytest.raises(StageError, match="one step at a time"):
        plan(flags_at(source, rate), target, target_rate)


def test_rollback_to_any_earlier_stage_needs_no_gate():
    move = plan(flags_at("complete"), "shadow", 5)
    assert move.rollback and move.gates == ()
    assert move.changes == {"search_write_mode": "dual", "search_read_backend": "meili",
                            "suggest_read_backend": "meili", "shadow_sample_rate": "5"}
    assert plan(flags_at("live"), "legacy").changes["search_write_mode"] == "meili_only"


def test_bad_targets_are_one_clear_error():
    with pytest.raises(StageError, match="unknown stage 'production'"):
        plan(flags_at("dual"), "production")
    with pytest.raises(StageError, match="shadow rate must be one of 5, 25, 50"):
        plan(flags_at("dual"), "shadow", 7)
    with pytest.raises(StageError, match="already at dual"):
        plan(flags_at("dual"), "dual")
