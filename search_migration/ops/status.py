"""`search-migration status`: one report of where the migration stands, made of named sections.

Each section is a function of a connection returning a JSON-able dict; add one with `@section(name)`.
A section that fails reports its error instead of hiding the others.
"""

from __future__ import annotations

from typing import Callable

import psycopg

from search_migration import backfill
from search_migration.cutover import flags
from search_migration.ops import counters
from search_migration.source import contract
from search_migration.cutover import stages
from search_migration.errors import first_line
from search_migration.write_path import freshness, handover

Section = Callable[[psycopg.Connection], dict]
SECTIONS: dict[str, Section] = {}


def section(name: str) -> Callable[[Section], Section]:
    def register(fn: Section) -> Section:
        SECTIONS[name] = fn
        return fn
    return register


@section("stage")
def _stage(conn: psycopg.Connection) -> dict:
    values = flags.read_all(conn)
    last = conn.execute("SELECT changed_at, changed_by, stage_from, stage_to FROM cn_search.runtime_flag_audit "
                        "WHERE stage_to IS NOT NULL ORDER BY audit_id DESC LIMIT 1").fetchone()
    return {"stage": stages.current(values), **values,
            "last_move": f"{last[2]} -> {last[3]} by {last[1]} at {last[0].isoformat(timespec='seconds')}"
            if last else None}


@section("handover")
def _handover(conn: psycopg.Connection) -> dict:
    done = handover.latest(conn)
    if done is None:
        return {"adopted": False, "next": f"stop {contract.PRODUCT_INDEXER}, then `search-migration adopt "
                                          f"--from-consumer {contract.PRODUCT_INDEXER} --by WHO --reason WHY`"}
    moved = handover.indexer_moved(conn)
    return {"adopted": True, "from": done.from_consumer, "at_seq": done.offset, "by": done.handed_by,
            "product_indexer_moved": moved,
            **({"warning": f"{done.from_consumer} moved {moved} rows after the handover: the product's indexer "
                           "is still running beside the write path; stop it"} if moved else {})}


@section("outbox")
def _outbox(conn: psycopg.Connection) -> dict:
    head, offset = contract.outbox_head(conn), contract.consumer_offset(conn, contract.CONSUMER)
    return {"head_seq": head, "consumer_offset": offset, "lag": head - offset}


@section("write_path")
def _write_path(conn: psycopg.Connection) -> dict:
    sides = dict(conn.execute("SELECT backend, last_seq FROM cn_search.consumer_side_offsets WHERE consumer = %s",
                              (contract.CONSUMER,)).fetchall())
    stalls = [f"{b} at seq {s}: {e[:120]}" for b, s, e in conn.execute(
        "SELECT backend, seq, error FROM cn_search.side_write_failures WHERE consumer = %s", (contract.CONSUMER,))]
    return {"meili_offset": sides.get("meili"), "pg_offset": sides.get("pg"), "stalled": stalls or None,
            "errors_total": counters.total(conn, counters.DUAL_WRITE_ERRORS),
            "retries_total": counters.total(conn, counters.DUAL_WRITE_RETRIES)}


@section("freshness")
def _freshness(conn: psycopg.Connection) -> dict:
    """Commit -> applied per engine over the last hour, and the tail run holding the write path."""
    out = {f"{b}_{k}": v for b, s in freshness.summary(conn).items() for k, v in s.as_dict().items()}
    run = conn.execute("SELECT run_id, state, extract(epoch FROM now() - heartbeat_at)::int, rows_applied "
                       "FROM cn_search.tail_runs WHERE ended_at IS NULL ORDER BY started_at DESC LIMIT 1").fetchone()
    out["tail"] = (f"run {run[0][:8]} {run[1]}, heartbeat {run[2]}s ago, {run[3]} rows applied" if run
                   else "no tail run alive (see README: The tail run)")
    return out or {"rows": 0}


@section("dead_letters")
def _dead_letters(conn: psycopg.Connection) -> dict:
    rows = conn.execute("SELECT backend || '/' || reason_class, count(*) FROM cn_search.dead_letters "
                        "WHERE resolved_at IS NULL GROUP BY 1 ORDER BY 1").fetchall()
    return {"open": sum(n for _, n in rows), **dict(rows)}


@section("backfill")
def _backfill(conn: psycopg.Connection) -> dict:
    return backfill.progress(conn).as_dict()


def failed_sections(report: dict[str, dict]) -> list[str]:
    """Sections that could not be computed (status then exits non-zero)."""
    return [name for name, data in report.items() if isinstance(data, dict) and "error" in data]


def compute(conn: psycopg.Connection) -> dict[str, dict]:
    report = {}
    for name, fn in SECTIONS.items():
        try:
            report[name] = fn(conn)
        except psycopg.Error as exc:
            report[name] = {"error": f"{type(exc).__name__}: {first_line(exc, 200)}"}
    return report


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown (no progress in the last minute)"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def render(report: dict[str, dict]) -> list[str]:
    """Human lines: known sections get a summary, others print their fields."""
    lines = []
    for name, data in report.items():
        if "error" in data:
            lines.append(f"{name}: error: {data['error']}")
        elif name == "backfill":
            if data["high_watermark"] is None:
                lines.append("backfill: not started (no high watermark captured)")
                continue
            pct = f" ({data['percent_done']}%)" if data["percent_done"] is not None else ""
            parts = ", ".join(f"{k} {v}" for k, v in sorted(data["partitions"].items())) or "none yet"
            lines.append(f"backfill: {data['rows_done']}/{data['rows_total']} rows{pct} at high watermark "
                         f"{data['high_watermark']}; partitions: {parts}; {data['rows_per_second']} rows/s; "
                         f"ETA {_duration(data['eta_seconds'])}")
        elif name == "stage":
            rest = ", ".join(f"{k} {v}" for k, v in data.items() if k != "stage")
            lines.append(f"stage: {data['stage']} ({rest})")
        elif name == "gates":
            lines.append("gates:")
            lines.extend(f"  {gate:<20} {result}" for gate, result in data.items())
        else:
            lines.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in data.items()))
    return lines
