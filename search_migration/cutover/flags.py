"""Runtime flags in `cn_search.runtime_flags`: validated on write, refused loudly when unknown on read.

Every change appends to `cn_search.runtime_flag_audit` in the same transaction (who, when, why,
from, to, and any gate evidence), so the flag table and its history can never disagree.
"""

from __future__ import annotations

import json
import re
from enum import Enum

import psycopg

from search_migration.source.contract import CONSUMER


class FlagError(ValueError):
    """An unknown flag, an invalid value, or a missing who/why; the message is one printable line."""


class WriteMode(str, Enum):
    MEILI_ONLY = "meili_only"
    DUAL = "dual"
    PG_ONLY = "pg_only"

    @property
    def meili(self) -> bool:
        return self in (WriteMode.MEILI_ONLY, WriteMode.DUAL)

    @property
    def pg(self) -> bool:
        return self in (WriteMode.DUAL, WriteMode.PG_ONLY)


def _shown(value: str) -> str:
    """A refused value as echoed back: short enough for one line."""
    return repr(value[:40]) + ("..." if len(value) > 40 else "")


def _percent(name: str, value: str) -> str:
    if not re.fullmatch(r"[0-9]{1,3}", value) or int(value) > 100:  # not isdigit(): "²" and 5,000 digits crash int()
        raise FlagError(f"{name} must be an integer from 0 to 100, got {_shown(value)}")
    return str(int(value))


def _one_of(*allowed: str):
    def check(name: str, value: str) -> str:
        if value not in allowed:
            raise FlagError(f"{name} must be one of {', '.join(allowed)}; got {_shown(value)}")
        return value
    return check


VALIDATORS = {
    "search_read_backend": _one_of("meili", "pg"),
    "suggest_read_backend": _one_of("meili", "pg"),
    "search_write_mode": _one_of(*(m.value for m in WriteMode)),
    "shadow_sample_rate": _percent,
}


def validate(name: str, value: str) -> str:
    if name not in VALIDATORS:
        raise FlagError(f"unknown flag {_shown(name)}; known flags: {', '.join(sorted(VALIDATORS))}")
    return VALIDATORS[name](name, value.strip())


def read_all(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT flag_name, flag_value FROM cn_search.runtime_flags").fetchall())


def show(conn: psycopg.Connection) -> list[tuple[str, str, str, str]]:
    """(name, value, updated_at, updated_by) for every flag, by name."""
    return [(n, v, at.isoformat(timespec="seconds"), by) for n, v, at, by in conn.execute(
        "SELECT flag_name, flag_value, updated_at, updated_by FROM cn_search.runtime_flags ORDER BY flag_name")]


def get(conn: psycopg.Connection, name: str) -> str:
    row = conn.execute("SELECT flag_value FROM cn_search.runtime_flags WHERE flag_name = %s", (name,)).fetchone()
    if row is None:
        raise FlagError(f"flag {name!r} is missing from cn_search.runtime_flags; run `search-migration db migrate`")
    try:
        return validate(name, row[0])
    except FlagError as exc:
        raise FlagError(f"refusing to guess: cn_search.runtime_flags holds an invalid value: {exc}") from None


def write_mode(conn: psycopg.Connection) -> WriteMode:
    return WriteMode(get(conn, "search_write_mode"))


def set_flags(conn: psycopg.Connection, changes: dict[str, str], *, by: str, reason: str,
              stage_from: str | None = None, stage_to: str | None = None, evidence: dict | None = None) -> dict:
    """Set several flags atomically with one audit row each; return {name: (old, new)} for real changes."""
    if not by or not by.strip():
        raise FlagError("--by is required: who is making this change")
    if not reason or not reason.strip():
        raise FlagError("--reason is required: why this change is made")
    validated = {name: validate(name, value) for name, value in changes.items()}
    changed = {}
    with conn.transaction():
        for name, value in validated.items():
            old = conn.execute("SELECT flag_value FROM cn_search.runtime_flags WHERE flag_name = %s FOR UPDATE",
                               (name,)).fetchone()
            if old is not None and old[0] == value:
                continue
            conn.execute(
                "INSERT INTO cn_search.runtime_flags (flag_name, flag_value, updated_at, updated_by) "
                "VALUES (%s, %s, now(), %s) ON CONFLICT (flag_name) DO UPDATE "
                "SET flag_value = EXCLUDED.flag_value, updated_at = now(), updated_by = EXCLUDED.updated_by",
                (name, value, by))
            conn.execute(
                "INSERT INTO cn_search.runtime_flag_audit "
                "(flag_name, old_value, new_value, changed_by, reason, stage_from, stage_to, evidence) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (name, old[0] if old else None, value, by, reason, stage_from, stage_to,
                 json.dumps(evidence) if evidence is not None else None))
            changed[name] = (old[0] if old else None, value)
            if name == "search_write_mode" and old is not None:
                _pin_leaving_engines(conn, WriteMode(old[0]) if old[0] in WriteMode._value2member_map_ else None)
    return changed


def _pin_leaving_engines(conn: psycopg.Connection, old: WriteMode | None) -> None:
    """An engine the new mode stops writing keeps the offset it had, so re-entering it later (a
    rollback from pg_only) replays exactly what it missed; one that never had its own offset
    gets the consumer's current one."""
    if old is None:
        return
    for side in [s for s in ("meili", "pg") if getattr(old, s)]:
        conn.execute(
            "INSERT INTO cn_search.consumer_side_offsets (consumer, backend, last_seq) "
            "SELECT consumer, %s, last_seq FROM cn_relay.consumer_offsets WHERE consumer = %s "
            "ON CONFLICT (consumer, backend) DO NOTHING", (side, CONSUMER))
