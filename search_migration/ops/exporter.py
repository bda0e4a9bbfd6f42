"""Prometheus metrics with the runbook's names, read from durable state on every scrape.

Nothing is counted in this process: the numbers come from PostgreSQL (offsets, counters, dead
letters, backfill jobs, shadow logs, flags), so they are right after any restart of anything.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import psycopg
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from search_migration import backfill
from search_migration.cutover import flags
from search_migration.ops import counters
from search_migration.source import contract
from search_migration.cutover import stages
from search_migration.write_path import freshness

SHADOW_WINDOW_MINUTES = 60
SHADOW_SQL = """
SELECT avg(overlap_at_10),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY CASE WHEN primary_backend = 'pg'
           THEN primary_latency_ms - secondary_latency_ms ELSE secondary_latency_ms - primary_latency_ms END)
FROM cn_search.shadow_read_logs
WHERE endpoint = 'search' AND secondary_error IS NULL AND secondary_latency_ms IS NOT NULL
  AND logged_at > now() - make_interval(mins => %s)
"""


class MigrationCollector:
    def __init__(self, connect: Callable[[], psycopg.Connection]):
        self._connect = connect

    def collect(self):
        with self._connect() as conn:
            yield from counters.DurableCounters(lambda: contextlib.nullcontext(conn)).collect()
            progress = backfill.progress(conn)
            yield GaugeMetricFamily("backfill_processed_rows", "Backfill rows done at the current watermark.",
                                    value=progress.rows_done)
            yield GaugeMetricFamily("backfill_total_rows", "Backfill rows to copy at the current watermark.",
                                    value=progress.rows_total)
            yield GaugeMetricFamily("backfill_eta_seconds", "Backfill ETA from the current rate (NaN: no rate).",
                                    value=progress.eta_seconds if progress.eta_seconds is not None else float("nan"))
            backlog = GaugeMetricFamily("outbox_backlog", "Outbox rows after the consumer offset.", labels=["consumer"])
            backlog.add_metric([contract.CONSUMER],
                               contract.outbox_head(conn) - contract.consumer_offset(conn, contract.CONSUMER))
            yield backlog
            dead = GaugeMetricFamily("search_dead_letters", "Open dead letters.", labels=["backend", "reason"])
            for backend, reason, n in conn.execute(
                    "SELECT backend, reason_class, count(*) FROM cn_search.dead_letters WHERE resolved_at IS NULL "
                    "GROUP BY 1, 2 ORDER BY 1, 2"):
                dead.add_metric([backend, reason], n)
            yield dead
            overlap, delta = conn.execute(SHADOW_SQL, (SHADOW_WINDOW_MINUTES,)).fetchone()
            yield GaugeMetricFamily("shadow_overlap_at_10", f"Mean overlap@10 of shadow reads, last "
                                    f"{SHADOW_WINDOW_MINUTES} min (NaN: none).",
                                    value=overlap if overlap is not None else float("nan"))
            yield GaugeMetricFamily("shadow_latency_delta_ms", "P95 of PostgreSQL minus Meilisearch latency per "
                                    "shadow read (NaN: none).", value=delta if delta is not None else float("nan"))
            fresh = HistogramMetricFamily("search_index_freshness_seconds", "Outbox commit (ingested_at) to applied "
                                          "in each engine, per row.", labels=["backend"])
            for backend, (buckets, count, total) in freshness.histogram(conn).items():
                fresh.add_metric([backend], [("+Inf" if le == float("inf") else repr(float(le)), n)
                                             for le, n in buckets], total)
            yield fresh
            values = flags.read_all(conn)
            stage = GaugeMetricFamily("search_migration_stage", "1 for the current stage.", labels=["stage"])
            for name in stages.STAGES:
                stage.add_metric([name], 1 if stages.current(values) == name else 0)
            yield stage
            flag = GaugeMetricFamily("search_migration_flag", "1 for each flag's current value.",
                                     labels=["flag", "value"])
            for name, value in sorted(values.items()):
                flag.add_metric([name, value], 1)
            yield flag


def registry(connect: Callable[[], psycopg.Connection]) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(MigrationCollector(connect))
    return reg


def serve(connect: Callable[[], psycopg.Connection], host: str, port: int):
    """Serve /metrics until the process ends."""
    return start_http_server(port, addr=host, registry=registry(connect))
