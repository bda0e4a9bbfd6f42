"""The backfill in Dagster: the high watermark and post_search_documents by topic × week.

Thin wiring over search_migration.backfill: partition keys become (topic, window), every key of a
run is copied under its own lease (ranges split unpredictably over multi-partitions, so the asset
loops over context.partition_keys and is idempotent), and the engine's numbers become metadata.
"""


import os

import dagster as dg

from search_migration import backfill
from search_migration.backfill.partition_keys import topic_from_partition_key
from .partitions import topics_partitions
from .resources import PostgresResource
from .ui import OWNERS, number, runbook, tags

BACKFILL_START = os.environ.get("SEARCH_MIGRATION_BACKFILL_START", "2026-01-05")  # a Monday
BACKFILL_POOL = "backfill_source"  # limit in dagster.yaml: concurrency.pools.default_limit
# multi_run(1000), measured by bench/backfill_policy.py for 200 topics x 26 weeks on the 1M corpus: a
# Dagster run costs 6.2-6.6 s of overhead and, since small partitions share transactions, a partition
# ~13 ms (bench/backfill_1m.py); with pool limit 2 the model predicts 58 s, vs 82 s for multi_run(400),
# 202 s for multi_run(100) and 74 s for single_run() (no parallelism, one failure stops everything).
# The 10,000-post demo (820 partitions) is one run. Larger N leaves the pool idle behind one slow run.
DEFAULT_BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=1000)

weeks_partitions = dg.WeeklyPartitionsDefinition(start_date=BACKFILL_START, day_offset=1, end_offset=1)
backfill_partitions = dg.MultiPartitionsDefinition({"time": weeks_partitions, "topic": topics_partitions})


SLOWEST_SHOWN = 10  # partitions listed in a run's metadata (every partition's materialization carries it)


class BackfillConfig(dg.Config):
    rebuild: bool = False  # re-copy partitions that already completed
    page_size: int = backfill.DEFAULT_PAGE_SIZE
    lease_timeout_seconds: float = backfill.DEFAULT_LEASE_TIMEOUT_S
    max_rows_per_second: float = 0.0  # per partition; 0 = unthrottled


@dg.asset(group_name="backfill", kinds={"postgres"}, owners=OWNERS, tags=tags("dual", "backfill"),
          metadata=runbook("runbook-backfill"),
          description="The backfill's finish line: MAX(cn_relay.events_outbox.seq), captured once writes are dual, "
                      "with a frozen manifest of every searchable (topic, post) of the source tables at or below it. The backfill copies up to it; "
                      "catch-up covers everything after. Fails (changing nothing) while search_write_mode is "
                      "meili_only: run cutover_job to dual first.")
def backfill_high_watermark(context: dg.AssetExecutionContext, postgres: PostgresResource) -> dg.MaterializeResult:
    with postgres.connect() as conn:
        try:
            wm = backfill.capture_watermark(conn, by=f"dagster run {context.run_id}", **partitioned_span())
        except backfill.BackfillError as exc:
            raise dg.Failure(description=str(exc)) from None
    context.log.info(f"high watermark {wm.seq}; manifest of {wm.manifest_rows} (topic, post) rows; "
                     f"{wm.reopened} completed partition(s) re-opened (their window gained rows): backfill them again")
    return dg.MaterializeResult(metadata={"high_watermark": wm.seq, "watermark_id": wm.watermark_id,
                                          "manifest_rows": wm.manifest_rows, "partitions_reopened": wm.reopened})


def partitioned_span() -> dict[str, int]:
    """The time the weekly partitions cover now: from the first week's start to the current week's end.
    A post dated outside it (the product does not validate created_at) is chunked into the edge weeks."""
    last = weeks_partitions.get_last_partition_window()
    first = weeks_partitions.time_window_for_partition_key(weeks_partitions.get_first_partition_key())
    return {"chunk_floor": int(first.start.timestamp()), "chunk_ceiling": int(last.end.timestamp())}


