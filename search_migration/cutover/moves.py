"""Move the migration between stages: forward only through passing, fresh gates; back at any time.

The decision takes gate results from outside (Dagster's latest asset-check evaluations, across
runs) plus the two gates the database answers itself (schema migrated, live soak). Flag changes
and their audit rows land in one transaction. Rolling back from `complete` first replays the
outbox into Meilisearch from where `complete` began, and only then sends reads back to it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from dataclasses import asdict, dataclass

import meilisearch
import psycopg

from search_migration.cutover import flags
from search_migration.schema import migrate
from search_migration.write_path import consumer
from search_migration.source import contract
from search_migration.cutover import stages
from search_migration.cutover.stages import Move
from search_migration.gates.policy import Policy

ENGINE_GATES = ("schema_migrated", "live_soak")  # answered by the database, under the cutover's own policy



class CutoverRefused(Exception):
    """A gate the move needs is missing, failing or stale; the message lists every reason."""


@dataclass(frozen=True)
class GateStatus:
    name: str
    passed: bool
    evaluated_at: dt.datetime | None
    detail: str
    policy: str | None = None  # the gate policy it was evaluated under (gates/policy.Policy.id)

    def age_s(self, now: dt.datetime) -> float | None:
        return (now - self.evaluated_at).total_seconds() if self.evaluated_at else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def engine_gates(conn: psycopg.Connection, database_url: str, gate_policy: Policy) -> dict[str, GateStatus]:
    """The gates the database answers itself, under the policy the cutover runs with."""
    now, soak_hours = _now(), gate_policy["soak_hours"]
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
                                      "all migrations applied" if not pending else f"pending: {', '.join(pending)}",
                                      gate_policy.id),
        "live_soak": GateStatus("live_soak", soaked, now,
                                "never live without a rollback since" if live_since is None else
                                f"live since {live_since.isoformat(timespec='seconds')}, soak {soak_hours:g}h",
                                gate_policy.id),
    }


def blockers(move: Move, gates: dict[str, GateStatus | None], gate_policy: Policy) -> list[str]:
    """Every reason the move may not happen now (empty: it may): a gate never evaluated, failing, stale,
    or evaluated under another policy than this one (a lowered threshold cannot open a cutover)."""
    now, max_age_s = _now(), gate_policy["max_gate_age_minutes"] * 60
    reasons = []
    for name in move.gates:
        gate = gates.get(name)
        if gate is None or gate.evaluated_at is None:
            reasons.append(f"{name}: never evaluated")
        elif not gate.passed:
            reasons.append(f"{name}: failed ({gate.detail})")
        elif gate.policy is not None and gate.policy != gate_policy.id:
            reasons.append(f"{name}: evaluated under gate policy {gate.policy}, not the current {gate_policy.id}")
        elif gate.policy is None and name not in ENGINE_GATES:
            reasons.append(f"{name}: evaluated under no recorded gate policy; materialize its report again")
        elif gate.age_s(now) > max_age_s:
            reasons.append(f"{name}: stale (evaluated {gate.age_s(now):.0f}s ago, max {max_age_s:.0f}s)")
    return reasons


def shadow_rate_before_live(conn: psycopg.Connection) -> int | None:
    """The shadow rate the migration last had in `shadow` (what a rollback from live returns to)."""
    row = conn.execute("SELECT new_value FROM cn_search.runtime_flag_audit WHERE flag_name = 'shadow_sample_rate' "
                       "AND stage_to = 'shadow' ORDER BY audit_id DESC LIMIT 1").fetchone()
    return int(row[0]) if row and row[0].isdigit() and int(row[0]) in stages.SHADOW_RAMP else None


def evidence(move: Move, gates: dict[str, GateStatus | None]) -> dict:
    return {"move": move.describe(), "gates": {
        name: ({**asdict(g), "evaluated_at": g.evaluated_at.isoformat() if g.evaluated_at else None} if g else None)
        for name, g in gates.items() if name in move.gates}}


# One control move (cutover or rollback) at a time, across processes: a session advisory lock.
CONTROL_LOCK = int.from_bytes(hashlib.sha256(b"search_migration.cutover.moves").digest()[:8], "big", signed=True)


BUSY_WAIT_S = 30.0  # how long a rollback waits for a running catch-up to let go of the consumer


class MoveConflict(CutoverRefused):
    """Another control move runs, or won since this one was planned; the message names it."""


def _last_move(conn: psycopg.Connection, outcome: str) -> str:
    row = conn.execute("SELECT description, moved_by, started_at FROM cn_search.control_moves WHERE outcome = %s "
                       "ORDER BY move_id DESC LIMIT 1", (outcome,)).fetchone()
    return f"{row[0]} (by {row[1]} at {row[2].isoformat(timespec='seconds')})" if row else "a hand-set flag"


def _record(conn: psycopg.Connection, move: Move, by: str, reason: str, outcome: str, detail: str = "") -> int:
    return conn.execute(
        "INSERT INTO cn_search.control_moves (moved_by, reason, stage_from, stage_to, description, outcome, detail, "
        "finished_at) VALUES (%s, %s, %s, %s, %s, %s, %s, CASE WHEN %s = 'running' THEN NULL ELSE now() END) "
        "RETURNING move_id",
        (by, reason, move.source, move.target, move.describe(), outcome, detail or None, outcome)).fetchone()[0]


def _finish(conn: psycopg.Connection, move_id: int, outcome: str, detail: str = "") -> None:
    conn.execute("UPDATE cn_search.control_moves SET outcome = %s, detail = %s, finished_at = now() WHERE move_id = %s",
                 (outcome, detail or None, move_id))


def bring_meili_current(conn: psycopg.Connection, meili: meilisearch.Client, *, by: str, reason: str,
                        stage: str, busy_wait_s: float = BUSY_WAIT_S) -> int:
    """Before reads go back to Meilisearch it must hold every row: decided from its own offset, not from
    the stage the flags spell (an interrupted rollback leaves flags that look like `live`). Writes go
    dual again if they were not, and Meilisearch replays what it missed; returns its offset."""
    head = contract.outbox_head(conn)
    if not flags.write_mode(conn).meili:
        flags.set_flags(conn, {"search_write_mode": "dual"}, by=by, reason=f"{reason} (reverse catch-up)",
                        stage_from=stage, stage_to=stage, evidence={"phase": "reverse catch-up"})
    meili_at = consumer.side_offsets(conn, contract.CONSUMER, ["meili"])["meili"]
    if meili_at >= head:
        return meili_at
    deadline = time.monotonic() + busy_wait_s
    while True:  # the write path's own runs and a product transaction still committing are short: wait, bounded
        left = max(0.1, deadline - time.monotonic())
        try:
            result = consumer.catch_up(conn, meili, to_seq=head, lock_wait_s=left)
        except consumer.ConsumerBusy as exc:
            raise CutoverRefused(f"{exc} (waited {busy_wait_s:g}s): Meilisearch cannot be brought current now; "
                                 "reads stay on PostgreSQL, nothing flipped: run the rollback again once it "
                                 "finishes") from None
        meili_at = consumer.side_offsets(conn, contract.CONSUMER, ["meili"])["meili"]
        if meili_at >= head:
            break
        if result.stalled or time.monotonic() >= deadline:
            why = "; ".join(result.stalled.values()) or f"waiting on outbox seq {result.waiting_on_gap}"
            raise CutoverRefused(f"Meilisearch reached seq {meili_at} of {head} ({why}); reads stay on PostgreSQL, "
                                 "writes are dual: run the rollback again")
        time.sleep(0.2)  # a lower seq still committing: a bounded retry interval, not a synchronisation
    return meili_at


def execute(conn: psycopg.Connection, move: Move, *, by: str, reason: str, gates: dict[str, GateStatus | None],
            meili: meilisearch.Client | None = None) -> dict:
    """Apply the move's flag changes with audit; returns {flag: (old, new)}.

    One control move at a time: a second one refuses, naming the first; a move planned from flags that
    changed since (another move won) refuses, naming the winner. A move that sends reads back to
    Meilisearch first brings it current. The product's Meilisearch indexes are never reconfigured by a
    move: their settings are the product's."""
    if not conn.execute("SELECT pg_try_advisory_lock(%s)", (CONTROL_LOCK,)).fetchone()[0]:
        running = _last_move(conn, "running")
        _record(conn, move, by, reason, "refused", f"another control move is running: {running}")
        raise MoveConflict(f"another control move is running: {running}; nothing changed")
    move_id = None
    try:
        now = stages.current(flags.read_all(conn))
        if now != move.source:
            winner = _last_move(conn, "applied")
            _record(conn, move, by, reason, "refused", f"the stage is {now} since {winner}")
            raise MoveConflict(f"the stage is {now}, not {move.source}, since {winner}; nothing changed")
        move_id = _record(conn, move, by, reason, "running")
        target = stages.BASE_FLAGS[move.target]
        reads_back = target["search_read_backend"] == "meili" and flags.get(conn, "search_read_backend") == "pg"
        writes_back = target["search_write_mode"] != "pg_only" and not flags.write_mode(conn).meili
        if move.rollback and (reads_back or writes_back):  # Meilisearch serves again: current first
            if meili is None:
                raise ValueError("sending reads back to Meilisearch needs Meilisearch for the reverse catch-up")
            bring_meili_current(conn, meili, by=by, reason=reason, stage=move.source)
            current_flags = flags.read_all(conn)
            wanted = {**stages.BASE_FLAGS[move.target], **move.changes}
            move = stages.Move(move.source, move.target,
                               {k: v for k, v in wanted.items() if current_flags.get(k) != v}, (), True)
        changed = flags.set_flags(conn, move.changes, by=by, reason=reason, stage_from=move.source,
                                  stage_to=move.target, evidence=evidence(move, gates))
        _finish(conn, move_id, "applied")
        return changed
    except Exception as exc:
        if move_id is not None:
            _finish(conn, move_id, "refused" if isinstance(exc, CutoverRefused) else "failed", str(exc)[:500])
        raise
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (CONTROL_LOCK,))
