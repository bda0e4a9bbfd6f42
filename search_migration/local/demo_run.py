"""`search-migration demo run`: the whole migration, legacy -> live, through real Dagster runs.

A driver, like the CLI: it launches the project's own jobs and asset materializations on the
Dagster instance of dagster.yaml (so every run is visible in the UI afterwards). It starts where an
operator adopting the product starts: the product's indexer (`index-v1`, emulated by `demo seed`) is
stopped — the demo simply does not run it any more — and the write path takes over at its offset
(`adopt`, audited). Meanwhile a writer keeps publishing events the way the product's relay does
(`ProductWriter`: notes, versions, deletions, expiring notes) and synthetic readers send search
traffic, typos included.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Callable

import dagster as dg

from search_migration import db
from search_migration.backfill.partition_keys import topic_partition_key
from search_migration.cutover import flags, stages
from search_migration.local import demo_corpus
from search_migration.local.product_writer import ProductWriter, Rejected
from search_migration.search import read_router
from search_migration.search.read_router import ReadRouter
from search_migration.settings import Settings
from search_migration.source import contract
from search_migration.write_path import handover, meili_index, tail

# What the synthetic readers type: words of the corpus, Japanese and English, and typos of them
# (Meilisearch forgives one typo from 5 letters, two from 9).
QUERIES = ["ラーメン", "東京", "rust", "coffee", "カメラ", "検索", "写真", "release", "猫", "python", "#nostr",
           "京都", "meetup", "データベース", "ライブ配信", "全文検索", "温泉", "PostgreSQL", "weekend",
           "pyhton", "relaese", "meetpu", "postgersql", "Meilisaerch", "festivl", "Kubernets"]
SHADOW_SAMPLES = 60  # per ramp step: comfortably above the gates' minimum sample
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}  # the driver prints one line a step
# Dagster's documented run tags for a single run over a range of partitions
PARTITION_RANGE_START, PARTITION_RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


class DemoError(Exception):
    pass


class AlreadyDone(Exception):
    """The migration is past where `demo run` starts; the message says where it is and what to do next."""


def _failure_message(error) -> str:
    """A step failure's own message, without the exception class Dagster prefixes it with."""
    message = error.message.strip()
    prefix = f"{error.cls_name}: " if getattr(error, "cls_name", None) else None
    if prefix and prefix in message.split("\n", 1)[0]:
        message = message.split(prefix, 1)[1]
    return message.splitlines()[0] if message else "see the run in the UI"


def where_to_go(stage: str, last_move: str | None) -> str:
    """What to say to someone who starts `demo run` on a migration that is not at `legacy`."""
    since = f" ({last_move})" if last_move else ""
    start_over = ("`search-migration demo seed --reset --posts N --topics T` starts the demo over from legacy "
                  "(then `search-migration demo run`)")
    if stage in ("live", "complete"):
        return (f"the migration is already at {stage}{since}: nothing to run. Next: `search-migration status` "
                "shows the gates, `scripts/dev` shows every run in the Dagster UI, `rollback_job` there moves back "
                f"(live -> shadow), or {start_over}")
    return (f"the migration is at {stage}{since}, part way through: continue it from the Dagster UI "
            f"(`scripts/dev`: catchup_job, the reports, cutover_job), or {start_over}")


class Writer(threading.Thread):
    """New events, one product ingest transaction each, at a steady rate (the product's relay)."""

    def __init__(self, url: str, topics: list[str], per_second: float):
        super().__init__(daemon=True, name="demo-writer")
        self.url, self.topics, self.interval = url, topics, 1.0 / per_second
        self.stop_event = threading.Event()
        self.written = 0
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with db.connect(self.url) as conn:
                writer = ProductWriter(conn)
                for item in demo_corpus.live_traffic(self.topics, seed=time.time_ns()):
                    if self.stop_event.wait(self.interval):
                        return
                    try:
                        writer.publish(item.event, now=item.now)
                    except Rejected:
                        continue  # the relay refused it (as it would refuse a client): nothing written
                    self.written += 1
        except Exception as exc:  # surfaced by the driver
            self.error = exc


