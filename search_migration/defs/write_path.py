"""The write path in Dagster: catch-up and replay jobs, and the sensors that keep them going."""

import json
from typing import Optional

import dagster as dg

from search_migration.write_path import dead_letters
from search_migration.write_path import consumer, handover
from search_migration.source import contract
from search_migration.backfill.partition_keys import PartitionKeyError, topic_partition_key
from .partitions import topics_partitions
from .resources import MeiliResource, PostgresResource
from .ui import OWNERS, runbook, tags

from search_migration.errors import first_line

MAX_RANGE = 200_000  # outbox rows per catch-up run: long enough to be efficient, short enough to retry
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


class CatchUpConfig(dg.Config):
    to_seq: Optional[int] = None  # default: the outbox head when the run starts
    batch_size: int = consumer.DEFAULT_BATCH_SIZE


CATCH_UP_RETRY = dg.RetryPolicy(max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


@dg.op(
    retry_policy=CATCH_UP_RETRY,
    description="Apply outbox rows after the consumer offset to the engines the write mode names.",
)
def catch_up(context: dg.OpExecutionContext, config: CatchUpConfig, postgres: PostgresResource,
             meili: MeiliResource) -> dg.Output[int]:
    # Dagster wraps a failure that asks for a retry, once the retries are spent, as "Exceeded max_retries
    # of N": the last attempt fails without asking, so the run's failure is this op's own one line.
    last_attempt = context.retry_number >= CATCH_UP_RETRY.max_retries
    try:
        with postgres.connect() as conn:
            try:
                result = consumer.catch_up(conn, meili.client(), to_seq=config.to_seq, batch_size=config.batch_size)
            except (consumer.ConsumerBusy, handover.HandoverError) as exc:
                raise dg.Failure(str(exc), allow_retries=False) from None
    except dg.Failure:
        raise
    except Exception as exc:
        if not last_attempt:
            raise
        raise dg.Failure(f"catch-up failed after {context.retry_number + 1} attempts: {type(exc).__name__}: "
                         f"{first_line(exc)}", allow_retries=False) from exc
    metadata = {"start_offset": result.start_offset, "end_offset": result.end_offset, "target": result.target,
                "rows_applied": result.rows_applied, "dead_lettered": result.dead_lettered, "lag": result.lag}
    context.log.info(f"catch-up {result.start_offset} -> {result.end_offset} of {result.target}: "
                     f"{result.rows_applied} applied, {result.dead_lettered} dead-lettered")
    if result.stalled:
        line = result.stall_line()
        context.log.error(line)
        raise dg.Failure(line, metadata=metadata, allow_retries=not last_attempt)
    if result.waiting_on_gap is not None:
        context.log.warning(f"waiting for outbox seq {result.waiting_on_gap} to commit or time out")
    return dg.Output(result.end_offset, metadata=metadata)


@dg.job(owners=OWNERS, tags={"search_migration/kind": "catchup", **tags("any", "write-path")},
        metadata=runbook("runbook-write-path"),
        description="Apply new outbox rows to the engines search_write_mode names, up to the outbox head (or "
                    "to_seq). Started by high_watermark_sensor; a failed run means an engine stalled: fix it and "
                    "the next run resumes at the stalled row.")
def catchup_job():
    catch_up()


class ReplayConfig(dg.Config):
    by: str
    reason: str
    limit: Optional[int] = None
    dry_run: bool = False


@dg.op(description="Re-apply dead letters, oldest first, with audit.")
def replay_failed(context: dg.OpExecutionContext, config: ReplayConfig, postgres: PostgresResource,
                  meili: MeiliResource) -> None:
    with postgres.connect() as conn:
        try:
            outcomes = dead_letters.replay(conn, meili.client(), by=config.by, reason=config.reason,
                                           limit=config.limit, dry_run=config.dry_run)
        except dead_letters.ReplayError as exc:
            raise dg.Failure(str(exc), allow_retries=False) from None
    for outcome in outcomes:
        context.log.info(outcome.line())
    failed = [o for o in outcomes if o.action == "failed"]
    if failed:
        raise dg.Failure(f"{len(failed)} of {len(outcomes)} dead letters failed to replay")


@dg.job(owners=OWNERS, tags=tags("any", "write-path"), metadata=runbook("runbook-dead-letters"),
        description="Re-apply dead-lettered outbox rows, oldest first, after their cause is fixed; audited. "
                    "Start with dry_run: true. Config: by, reason, limit, dry_run.")
def replay_failed_job():
    replay_failed()


@dg.sensor(job=catchup_job, minimum_interval_seconds=10, default_status=dg.DefaultSensorStatus.RUNNING,
           owners=OWNERS, tags=tags("any", "write-path"), metadata=runbook("runbook-write-path"),
           description=f"Keeps the engines current: requests a catch-up run (at most {MAX_RANGE:,} rows) whenever "
                       "the outbox head is ahead of the consumer, never two at once. It is the write path at every "
                       "stage: keep it ON.")
def high_watermark_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource):
    running = context.instance.get_runs(dg.RunsFilter(job_name="catchup_job", statuses=IN_FLIGHT), limit=1)
    if running:
        return dg.SkipReason(f"catch-up run {running[0].run_id[:8]} is still in flight")
    with postgres.connect() as conn:
        if handover.latest(conn) is None:
            return dg.SkipReason(f"the write path has not taken over from {contract.PRODUCT_INDEXER} yet "
                                 "(`search-migration adopt`); the product's indexer keeps the indexes current")
        head = contract.outbox_head(conn)
        offset = contract.consumer_offset(conn, contract.CONSUMER)
    if head <= offset:
        return dg.SkipReason(f"caught up: consumer offset {offset} is at the outbox head")
    to_seq = min(head, offset + MAX_RANGE)
    # run_key dedup is forever: a range that was already requested (its run failed or stalled)
    # gets a new attempt number instead of being silently dropped.
    last = json.loads(context.cursor) if context.cursor else {}
    attempt = last.get("attempt", 0) + 1 if last.get("range") == [offset, to_seq] else 0
    context.update_cursor(json.dumps({"range": [offset, to_seq], "attempt": attempt}))
    return dg.RunRequest(
        run_key=f"catchup:{offset}-{to_seq}" + (f":retry{attempt}" if attempt else ""),
        run_config=dg.RunConfig(ops={"catch_up": CatchUpConfig(to_seq=to_seq)}),
        tags={"search_migration/range": f"{offset + 1}-{to_seq}", "search_migration/lag": str(head - offset)},
    )


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           owners=OWNERS, tags=tags("any", "backfill"), metadata=runbook("runbook-backfill"),
           description="Adds every new product topic to the `topics` partitions of post_search_documents, so the "
                       "backfill covers it. A skipped topic (bad id) is logged as a warning.")
def topic_partitions_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource):
    with postgres.connect() as conn:
        topics = contract.topic_ids(conn)
    known = set(context.instance.get_dynamic_partitions(topics_partitions.name))
    new, refused = [], 0
    for topic in topics:
        try:
            key = topic_partition_key(topic)
        except PartitionKeyError as exc:
            refused += 1
            context.log.warning(f"topic skipped: {exc}")
            continue
        if key not in known:
            new.append(key)
    if not new:
        return dg.SkipReason(f"no new topics ({len(known)} known, {refused} refused)")
    return dg.SensorResult(dynamic_partitions_requests=[topics_partitions.build_add_request(new)])
