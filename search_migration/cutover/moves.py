"""Move the migration between stages: forward only through passing, fresh gates; back at any time.

The decision takes gate results from outside (Dagster's latest asset-check evaluations, across
runs) plus the two gates the database answers itself (schema migrated, live soak). Flag changes
and their audit rows land in one transaction. Rolling back from `complete` first replays the
outbox into Meilisearch from where `complete` began, and only then sends reads back to it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

import meilisearch
import psycopg

from search_migration.cutover import flags
from search_migration.schema import migrate
from search_migration.write_path import consumer
from search_migration.source import contract
from search_migration.cutover import stages
from search_migration.cutover.stages import Move



class CutoverRefused(Exception):
    """A gate the move needs is missing, failing or stale; the message lists every reason."""


@dataclass(frozen=True)
class GateStatus:
    name: str
    passed: bool
    evaluated_at: dt.datetime | None
    detail: str

    def age_s(self, now: dt.datetime) -> float | None:
        return (now - self.evaluated_at).total_seconds() if self.evaluated_at else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def engine_gates(conn: psycopg.Connection, database_url: str, soak_hours: float) -> dict[str, GateStatus]:
    now = _now()
    pending = migrate.pending(database_url)
    live_since = conn.execute("""
        SELECT max(changed_at) FROM cn_search.runtime_flag_audit
        WHERE stage_to = 'live' AND stage_from IS DISTINCT FROM 'live'
          AND changed_at > coalesce((SELECT max(changed_at) FROM cn_search.runtime_flag_audit
                                     WHERE stage_from IN ('live', 'complete')
                                       AND stage_to IN ('legacy', 'dual', 'shadow')), '-infinity')
    """).fetchone()[0]
    soaked = live_since is not None and (now - live_since).total_seconds() >= soak_hours * 3600
    return {
        "schema_migrated": GateStatus("schema_migrated", not pending, now,
                                      "all migrations applied" if not pending else f"pending: {', '.join(pending)}"),
        "live_soak": GateStatus("live_soak", soaked, now,
                                "never live without a rollback since" if live_since is None else
                                f"live since {live_since.isoformat(timespec='seconds')}, soak {soak_hours}h"),
    }


def blockers(move: Move, gates: dict[str, GateStatus | None], max_age_s: float) -> list[str]:
    """Every reason the move may not happen now (empty: it may)."""
    now = _now()
    reasons = []
    for name in move.gates:
        gate = gates.get(name)
        if gate is None or gate.evaluated_at is None:
            reasons.append(f"{name}: never evaluated")
        elif not gate.passed:
            reasons.append(f"{name}: failed ({gate.detail})")
        elif gate.age_s(now) > max_age_s:
            reasons.append(f"{name}: stale (evaluated {gate.age_s(now):.0f}s ago, max {max_age_s:.0f}s)")
    return reasons


def evidence(move: Move, gates: dict[str, GateStatus | None]) -> dict:
    return {"move": move.describe(), "gates": {
        name: ({**asdict(g), "evaluated_at": g.evaluated_at.isoformat() if g.evaluated_at else None} if g else None)
        for name, g in gates.items() if name in move.gates}}


def reverse_catch_up(conn: psycopg.Connection, meili: meilisearch.Client, *, by: str,
                     reason: str) -> int:
    """Writes go dual again and Meilisearch replays what it missed in `complete`; returns its offset."""
    flags.set_flags(conn, {"search_write_mode": "dual"}, by=by, reason=f"{reason} (reverse catch-up)",
                    stage_from="complete", stage_to="complete", evidence={"phase": "reverse catch-up"})
    target = contract.outbox_head(conn)
    result = consumer.catch_up(conn, meili, to_seq=target)
    if result.stalled or result.end_offset < target:
        raise CutoverRefused(f"reverse catch-up stopped at seq {result.end_offset} of {target} "
                             f"({'; '.join(result.stalled.values()) or 'waiting on a sequence gap'}); "
                             "reads stay on PostgreSQL, writes are dual: run rollback again")
    return result.end_offset


def execute(conn: psycopg.Connection, move: Move, *, by: str, reason: str, gates: dict[str, GateStatus | None],
            meili: meilisearch.Client | None = None) -> dict:
    """Apply the move's flag changes with audit; returns {flag: (old, new)}. The product's Meilisearch
    indexes are never reconfigured by a move: their settings are the product's."""
    if move.rollback and move.source == "complete":
        if meili is None:
            raise ValueError("rolling back from complete needs Meilisearch for the reverse catch-up")
        reverse_catch_up(conn, meili, by=by, reason=reason)
        current_flags = flags.read_all(conn)
        wanted = {**stages.BASE_FLAGS[move.target], **move.changes}
        move = stages.Move("complete", move.target, {k: v for k, v in wanted.items() if current_flags.get(k) != v}, (), True)
    return flags.set_flags(conn, move.changes, by=by, reason=reason, stage_from=move.source,
                           stage_to=move.target, evidence=evidence(move, gates))