def _tail(database_url: str, meili_url: str, meili_key: str, stop, run_id: str) -> None:
    tail.run(database_url, meili_index.client(meili_url, meili_key), tail.Options(max_seconds=24 * 3600),
             stop=stop, run_id=run_id)


def _wait_until_listening(database_url: str, tailer, run_id: str, timeout_s: float = 120) -> None:
    """The writer starts once the tail listens (its two sessions are open): a row committed while a fresh
    process imports would wait seconds for it, and the freshness gate would rightly count that."""
    name, deadline = tail.session_name(run_id), time.monotonic() + timeout_s
    with db.connect(database_url) as conn:
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                           (name,)).fetchone()[0] < 2:
            if not tailer.is_alive():
                raise DemoError(f"the tail process ended at start (exit code {tailer.exitcode})")
            if time.monotonic() > deadline:
                raise DemoError(f"the tail did not start listening within {timeout_s:.0f}s")
            time.sleep(0.1)


def run(s: Settings, instance: dg.DagsterInstance, say: Callable[[str], None]) -> None:
    from search_migration.definitions import defs
    from search_migration.defs.backfill import backfill_partitions

    started = time.monotonic()

    def step(text: str) -> None:
        say(f"[{time.monotonic() - started:6.1f}s] {text}")

    def launch_job(name: str, op: str, **config) -> None:
        result = defs.resolve_job_def(name).execute_in_process(
            instance=instance, run_config={"ops": {op: {"config": config}}, **QUIET}, raise_on_error=False)
        if not result.success:
            errors = [_failure_message(e.step_failure_data.error) for e in result.all_events
                      if e.is_step_failure and e.step_failure_data.error is not None]
            raise DemoError(f"{name} failed (run {result.run_id[:8]}): {(errors or ['see the run in the UI'])[0]}")

    def materialize(key: str, **kwargs) -> dg.ExecuteInProcessResult:
        asset = next(a for a in defs.assets if getattr(a, "key", None) == dg.AssetKey(key))
        result = dg.materialize([asset], instance=instance, resources=defs.resources, raise_on_error=False,
                                run_config=QUIET, **kwargs)
        if not result.success:
            raise DemoError(f"materializing {key} failed (run {result.run_id[:8]})")
        return result

    def checks(result) -> str:
        evaluations = [e.asset_check_evaluation_data for e in result.all_events
                       if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        return ", ".join(f"{c.check_name} {'ok' if c.passed else 'FAIL'}" for c in evaluations)

    def cutover(target: str, rate: int | None = None) -> None:
        launch_job("cutover_job", "cutover_op", target_stage=target, shadow_rate=rate, by="demo run",
                   reason=f"demo: enter {target}" + (f" at {rate}%" if rate else ""))
        step(f"cutover_job: now at {target}" + (f" (shadow {rate}%)" if rate else ""))

    def catch_up() -> None:
        launch_job("catchup_job", "catch_up")
        with db.connect(s.database_url) as conn:
            step(f"catchup_job: consumer at seq {contract.consumer_offset(conn, contract.CONSUMER)}, "
                 f"outbox head {contract.outbox_head(conn)}")

    def traffic(rate: int) -> None:
        with db.connect(s.database_url) as conn, ReadRouter(s.database_url, meili) as router:
            before = conn.execute("SELECT count(*) FROM cn_search.shadow_read_logs").fetchone()[0]
            sent = 0
            for i in range(20_000):
                viewer, q = f"demo-viewer-{i}", QUERIES[i % len(QUERIES)]
                if read_router.sample_bucket(viewer, q) >= rate:
                    continue  # not sampled at this rate: it would only load Meilisearch
                router.search(topics[i % len(topics)], q, viewer=viewer)
                router.suggest(q[:2], viewer=viewer)
                sent += 1
                if sent >= SHADOW_SAMPLES:
                    break
            router.drain()
            logged = conn.execute("SELECT count(*) FROM cn_search.shadow_read_logs").fetchone()[0] - before
        step(f"synthetic readers: {sent} sampled viewers, {logged} shadow reads logged")

    with db.connect(s.database_url) as conn:
        stage = stages.current(flags.read_all(conn))
        topics = contract.topic_ids(conn)
        last = conn.execute("SELECT changed_at, changed_by FROM cn_search.runtime_flag_audit "
                            "WHERE stage_to IS NOT NULL ORDER BY audit_id DESC LIMIT 1").fetchone()
    if stage != "legacy":
        move = f"since {last[0].isoformat(timespec='seconds')} by {last[1]}" if last else None
        if stage in ("live", "complete"):
            raise AlreadyDone(where_to_go(stage, move))
        raise DemoError(where_to_go(stage, move))
    if not topics:
        raise DemoError("the demo database holds no topics; `search-migration demo seed --posts N --topics T` first")
    meili = meili_index.client(s.meili_url, s.meili_search_key)  # the readers' key: search only

    # The product's indexer is stopped (the demo stops running its emulation), then we take its place.
    with db.connect(s.database_url) as conn:
        done = handover.adopt(conn, from_consumer=contract.PRODUCT_INDEXER, by="demo run",
                              reason="demo: the product's indexer is stopped; the write path takes over")
    step(f"stage legacy: {len(topics)} topics; the product's indexer {done.from_consumer} is stopped at seq "
         f"{done.offset}; adopt: {done.consumer} starts there" + (" (adopted before)" if done.already else ""))
    # the write path as high_watermark_sensor keeps it under a daemon: a tail applying each row at once, in
    # a process of its own like a run of tail_job (in this one, it would share the readers' interpreter
    # lock and inflate the latencies the shadow gates measure)
    spawn = multiprocessing.get_context("spawn")
    stop_tail, run_id = spawn.Event(), f"demo-{int(time.time())}"
    tailer = spawn.Process(target=_tail, args=(s.database_url, s.meili_url, s.meili_write_key, stop_tail, run_id),
                           daemon=True, name="demo-tail")
    tailer.start()
    _wait_until_listening(s.database_url, tailer, run_id)
    writer = Writer(s.database_url, topics, per_second=5)
    writer.start()
    step("a writer publishes 5 events/s the way the product's relay does; a tail applies each within a second")
    try:
        cutover("dual")
        materialize("backfill_high_watermark")
        step("backfill_high_watermark captured")
        instance.add_dynamic_partitions("topics", [topic_partition_key(t) for t in topics])
        keys = backfill_partitions.get_partition_keys(dynamic_partitions_store=instance)
        step(f"backfilling {len(keys)} partitions (topic x week) in one run ...")
        materialize("post_search_documents", tags={PARTITION_RANGE_START: keys[0], PARTITION_RANGE_END: keys[-1]})
        step("post_search_documents: every partition copied at the watermark")
        catch_up()
        step("search_drift_report: " + checks(materialize("search_drift_report")))
        cutover("shadow", 5)
        for rate, nxt in ((5, ("shadow", 25)), (25, ("shadow", 50)), (50, ("live", None))):
            traffic(rate)
            catch_up()
            step("search_drift_report: " + checks(materialize("search_drift_report")))
            step("shadow_read_report: " + checks(materialize("shadow_read_report")))
            cutover(*nxt)
    finally:
        writer.stop_event.set()
        writer.join(timeout=10)
        stop_tail.set()
        tailer.join(timeout=60)
        if tailer.is_alive():
            tailer.terminate()
    if writer.error:
        raise DemoError(f"the demo writer failed: {writer.error}")
    step(f"done: stage live; the writer published {writer.written} events during the migration")
