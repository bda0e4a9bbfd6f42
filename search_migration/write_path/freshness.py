"""Freshness: commit -> applied latency per engine, kept durably (Prometheus reads it on scrape).

The product commits each outbox row with `ingested_at`; once an engine's offset has moved past a row,
the row is applied there (PostgreSQL: its document committed; Meilisearch: its task succeeded), so
`clock_timestamp() - ingested_at` at that moment is what a user waited before the post was searchable
in that engine. Recorded by the consumer in the transaction that moves the engine's offset, so each
row is observed exactly once per apply, whoever applied it (the tail, a catch-up run, a rollback).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import psycopg

from search_migration.source import contract

# Histogram bucket bounds in seconds (cumulative, Prometheus style); +Inf last.
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, math.inf)
SAMPLE_PER_BATCH = 2000  # per engine and batch: a large catch-up batch keeps a weighted sample
KEEP_HOURS = 24
WINDOW_MINUTES = 60  # the window status and the gate read

RECORD_SQL = """
WITH obs AS (
    SELECT seq, greatest(0, extract(epoch FROM clock_timestamp() - ingested_at))::float8 AS s
    FROM cn_relay.events_outbox WHERE seq > %(lo)s AND seq <= %(hi)s
), recent AS (
    INSERT INTO cn_search.index_freshness_observations (backend, seq, seconds, weight)
    SELECT %(backend)s, seq, s, %(step)s FROM obs WHERE (seq - %(lo)s) %% %(step)s = 0
    ON CONFLICT (backend, seq) DO NOTHING
), buckets AS (
    INSERT INTO cn_search.index_freshness_buckets (backend, le, observations)
    SELECT %(backend)s, le, count(*) FILTER (WHERE obs.s <= le) FROM obs, unnest(%(bounds)s::float8[]) AS le
    GROUP BY le
    ON CONFLICT (backend, le) DO UPDATE
    SET observations = index_freshness_buckets.observations + EXCLUDED.observations
)
INSERT INTO cn_search.index_freshness_totals (backend, observations, seconds_sum)
SELECT %(backend)s, count(*), coalesce(sum(s), 0) FROM obs HAVING count(*) > 0
ON CONFLICT (backend) DO UPDATE SET observations = index_freshness_totals.observations + EXCLUDED.observations,
    seconds_sum = index_freshness_totals.seconds_sum + EXCLUDED.seconds_sum, updated_at = now()
"""

# Weighted percentiles per engine over observations applied since a moment.
PERCENTILES_SQL = """
WITH w AS (
    SELECT backend, seconds, sum(weight) OVER (PARTITION BY backend ORDER BY seconds, seq) AS cum,
           sum(weight) OVER (PARTITION BY backend) AS total
    FROM cn_search.index_freshness_observations WHERE applied_at > %(since)s
)
SELECT backend, max(total)::bigint,
       min(seconds) FILTER (WHERE cum >= 0.5 * total), min(seconds) FILTER (WHERE cum >= 0.95 * total),
       max(seconds)
FROM w GROUP BY backend ORDER BY backend
"""


def record(conn: psycopg.Connection, backend: str, lo: int, hi: int) -> None:
    """Observe every outbox row in (lo, hi] as applied to `backend` now."""
    if hi <= lo:
        return
    step = max(1, math.ceil((hi - lo) / SAMPLE_PER_BATCH))
    conn.execute(RECORD_SQL, {"backend": backend, "lo": lo, "hi": hi, "step": step, "bounds": list(BUCKETS)})


def prune(conn: psycopg.Connection, keep_hours: float = KEEP_HOURS) -> int:
    return conn.execute("DELETE FROM cn_search.index_freshness_observations "
                        "WHERE applied_at < now() - make_interval(secs => %s)", (keep_hours * 3600,)).rowcount


@dataclass(frozen=True)
class Summary:
    backend: str
    rows: int  # rows observed (weighted)
    p50: float
    p95: float
    max: float

    def as_dict(self) -> dict:
        return {"rows": self.rows, "p50_s": round(self.p50, 3), "p95_s": round(self.p95, 3),
                "max_s": round(self.max, 3)}


def summary(conn: psycopg.Connection, *, since=None, minutes: float = WINDOW_MINUTES) -> dict[str, Summary]:
    """P50/P95/max per engine over observations applied since `since` (default: the last `minutes`)."""
    if since is None:
        since = conn.execute("SELECT now() - make_interval(secs => %s)", (minutes * 60,)).fetchone()[0]
    return {b: Summary(b, n, p50, p95, mx) for b, n, p50, p95, mx in conn.execute(PERCENTILES_SQL, {"since": since})}


def oldest_pending_s(conn: psycopg.Connection) -> float | None:
    """Seconds since the first outbox row after the consumer offset was committed (None: none waits)."""
    row = conn.execute("SELECT extract(epoch FROM clock_timestamp() - ingested_at)::float8 FROM cn_relay.events_outbox "
                       "WHERE seq > %s ORDER BY seq LIMIT 1",
                       (contract.consumer_offset(conn, contract.CONSUMER),)).fetchone()
    return row[0] if row else None


def histogram(conn: psycopg.Connection) -> dict[str, tuple[list[tuple[float, int]], int, float]]:
    """{backend: ([(le, cumulative count)], count, sum)} for the exporter."""
    out: dict[str, tuple[list, int, float]] = {}
    for backend, n, total in conn.execute("SELECT backend, observations, seconds_sum "
                                          "FROM cn_search.index_freshness_totals ORDER BY backend"):
        buckets = conn.execute("SELECT le, observations FROM cn_search.index_freshness_buckets WHERE backend = %s "
                               "ORDER BY le", (backend,)).fetchall()
        out[backend] = (buckets, n, total)
    return out
