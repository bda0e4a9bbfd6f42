"""The write path in Dagster: catch-up and replay jobs, and the sensors that keep them going."""

import json
import os
import threading
import time
from typing import Optional

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError

from search_migration.write_path import dead_letters
from search_migration.write_path import consumer, freshness, handover, tail as tail_consumer
from search_migration.source import contract
from search_migration.backfill.partition_keys import PartitionKeyError, topic_partition_key
from .partitions import topics_partitions
from .resources import MeiliResource, PostgresResource
from .ui import OWNERS, number, runbook, tags

from search_migration.errors import first_line

MAX_RANGE = 200_000  # outbox rows per catch-up run: long enough to be efficient, short enough to retry
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


class CatchUpConfig(dg.Config):
    to_seq: Optional[int] = None  # default: the outbox head when the run starts
    batch_size: int = consumer.DEFAULT_BATCH_SIZE
    lock_wait_s: float = 60.0  # queued behind the tail's pass (or a rollback) on the consumer lock, at most this


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
                result = consumer.catch_up(conn, meili.client(), to_seq=config.to_seq, batch_size=config.batch_size,
                                           lock_wait_s=config.lock_wait_s)
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


class TailConfig(dg.Config):
    max_seconds: float = 600  # the run ends by itself (its log and metadata stay readable); the sensor starts the next
    poll_seconds: float = 1.0  # the fallback poll when no notification arrives
    batch_size: int = 500  # rows per batch while caught up (a backlog drains in large batches)


def _tail_metadata(result: tail_consumer.TailResult, summary: dict) -> dict:
    meta = {"rows_applied": result.rows_applied, "dead_lettered": result.dead_lettered, "wakes": result.wakes,
            "notified_wakes": result.notified, "stalls": result.stalls, "reconnects": result.reconnects,
            "lock_waits": result.lock_waits, "end_offset": result.end_offset if result.end_offset is not None else -1,
            "end_reason": result.end_reason}
    for backend, s in summary.items():
        meta.update({f"freshness_{backend}_p50_s": number(s.p50), f"freshness_{backend}_p95_s": number(s.p95),
                     f"freshness_{backend}_max_s": number(s.max), f"freshness_{backend}_rows": s.rows})
    return meta


@dg.op(description="Tail the outbox: LISTEN on cn_relay_outbox (and poll as a fallback), apply each row to the "
                   "engines the write mode names within about a second, taking the consumer lock per pass; ends after "
                   "max_seconds, drains and commits on cancel.")
def tail(context: dg.OpExecutionContext, config: TailConfig, postgres: PostgresResource,
         meili: MeiliResource) -> dg.Output[int]:
    stop = threading.Event()
    options = tail_consumer.Options(max_seconds=config.max_seconds, poll_seconds=config.poll_seconds,
                                    batch_size=config.batch_size)
    worker = tail_consumer.Tail(postgres.database_url, meili.client(), options, stop=stop, run_id=context.run_id)
    failure: list[BaseException] = []

    finished = threading.Event()

    def target():
        try:
            worker.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the op below
            failure.append(exc)
        finally:
            finished.set()

    # the consumer runs in a thread: a termination signal reaches the op's (main) thread as an exception,
    # never in the middle of a batch; the op sets `stop`, and the tail finishes its batch and commits
    thread = threading.Thread(target=target, name="tail", daemon=True)
    started = time.time()
    thread.start()
    interrupted: BaseException | None = None
    last_report = 0.0
    # wait on an Event, not Thread.join: in Python 3.11 an exception raised by a signal handler inside
    # join() marks the thread stopped while it still runs (the drain would be abandoned at exit)
    while not finished.is_set():
        try:
            finished.wait(timeout=1.0)
            if time.monotonic() - last_report >= 60 and not finished.is_set():
                last_report = time.monotonic()
                r = worker.result
                context.log.info(f"tail {worker.state}: {r.rows_applied} rows applied, {r.notified}/{r.wakes} wakes "
                                 f"notified, {r.stalls} stalls, {r.reconnects} reconnects, offset {r.end_offset}")
        except (DagsterExecutionInterruptedError, KeyboardInterrupt) as exc:
            if interrupted is None:
                context.log.warning("termination requested: finishing the batch in hand and committing offsets")
            interrupted = interrupted or exc
            stop.set()
    result = worker.result
    with postgres.connect() as conn:
        try:
            summary = freshness.summary(conn, since=conn.execute("SELECT to_timestamp(%s)", (started,)).fetchone()[0])
        except Exception:  # noqa: BLE001 - metadata only
            summary = {}
    metadata = _tail_metadata(result, summary)
    fresh = ", ".join(f"{b} P50 {s.p50:.2f}s P95 {s.p95:.2f}s" for b, s in summary.items()) or "no rows applied"
    context.log.info(f"tail ended ({result.end_reason}): {result.rows_applied} rows applied; freshness {fresh}")
    if failure:
        exc = failure[0]
        if isinstance(exc, (handover.HandoverError,)):
            raise dg.Failure(str(exc), metadata=metadata, allow_retries=False) from None
        raise dg.Failure(f"tail failed: {type(exc).__name__}: {str(exc)[:300]}", metadata=metadata) from exc
    if interrupted is not None:
        raise interrupted  # the run is canceled, after the drain
    return dg.Output(result.end_offset if result.end_offset is not None else -1, metadata=metadata)


