"""`search-migration status`: one report of where the migration stands, made of named sections.

Each section is a function of a connection returning a JSON-able dict; add one with `@section(name)`.
A section that fails reports its error instead of hiding the others.
"""

from __future__ import annotations

from typing import Callable

import psycopg

from . import backfill, source

Section = Callable[[psycopg.Connection], dict]
SECTIONS: dict[str, Section] = {}


def section(name: str) -> Callable[[Section], Section]:
    def register(fn: Section) -> Section:
        SECTIONS[name] = fn
        return fn
    return register


@section("outbox")
def _outbox(conn: psycopg.Connection) -> dict:
    head, offset = source.outbox_head(conn), source.consumer_offset(conn, source.CONSUMER)
    return {"head_seq": head, "consumer_offset": offset, "lag": head - offset}


@section("backfill")
def _backfill(conn: psycopg.Connection) -> dict:
    return backfill.progress(conn).as_dict()


def compute(conn: psycopg.Connection) -> dict[str, dict]:
    report = {}
    for name, fn in SECTIONS.items():
        try:
            report[name] = fn(conn)
        except psycopg.Error as exc:
            report[name] = {"error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"}
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
        else:
            lines.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in data.items()))
    return lines