def window_of(partition_key: str) -> tuple[str, backfill.Window]:
    """(topic id, time window) of a `time|topic` multi-partition key."""
    keys = backfill_partitions.get_partition_key_from_str(str(partition_key)).keys_by_dimension
    tw = weeks_partitions.time_window_for_partition_key(keys["time"])
    return topic_from_partition_key(keys["topic"]), backfill.Window(int(tw.start.timestamp()), int(tw.end.timestamp()))


@dg.asset(group_name="backfill", kinds={"postgres"}, partitions_def=backfill_partitions,
          deps=[backfill_high_watermark], backfill_policy=DEFAULT_BACKFILL_POLICY, pool=BACKFILL_POOL,
          retry_policy=dg.RetryPolicy(max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL,
                                      jitter=dg.Jitter.PLUS_MINUS),
          owners=OWNERS, tags=tags("dual", "backfill"), metadata=runbook("runbook-backfill"),
          description="PostgreSQL search documents, one partition per topic × week, copied as they were at the "
                      "high watermark into cn_search.post_search_documents. Safe to re-run: a partition resumes "
                      "after its checkpoint and a completed one is a no-op (config rebuild: true re-copies). "
                      "Materialize all partitions once backfill_high_watermark exists.")
def post_search_documents(context: dg.AssetExecutionContext, config: BackfillConfig,
                          postgres: PostgresResource) -> dg.MaterializeResult:
    options = backfill.PartitionOptions(page_size=config.page_size, lease_timeout_s=config.lease_timeout_seconds,
                                        rebuild=config.rebuild, max_rows_per_second=config.max_rows_per_second)
    results = []
    with backfill.Backfiller(postgres.database_url, owner=f"dagster run {context.run_id}", options=options) as b:
        try:
            for r in b.run_many([(str(key), *window_of(key)) for key in context.partition_keys]):
                context.log.info(f"{r.partition_key}: {'already complete' if r.noop else 'copied'} {r.rows_copied} "
                                 f"rows, skipped {r.rows_skipped}, {r.rows_per_second:.0f} rows/s")
                results.append(r)
        except backfill.BackfillError as exc:
            raise dg.Failure(description=str(exc)) from None
    with postgres.connect() as conn:
        overall = backfill.progress(conn).as_dict()
    return dg.MaterializeResult(metadata=_metadata(results, overall))


def _metadata(results: list[backfill.PartitionResult], overall: dict) -> dict:
    copied, skipped = sum(r.rows_copied for r in results), sum(r.rows_skipped for r in results)
    duration = sum(r.duration_s for r in results)
    md = {"rows_copied": copied, "rows_skipped_newer_or_deleted": skipped,
          "rows_per_second": round((copied + skipped) / duration, 1) if duration else 0.0,
          "duration_seconds": round(duration, 3), "partitions_in_run": len(results),
          "backfill_rows_done": overall["rows_done"], "backfill_rows_total": overall["rows_total"],
          "backfill_eta_seconds": number(overall["eta_seconds"]),
          "high_watermark": overall["high_watermark"] or 0}
    if len(results) > 1:
        # Dagster copies a run's metadata onto the materialization of every partition in it: a table of all
        # N partitions would be stored N times (940 partitions: 249 MB of event log, three minutes of the
        # demo). The slowest few say where the time went; the totals above cover the rest.
        slowest = sorted(results, key=lambda r: r.duration_s, reverse=True)[:SLOWEST_SHOWN]
        rows = [r.metadata() for r in slowest]
        md["slowest_partitions"] = dg.MetadataValue.table(
            records=[dg.TableRecord(row) for row in rows],
            schema=dg.TableSchema(columns=[dg.TableColumn(k, "string" if isinstance(v, str) else type(v).__name__) for k, v in rows[0].items()]))
    elif results:
        md["resumed_after_rows"] = results[0].resumed_after_rows
        md["noop_already_complete"] = results[0].noop
    return md