@dg.job(owners=OWNERS, tags={"search_migration/kind": "tail", **tags("any", "write-path")},
        metadata=runbook("runbook-tail"), executor_def=dg.in_process_executor,
        description="The write path's long-lived consumer: applies each outbox row within about a second of its "
                    "commit (LISTEN cn_relay_outbox, a fallback poll), drains backlogs in large batches, takes the "
                    "consumer lock per pass (a rollback or catch-up gets its turn between passes), ends by itself after max_seconds. high_watermark_sensor keeps exactly one "
                    "alive; cancel drains and commits. Config: max_seconds, poll_seconds, batch_size.")
def tail_job():
    tail()


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


TAIL_SETTING = "SEARCH_MIGRATION_TAIL"  # "off": no tail runs, a bounded catch-up run per range (the old path)
CRASH_LOOP = 3  # this many tail runs failed in a row, the last within CRASH_BACKOFF_S: catch-up runs instead
CRASH_BACKOFF_S = 300
BACKLOG_CATCHUP = 50_000  # outbox rows behind: bounded catch-up runs drain it beside the tail


def _crash_looping(instance: dg.DagsterInstance) -> str | None:
    recent = instance.get_runs(dg.RunsFilter(job_name="tail_job"), limit=CRASH_LOOP)
    if len(recent) < CRASH_LOOP or any(r.status != dg.DagsterRunStatus.FAILURE for r in recent):
        return None
    ended = instance.get_run_record_by_id(recent[0].run_id).end_time or 0
    if time.time() - ended > CRASH_BACKOFF_S:
        return None
    return f"the last {CRASH_LOOP} tail runs failed (latest {recent[0].run_id[:8]})"


def _catch_up_request(context, head: int, offset: int, why: str):
    """The bounded catch-up path: a run per range, never two at once."""
    running = context.instance.get_runs(dg.RunsFilter(job_name="catchup_job", statuses=IN_FLIGHT), limit=1)
    if running:
        return dg.SkipReason(f"catch-up run {running[0].run_id[:8]} is still in flight ({why})")
    if head <= offset:
        return dg.SkipReason(f"caught up: consumer offset {offset} is at the outbox head ({why})")
    to_seq = min(head, offset + MAX_RANGE)
    # run_key dedup is forever: a range that was already requested (its run failed or stalled)
    # gets a new attempt number instead of being silently dropped.
    last = json.loads(context.cursor) if context.cursor else {}
    attempt = last.get("attempt", 0) + 1 if last.get("range") == [offset, to_seq] else 0
    context.update_cursor(json.dumps({**last, "range": [offset, to_seq], "attempt": attempt}))
    return dg.RunRequest(
        job_name="catchup_job",
        run_key=f"catchup:{offset}-{to_seq}" + (f":retry{attempt}" if attempt else ""),
        run_config=dg.RunConfig(ops={"catch_up": CatchUpConfig(to_seq=to_seq)}),
        tags={"search_migration/range": f"{offset + 1}-{to_seq}", "search_migration/lag": str(head - offset),
              "search_migration/why": why[:200]},
    )


