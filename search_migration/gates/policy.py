"""The gate policy, as code: thresholds, minimum samples, soak and freshness in one reviewed place.

Each gate is one asset check in Dagster and one line in `status`; the cutover job reads their latest
results. A gate never passes on nothing: a missing measurement is a failure with a reason. The policy
is not run config (anyone launching a run could lower it): it is this module's DEFAULT_POLICY, or a
deployment's file named by SEARCH_MIGRATION_GATE_POLICY (JSON, the same keys), reviewed like code.
Every check records the policy it was evaluated under (`Policy.id`), and the cutover refuses a check
evaluated under any policy other than the one it runs under.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Mapping

DEFAULTS = {
    "overlap_at_10": 0.70,  # median overlap@10, at least
    "ndcg_at_10": 0.90,  # mean NDCG@10, at least
    "search_p95_ms": 180.0,  # PostgreSQL search P95, at most
    "suggest_p95_ms": 80.0,  # PostgreSQL suggest P95, at most
    "error_rate": 0.01,  # below
    "outbox_backlog": 1000,  # below
    "index_freshness_p95_s": 2.0,  # commit -> applied P95 over the last hour, worst engine, at most (DESIGN: 2 s)
    "min_sample": 30,  # shadow-read search samples a quality gate needs
    "soak_hours": 24.0,  # live this long without a rollback before complete
    "max_gate_age_minutes": 60.0,  # a gate older than this is stale for the cutover
}
POLICY_VERSION = 1


class PolicyError(ValueError):
    """The policy file is unreadable or not a policy; the message is one printable line."""


@dataclass(frozen=True)
class Policy:
    values: Mapping[str, float]

    def __getitem__(self, name: str) -> float:
        return self.values[name]

    @property
    def id(self) -> str:
        """Version and digest: two policies with any value different have different ids."""
        digest = hashlib.sha256(json.dumps(dict(sorted(self.values.items()))).encode()).hexdigest()[:12]
        return f"v{POLICY_VERSION}-{digest}"


DEFAULT_POLICY = Policy(DEFAULTS)


def load(env: Mapping[str, str] = os.environ) -> Policy:
    """The deployment's policy: SEARCH_MIGRATION_GATE_POLICY's file, else DEFAULT_POLICY."""
    path = env.get("SEARCH_MIGRATION_GATE_POLICY")
    if not path:
        return DEFAULT_POLICY
    try:
        with open(path) as f:
            given = json.load(f)
    except (OSError, ValueError) as exc:
        raise PolicyError(f"SEARCH_MIGRATION_GATE_POLICY={path}: {type(exc).__name__}") from None
    unknown = sorted(set(given) - set(DEFAULTS))
    if not isinstance(given, dict) or unknown:
        raise PolicyError(f"SEARCH_MIGRATION_GATE_POLICY={path}: unknown keys {unknown}; known: {sorted(DEFAULTS)}")
    return Policy({**DEFAULTS, **{k: float(v) for k, v in given.items()}})


DRIFT_CHECKS = ("drift_zero", "catchup_lag", "backfill_complete", "index_freshness_p95")  # asset checks of search_drift_report
QUALITY_CHECKS = ("shadow_sample_size", "overlap_at_10", "ndcg_at_10", "search_p95", "suggest_p95", "error_rate")
CHECK_ASSET = {**{name: "search_drift_report" for name in DRIFT_CHECKS},
               **{name: "shadow_read_report" for name in QUALITY_CHECKS}}  # gate -> the report it checks


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str


def _at_least(name, value, threshold, what, sample_ok=True, n=0, need=0) -> Gate:
    if not sample_ok:
        return Gate(name, False, value, threshold, f"insufficient sample: {n} < {need}")
    if value is None:
        return Gate(name, False, None, threshold, f"no {what} measured")
    ok = value >= threshold
    return Gate(name, ok, value, threshold, f"{what} {value:.3f} {'>=' if ok else '<'} {threshold}")


def _at_most(name, value, threshold, what, sample_ok=True, n=0, need=0, strict=False) -> Gate:
    if not sample_ok:
        return Gate(name, False, value, threshold, f"insufficient sample: {n} < {need}")
    if value is None:
        return Gate(name, False, None, threshold, f"no {what} measured")
    ok = value < threshold if strict else value <= threshold
    sign = ("<" if strict else "<=") if ok else (">=" if strict else ">")
    return Gate(name, ok, value, threshold, f"{what} {value:g} {sign} {threshold}")


ENGINE_NAMES = {"pg": "PostgreSQL", "meili": "Meilisearch"}


def quality(report, policy: Policy | None = None) -> list[Gate]:
    """Gates on a shadow_report.ShadowReport.

    Overlap and NDCG are measured on real shadow searches both engines answered and that were not empty
    on both sides: they need `min_sample` of those (an empty pair, a golden query or an error is no
    evidence of quality). The error rate is that of the engine that answers users in the stages these
    gates open (PostgreSQL: live, complete), whether it was primary or the shadow when it failed.
    """
    t = policy or load()
    n, need = report.sample_size, int(t["min_sample"])
    enough = n >= need
    compared, empty = report.compared_samples, report.empty_pairs.get("shadow", 0)
    scored_ok = enough and compared >= need
    why = f"{compared} compared ({empty} empty on both sides excluded)" if enough else str(n)
    suggest_n = report.shadow_samples.get("suggest", 0)
    engine = ENGINE_NAMES[report.error_rate_engine]
    return [
        Gate("shadow_sample_size", enough, n, need, f"{n} shadow search samples, need {need}"),
        _at_least("overlap_at_10", report.overlap_median, t["overlap_at_10"], "median overlap@10", scored_ok, why, need),
        _at_least("ndcg_at_10", report.ndcg_at_10, t["ndcg_at_10"], "mean NDCG@10", scored_ok, why, need),
        _at_most("search_p95", report.p95("search"), t["search_p95_ms"], "PostgreSQL search P95 ms", enough, n, need),
        _at_most("suggest_p95", report.p95("suggest"), t["suggest_p95_ms"], "PostgreSQL suggest P95 ms",
                 suggest_n > 0, suggest_n, 1),
        _at_most("error_rate", report.error_rate, t["error_rate"], f"{engine} error rate", enough, n, need,
                 strict=True),
    ]


def integrity(drift_report, backlog: int, progress, policy: Policy | None = None) -> list[Gate]:
    """Gates on drift.DriftReport, the outbox backlog and backfill.Progress (complete to its watermark)."""
    t = policy or load()
    if progress.watermark is None:
        backfill_done, backfill_detail = False, "no high watermark captured yet"
    else:
        backfill_done = progress.rows_total > 0 and progress.rows_done >= progress.rows_total
        backfill_detail = f"{progress.rows_done}/{progress.rows_total} rows at watermark {progress.watermark}"
    sampled = sum(x.sampled for x in drift_report.topics)
    if drift_report.backlog_too_large:
        drift_gate = Gate("drift_zero", False, None, 0, "backlog too large to tell drift from lag")
    elif not sampled:
        drift_gate = Gate("drift_zero", False, None, 0, "insufficient sample: no document compared")
    else:
        bad = [x.topic_id for x in drift_report.drifting_topics]
        drift_gate = Gate("drift_zero", not bad, drift_report.drift, 0,
                          f"{drift_report.drift} differences in {len(bad)} topic(s) of {len(drift_report.topics)}; "
                          f"{sampled} documents compared" + (f"; first: {bad[0]}" if bad else ""))
    return [
        drift_gate,
        _at_most("catchup_lag", backlog, t["outbox_backlog"], "outbox backlog rows", strict=True),
        Gate("backfill_complete", backfill_done, None, None, backfill_detail),
    ]


def freshness(summary: dict, oldest_pending_s: float | None, policy: Policy | None = None) -> Gate:
    """index_freshness_p95 on write_path.freshness summaries ({engine: Summary} over the window) and the
    age of the oldest outbox row not yet applied: the worst engine's P95 at most the threshold, and no
    row waiting longer than that (a stopped tail fails at once, not an hour later).

    With no row applied in the window the pending row decides: one waiting longer than the threshold
    fails; none waiting passes with value 0, saying so. Freshness measures what users waited, and on a
    quiet hour nobody waited; the write path's health is the pending row's age, measured, not assumed."""
    t = policy or load()
    threshold = t["index_freshness_p95_s"]
    waiting = oldest_pending_s is not None and oldest_pending_s > threshold
    pending = f"; a row waits for {oldest_pending_s:.0f}s unapplied" if waiting else ""
    if not summary:
        if oldest_pending_s is None:
            return Gate("index_freshness_p95", True, 0.0, threshold,
                        "no outbox row committed in the window and none waiting: nothing was late")
        return Gate("index_freshness_p95", not waiting, oldest_pending_s, threshold,
                    f"no outbox row applied in the window; the oldest waits {oldest_pending_s:.1f}s "
                    f"({'<=' if not waiting else '>'} {threshold:g}s)")
    worst = max(summary.values(), key=lambda s: s.p95)
    per = ", ".join(f"{ENGINE_NAMES.get(b, b)} {s.p95:.2f}s ({s.rows} rows)" for b, s in sorted(summary.items()))
    ok = worst.p95 <= threshold and not waiting
    detail = f"commit -> applied P95 {per}; worst {worst.p95:.2f}s {'<=' if worst.p95 <= threshold else '>'} " \
             f"{threshold:g}s" + pending
    return Gate("index_freshness_p95", ok, max(worst.p95, oldest_pending_s) if waiting else worst.p95,
                threshold, detail)
