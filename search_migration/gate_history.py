"""The latest result of every gate across runs, read from the Dagster instance.

Blocking asset checks only block within one run, so the cutover job and `status` read the latest
evaluation of each check themselves, whichever run produced it.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from search_migration.cutover.moves import GateStatus
from search_migration.gates.policy import CHECK_ASSET


def latest_gates(instance: dg.DagsterInstance, names: tuple[str, ...]) -> dict[str, GateStatus | None]:
    """The latest evaluation of each named gate's asset check (None: never evaluated)."""
    found: dict[str, GateStatus | None] = {}
    for name in names:
        if name not in CHECK_ASSET:
            continue
        record = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(dg.AssetKey(CHECK_ASSET[name]), name))
        evaluation = record.event.asset_check_evaluation if record and record.event else None
        if evaluation is None:
            found[name] = None
            continue
        recorded = (evaluation.metadata or {}).get("policy")
        found[name] = GateStatus(
            name, bool(evaluation.passed), dt.datetime.fromtimestamp(record.event.timestamp, dt.timezone.utc),
            evaluation.description or "", getattr(recorded, "value", None))
    return found