@dg.sensor(jobs=[catchup_job, tail_job], minimum_interval_seconds=10, default_status=dg.DefaultSensorStatus.RUNNING,
           owners=OWNERS, tags=tags("any", "write-path"), metadata=runbook("runbook-tail"),
           description="Keeps exactly one tail run alive (the write path: it applies each outbox row within about "
                       "a second of its commit and drains backlogs itself): a new one when the last ended or its "
                       "process died, and its successor a minute before it ends, so there is no gap. Requests "
                       f"bounded catch-up runs (at most {MAX_RANGE:,} rows, one at a time) when the backlog exceeds "
                       f"{BACKLOG_CATCHUP:,} rows, and instead of tail runs when they cannot run "
                       f"({TAIL_SETTING}=off, or {CRASH_LOOP} failed in a row). It is the write path at every "
                       "stage: keep it ON.")
def high_watermark_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource):
    with postgres.connect() as conn:
        if handover.latest(conn) is None:
            return dg.SkipReason(f"the write path has not taken over from {contract.PRODUCT_INDEXER} yet "
                                 "(`search-migration adopt`); the product's indexer keeps the indexes current")
        head = contract.outbox_head(conn)
        offset = contract.consumer_offset(conn, contract.CONSUMER)
        tails = context.instance.get_runs(dg.RunsFilter(job_name="tail_job", statuses=IN_FLIGHT))
        health = tail_consumer.health(conn, [r.run_id for r in tails])
    if os.environ.get(TAIL_SETTING, "").lower() == "off":
        return _catch_up_request(context, head, offset, f"{TAIL_SETTING}=off")
    now = time.time()
    alive, ending = [], []
    for run in tails:
        created = context.instance.get_run_record_by_id(run.run_id).create_timestamp.timestamp()
        is_alive, is_ending, why = tail_consumer.liveness(health.get(run.run_id), now - created)
        if is_alive:
            alive.append(run)
            if is_ending:
                ending.append(run)
        else:
            # its process is gone and nobody told Dagster (SIGKILL, OOM): say so, and replace it
            context.log.warning(f"tail run {run.run_id[:8]} is dead ({why}); marking it failed")
            context.instance.report_run_failed(run, message=f"tail run presumed dead by high_watermark_sensor: {why}")
            with postgres.connect() as conn:
                tail_consumer.mark_dead(conn, run.run_id, why)
    crash = _crash_looping(context.instance) if not alive else None
    if crash:
        return _catch_up_request(context, head, offset, crash)
    requests, skips = [], []
    if alive and len(alive) > len(ending):
        skips.append(f"tail run {alive[0].run_id[:8]} is alive; lag {head - offset} rows")
    elif len(alive) >= 2:
        skips.append(f"tail run {alive[-1].run_id[:8]} is ending; its successor runs already")
    else:
        last = json.loads(context.cursor) if context.cursor else {}
        epoch = max(int(now), last.get("tail_epoch", 0) + 1)
        context.update_cursor(json.dumps({**last, "tail_epoch": epoch}))
        why = f"successor of {ending[0].run_id[:8]}" if ending else "no tail run alive"
        requests.append(dg.RunRequest(job_name="tail_job", run_key=f"tail:{epoch}",
                                      tags={"search_migration/epoch": str(epoch), "search_migration/why": why,
                                            "search_migration/lag": str(head - offset)}))
    if head - offset > BACKLOG_CATCHUP:
        # a large backlog (a long outage, a reverse catch-up): bounded runs drain it beside the tail, each
        # queued on the consumer lock, so they take turns with the tail's passes, never two writers at once
        catch_up = _catch_up_request(context, head, offset, f"backlog {head - offset} > {BACKLOG_CATCHUP}")
        (requests if isinstance(catch_up, dg.RunRequest) else skips).append(
            catch_up if isinstance(catch_up, dg.RunRequest) else catch_up.skip_message)
    return requests if requests else dg.SkipReason("; ".join(skips))


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
