"""The migration's stages (DESIGN.md's stage table) as flag values, and which moves are allowed.

The flags are the truth; the stage is read back from them, so a flag set by hand is never hidden
behind a stale "current stage" record.
"""

from __future__ import annotations

from dataclasses import dataclass

STAGES = ("legacy", "dual", "shadow", "live", "complete")
SHADOW_RAMP = (5, 25, 50)

BASE_FLAGS = {
    "legacy": {"search_write_mode": "meili_only", "search_read_backend": "meili", "suggest_read_backend": "meili",
               "shadow_sample_rate": "0"},
    "dual": {"search_write_mode": "dual", "search_read_backend": "meili", "suggest_read_backend": "meili",
             "shadow_sample_rate": "0"},
    "shadow": {"search_write_mode": "dual", "search_read_backend": "meili", "suggest_read_backend": "meili"},
    "live": {"search_write_mode": "dual", "search_read_backend": "pg", "suggest_read_backend": "pg"},
    "complete": {"search_write_mode": "pg_only", "search_read_backend": "pg", "suggest_read_backend": "pg",
                 "shadow_sample_rate": "0"},
}

# The gates each forward move needs (asset check names); DESIGN.md, "gate to enter".
INTEGRITY_GATES = ("backfill_complete", "catchup_lag", "drift_zero")
QUALITY_GATES = ("overlap_at_10", "ndcg_at_10", "search_p95", "suggest_p95", "error_rate", "shadow_sample_size")
GATES_TO_ENTER = {
    "dual": ("schema_migrated",),
    "shadow": INTEGRITY_GATES,
    "live": INTEGRITY_GATES + QUALITY_GATES + ("index_freshness_p95",),
    "complete": INTEGRITY_GATES + QUALITY_GATES + ("index_freshness_p95", "live_soak"),
}


class StageError(ValueError):
    """A move the stage table does not allow; the message is one printable line."""


def current(flags: dict[str, str]) -> str:
    mode = flags.get("search_write_mode")
    if mode == "meili_only":
        return "legacy"
    if mode == "pg_only":
        return "complete"
    if flags.get("search_read_backend") == "pg":
        return "live"
    return "shadow" if int(flags.get("shadow_sample_rate", "0") or 0) > 0 else "dual"


@dataclass(frozen=True)
class Move:
    source: str
    target: str
    changes: dict[str, str]  # only the flags that differ
    gates: tuple[str, ...]  # empty for rollbacks: going back is always allowed
    rollback: bool

    def describe(self) -> str:
        flips = ", ".join(f"{k}={v}" for k, v in sorted(self.changes.items())) or "no flag changes"
        kind = "rollback" if self.rollback else "cutover"
        gates = f"; gates: {', '.join(self.gates)}" if self.gates else ""
        return f"{kind} {self.source} -> {self.target}: {flips}{gates}"


def _position(stage: str, rate: int) -> int:
    """Where a stage sits on the one-way path legacy, dual, shadow 5/25/50, live, complete."""
    path = ["legacy", "dual", *(f"shadow@{r}" for r in SHADOW_RAMP), "live", "complete"]
    if stage == "shadow":  # a hand-set rate counts as the ramp step at or below it
        return path.index(f"shadow@{max((r for r in SHADOW_RAMP if r <= rate), default=SHADOW_RAMP[0])}")
    return path.index(stage)


def plan(flags: dict[str, str], target: str, shadow_rate: int | None = None) -> Move:
    """The flag changes from the current flags to `target`: one step forward, or any step back."""
    if target not in STAGES:
        raise StageError(f"unknown stage {target!r}; stages: {', '.join(STAGES)}")
    source = current(flags)
    current_rate = int(flags.get("shadow_sample_rate", "0") or 0)
    wanted = dict(BASE_FLAGS[target])
    if target == "shadow":
        rate = SHADOW_RAMP[0] if shadow_rate is None else shadow_rate
        if rate not in SHADOW_RAMP:
            raise StageError(f"shadow rate must be one of {', '.join(map(str, SHADOW_RAMP))}, got {rate}")
    elif target == "live":
        rate = 0 if shadow_rate is None else shadow_rate
        if not 0 <= rate <= 100:
            raise StageError(f"the shadow rate in live must be 0-100, got {rate}")
    else:
        if shadow_rate not in (None, 0):
            raise StageError(f"stage {target} has no shadow reads; leave the shadow rate unset")
        rate = 0
    wanted["shadow_sample_rate"] = str(rate)
    step = _position(target, rate) - _position(source, current_rate)
    changes = {k: v for k, v in wanted.items() if flags.get(k) != v}
    if step == 0 and not changes:
        raise StageError(f"already at {target}" + (f" with shadow rate {rate}" if target in ("shadow", "live") else ""))
    if step > 1:
        raise StageError(f"cutover moves one step at a time (legacy, dual, shadow 5/25/50, live, complete); "
                         f"{source} -> {target}{f' at {rate}' if target == 'shadow' else ''} is {step} steps")
    if step < 0:
        return Move(source, target, changes, (), True)
    gates = GATES_TO_ENTER[target] if target != "shadow" or source != "shadow" else INTEGRITY_GATES + QUALITY_GATES
    return Move(source, target, changes, gates if step == 1 else (), False)
