"""The reports the gates read, and the gates themselves as asset checks."""

import dagster as dg

from search_migration import backfill
from search_migration.gates import drift
from search_migration.cutover import flags
from search_migration.gates import policy
from search_migration.gates.policy import DRIFT_CHECKS, QUALITY_CHECKS
from search_migration.gates import shadow_report
from search_migration.source import contract
from search_migration.search.read_router import ReadRouter
from search_migration.write_path import freshness
from .resources import MeiliResource, PostgresResource
from .ui import OWNERS, number, runbook, tags

D = policy.DEFAULTS
# What each gate means to whoever reads a red check; its runbook entry (anchor gate-<name>) says what to do.
CHECK_DESCRIPTIONS = {
    "drift_zero": "Gate: per topic index, PostgreSQL and Meilisearch each hold exactly what the source says is "
                  "searchable (exact counts, sampled ids and content). Red: an engine lost, kept or changed a "
                  "document; do not cut over. uid collisions and the product indexer's stale versions are listed "
                  "beside it, not counted.",
    "catchup_lag": f"Gate: outbox backlog (head minus consumer offset) below {D['outbox_backlog']:,} rows. Red: "
                   "catch-up is behind or stalled.",
    "backfill_complete": "Gate: every manifest row up to the high watermark is copied. Red: backfill partitions "
                         "are missing or failed.",
    "index_freshness_p95": f"Gate: commit -> applied P95 over the last {freshness.WINDOW_MINUTES} min at most "
                           f"{D['index_freshness_p95_s']:g} s in every engine written (search_index_freshness_seconds). "
                           "Red: the tail run is not running or is behind (README: The tail run), or a row waits "
                           "unapplied longer than the threshold. A quiet hour (nothing committed, nothing waiting) "
                           "passes with value 0.",
    "shadow_sample_size": f"Gate: at least {D['min_sample']} shadow search reads in the window. Red: not enough "
                          "traffic measured yet; every quality gate fails with it.",
    "overlap_at_10": f"Gate: median overlap@10 of PostgreSQL vs Meilisearch results at least {D['overlap_at_10']}, "
                     f"over at least {D['min_sample']} real shadow searches compared (pairs empty on both sides are "
                     "excluded and counted apart: they measure nothing).",
    "ndcg_at_10": f"Gate: mean NDCG@10 of PostgreSQL, graded by the legacy ranking, at least {D['ndcg_at_10']}, "
                  "over the same compared searches (empty pairs excluded).",
    "search_p95": f"Gate: PostgreSQL search P95 at most {D['search_p95_ms']:g} ms.",
    "suggest_p95": f"Gate: PostgreSQL suggest P95 at most {D['suggest_p95_ms']:g} ms.",
    "error_rate": f"Gate: error rate below {D['error_rate']:.0%} of PostgreSQL, the engine that answers users in the "
                  "stages this gate opens (live, complete): its failures as the shadow and as the primary (in live) "
                  "are both counted.",
}


DRIFT_COLUMNS = ("missing_in_pg", "missing_in_meili", "extra_in_pg", "extra_in_meili", "content_mismatch",
                 "legacy_defects")


def _check_specs(asset: str, names: tuple[str, ...]) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(name, asset=asset, description=CHECK_DESCRIPTIONS[name],
                              metadata=runbook(f"gate-{name}")) for name in names]


class Measurement(dg.Config):
    """What the reports measure over; the thresholds are the gate policy's (gates/policy.py), never run config."""

    window_hours: float = 24
    drift_sample_per_topic: int = 200


def _check_results(results: list[policy.Gate], policy_id: str) -> list[dg.AssetCheckResult]:
    """The checks, each with the policy it was evaluated under (the cutover refuses any other)."""
    return [dg.AssetCheckResult(check_name=g.name, passed=g.passed, description=g.detail,
                                metadata={"value": number(g.value), "threshold": number(g.threshold), "detail": g.detail,
                                          "policy": policy_id})
            for g in results]


