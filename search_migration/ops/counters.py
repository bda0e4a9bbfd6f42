"""Write-path counters, kept durably in PostgreSQL and exposed to Prometheus on scrape.

Catch-up runs are short-lived processes, so an in-process prometheus Counter would reset with
every run; the counters live in `cn_search.write_path_counters` and a collector reads them.
"""

from __future__ import annotations

import psycopg
from prometheus_client.core import CounterMetricFamily

DUAL_WRITE_ERRORS = "search_dual_write_errors_total"
DUAL_WRITE_RETRIES = "search_dual_write_retries_total"
HELP = {
    DUAL_WRITE_ERRORS: "Write-path failures by backend and operation (retryable stalls and dead letters).",
    DUAL_WRITE_RETRIES: "One-sided failures later applied by a retry.",
}


def increment(conn: psycopg.Connection, name: str, backend: str, operation: str, by: int = 1) -> None:
    conn.execute(
        "INSERT INTO cn_search.write_path_counters (name, backend, operation, value) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (name, backend, operation) DO UPDATE SET value = write_path_counters.value + EXCLUDED.value",
        (name, backend, operation, by))


def read(conn: psycopg.Connection, name: str) -> dict[tuple[str, str], int]:
    """{(backend, operation): value} for one counter."""
    return {(b, o): v for b, o, v in conn.execute(
        "SELECT backend, operation, value FROM cn_search.write_path_counters WHERE name = %s", (name,))}


def total(conn: psycopg.Connection, name: str) -> int:
    return sum(read(conn, name).values())


class DurableCounters:
    """A prometheus_client collector: register it with a registry to export the durable counters."""

    def __init__(self, connect):
        self._connect = connect

    def collect(self):
        with self._connect() as conn:
            for name in (DUAL_WRITE_ERRORS, DUAL_WRITE_RETRIES):
                family = CounterMetricFamily(name.removesuffix("_total"), HELP[name], labels=["backend", "operation"])
                for (backend, operation), value in sorted(read(conn, name).items()):
                    family.add_metric([backend, operation], value)
                yield family
