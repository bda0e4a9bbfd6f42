"""cutover_job and rollback_job: the flag flips, gated by the latest asset-check results across runs."""

from typing import Optional

import dagster as dg

from search_migration.cutover import moves
from search_migration.cutover import flags
from search_migration.cutover import stages
from search_migration.gate_history import latest_gates
from search_migration.gates import policy
from .resources import MeiliResource, PostgresResource
from .ui import OWNERS, runbook, tags

class CutoverConfig(dg.Config):
    target_stage: str
    shadow_rate: Optional[int] = None
    by: str
    reason: str
    dry_run: bool = False


def _move(context: dg.OpExecutionContext, config: CutoverConfig, postgres: PostgresResource, meili: MeiliResource,
          rollback_only: bool) -> None:
    with postgres.connect() as conn:
        current_flags, rate = flags.read_all(conn), config.shadow_rate
        if config.target_stage == "shadow" and rate is None and stages.current(current_flags) in ("live", "complete"):
            rate = moves.shadow_rate_before_live(conn)
            if rate is not None:
                context.log.info(f"shadow_rate not given: back to {rate}%, the rate the migration had before live")
        try:
            move = stages.plan(current_flags, config.target_stage, rate)
        except stages.StageError as exc:
            raise dg.Failure(str(exc), allow_retries=False) from None
        if rollback_only != move.rollback:
            job, other = ("rollback_job", "cutover_job") if rollback_only else ("cutover_job", "rollback_job")
            raise dg.Failure(f"{job} does not do this: {move.describe()}; use {other}", allow_retries=False)
        gate_policy = policy.load()
        context.log.info(f"gate policy {gate_policy.id}")
        gates = {**latest_gates(context.instance, move.gates),
                 **moves.engine_gates(conn, postgres.database_url, gate_policy)}
        problems = moves.blockers(move, gates, gate_policy)
        context.log.info(("DRY RUN: " if config.dry_run else "") + move.describe())
        for name in move.gates:
            gate = gates.get(name)
            context.log.info(f"gate {name}: " + ("never evaluated" if gate is None else
                                                 f"{'pass' if gate.passed else 'FAIL'} ({gate.detail})"))
        if config.dry_run:  # a dry run reports the move and every gate; it fails nothing
            verdict = ("would refuse: " + "; ".join(problems)) if problems else f"would {move.describe()}"
            context.log.info(f"DRY RUN: {verdict}")
            return
        if problems:
            raise dg.Failure(f"cutover to {config.target_stage} refused: " + "; ".join(problems),
                             metadata={"blockers": "\n".join(problems)}, allow_retries=False)
        try:
            changed = moves.execute(conn, move, by=config.by, reason=config.reason, gates=gates,
                                      meili=meili.client())
        except (moves.CutoverRefused, flags.FlagError) as exc:
            raise dg.Failure(str(exc), allow_retries=False) from None
    context.log.info("flags changed: " + (", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items()) or "none"))


@dg.op(description="Move one step forward when every gate of the move passed recently; dry_run changes nothing.")
def cutover_op(context: dg.OpExecutionContext, config: CutoverConfig, postgres: PostgresResource,
               meili: MeiliResource) -> None:
    _move(context, config, postgres, meili, rollback_only=False)


@dg.op(description="Move back to any earlier stage in one step (from complete: reverse catch-up first).")
def rollback_op(context: dg.OpExecutionContext, config: CutoverConfig, postgres: PostgresResource,
                meili: MeiliResource) -> None:
    _move(context, config, postgres, meili, rollback_only=True)


@dg.job(owners=OWNERS, tags=tags("any", "cutover"), metadata=runbook("runbook-cutover"),
        description="Move the migration ONE stage forward (legacy -> dual -> shadow 5/25/50 -> live -> complete). "
                    "Refuses, changing nothing, unless every gate of the move passed recently under the gate policy: "
                    "materialize search_drift_report and shadow_read_report first. Try dry_run: true. "
                    "Config: target_stage, shadow_rate, by, reason.")
def cutover_job():
    cutover_op()


@dg.job(owners=OWNERS, tags=tags("any", "rollback"), metadata=runbook("runbook-rollback"),
        description="The emergency exit: back to any earlier stage in one run, no gates. From live, reads return "
                    "to Meilisearch at once; from complete, Meilisearch is caught up first. "
                    "Config: target_stage (e.g. shadow), by, reason.")
def rollback_job():
    rollback_op()