@dg.asset(
    group_name="gates", kinds={"postgres", "meilisearch"}, deps=["post_search_documents"],
    check_specs=_check_specs("search_drift_report", DRIFT_CHECKS), owners=OWNERS, tags=tags("dual", "gates"),
    metadata=runbook("runbook-gates"),
    description="Do both engines hold what the source says is searchable? Per topic index (topic_<uid>): the "
                "source's searchable rows vs PostgreSQL vs Meilisearch (exact counts, sampled ids and content), uid "
                "collisions, outbox backlog and backfill completion. Materialize it before "
                f"every cutover; its checks ({', '.join(DRIFT_CHECKS)}) gate dual -> shadow and every step after.",
)
def search_drift_report(config: Measurement, postgres: PostgresResource, meili: MeiliResource) -> dg.MaterializeResult:
    with postgres.connect() as conn:
        report = drift.report(conn, meili.client(), sample_per_topic=config.drift_sample_per_topic)
        backlog = contract.outbox_head(conn) - contract.consumer_offset(conn, contract.CONSUMER)
        progress = backfill.progress(conn)
        fresh, pending = freshness.summary(conn), freshness.oldest_pending_s(conn)
    gate_policy = policy.load()
    results = policy.integrity(report, backlog, progress, gate_policy) + [policy.freshness(fresh, pending, gate_policy)]
    drifting = report.drifting_topics[:20]
    return dg.MaterializeResult(
        metadata={
            "drift": report.drift, "topics": len(report.topics), "drifting_topics": len(report.drifting_topics),
            "documents_compared": sum(t.sampled for t in report.topics), "outbox_backlog": backlog,
            "source_documents": sum(t.source_documents for t in report.topics),
            "pg_documents": sum(t.pg_documents for t in report.topics),
            "meili_documents": sum(t.meili_documents for t in report.topics),
            "uid_collisions": dg.MetadataValue.json(report.collisions),
            "legacy_defects": report.legacy_defects,
            "pending_excluded": report.pending_excluded, "consumer_offset": report.consumer_offset,
            "backfill_rows_done": progress.rows_done, "backfill_rows_total": progress.rows_total,
            "drifting": dg.MetadataValue.table(
                records=[dg.TableRecord({"topic": t.topic_id, "index": t.uid, "source": t.source_documents,
                                         "pg": t.pg_documents, "meili": t.meili_documents,
                                         **{c: len(getattr(t, c)) for c in DRIFT_COLUMNS}}) for t in drifting],
                schema=dg.TableSchema(columns=[dg.TableColumn("topic", "string"), dg.TableColumn("index", "string")] + [
                    dg.TableColumn(c, "int") for c in ("source", "pg", "meili", *DRIFT_COLUMNS)])),
        },
        check_results=_check_results(results, gate_policy.id),
    )


@dg.asset(
    group_name="gates", kinds={"postgres", "meilisearch"}, deps=["post_search_documents"],
    check_specs=_check_specs("shadow_read_report", QUALITY_CHECKS), owners=OWNERS, tags=tags("shadow", "gates"),
    metadata=runbook("runbook-gates"),
    description="Is PostgreSQL search as good and as fast? Shadow reads of the last window plus the golden "
                "queries (the operator's file, SEARCH_MIGRATION_GOLDEN_QUERIES; the packaged one is the demo's) on "
                "topics the source has, replayed on both engines: overlap@10, NDCG@10 (pairs empty on both sides "
                "excluded and counted), P50/P95/P99 per engine, each engine's error rate, zero-result rates. Materialize it before each shadow ramp step and before live; its checks "
                f"({', '.join(QUALITY_CHECKS)}) gate those moves.",
)
def shadow_read_report(config: Measurement, postgres: PostgresResource, meili: MeiliResource) -> dg.MaterializeResult:
    with postgres.connect() as conn, ReadRouter(postgres.database_url, meili.search_client()) as router:
        rate = int(flags.get(conn, "shadow_sample_rate"))
        report = shadow_report.build(conn, router, window_hours=config.window_hours, expected_sample_rate=rate)
    gate_policy = policy.load()
    results = policy.quality(report, gate_policy)
    latency = {f"{k.replace('/', '_')}_{q}_ms": v for k, qs in report.latency_ms.items() for q, v in qs.items()}
    return dg.MaterializeResult(
        metadata={
            "sample_size": report.sample_size, "shadow_search_samples": report.shadow_samples.get("search", 0),
            "shadow_suggest_samples": report.shadow_samples.get("suggest", 0),
            "compared_samples": report.compared_samples,
            "empty_pairs_shadow": report.empty_pairs.get("shadow", 0),
            "empty_pairs_golden": report.empty_pairs.get("golden", 0),
            "golden_queries": report.golden_queries, "golden_queries_skipped": report.golden_skipped,
            "golden_source": report.golden_source,
            "overlap_at_10_median": number(report.overlap_median),
            "overlap_at_10_p10": number(report.overlap_p10), "ndcg_at_10": number(report.ndcg_at_10),
            "error_rate": number(report.error_rate), "error_rate_engine": report.error_rate_engine,
            **{f"error_rate_{e}": number(r) for e, r in report.error_rates.items()},
            **{f"errors_{e}": n for e, n in report.errors.items()},
            "zero_result_rate_pg": number(report.zero_result_rate.get("pg")),
            "zero_result_rate_meili": number(report.zero_result_rate.get("meili")),
            "expected_sample_rate_percent": number(report.expected_sample_rate),
            "observed_sample_rate_percent": number(report.observed_sample_rate),
            **{k: number(v) for k, v in latency.items()},
            "golden": dg.MetadataValue.table(
                records=[dg.TableRecord(r) for r in report.per_query],
                schema=dg.TableSchema(columns=[dg.TableColumn("topic", "string"), dg.TableColumn("index", "string"),
                                               dg.TableColumn("query", "string"),
                                               dg.TableColumn("result", "string"),
                                               dg.TableColumn("overlap@10", "float"), dg.TableColumn("ndcg@10", "float"),
                                               dg.TableColumn("pg_ms", "float"), dg.TableColumn("meili_ms", "float")])),
        },
        check_results=_check_results(results, gate_policy.id),
    )
