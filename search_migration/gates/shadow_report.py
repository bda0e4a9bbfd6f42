"""The numbers the quality gates read: shadow-read logs plus a replayed golden query set.

Shadow logs show real traffic (both id lists and latencies for sampled requests); the golden set
replays known queries against both engines so quality is measured even when traffic is thin. Each
golden query names a topic: Meilisearch answers it from that topic's own index (topic_<sanitized id>,
as the product's /v1/search does), PostgreSQL from that topic's documents.
Latencies are attributed to the engine that served them, whichever side was primary.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable

import pandas as pd
import psycopg

from search_migration.gates.measures import legacy_grades, ndcg_at_10, overlap_at_10
from search_migration.write_path.legacy_documents import index_uid

# Package data (pyproject.toml): shipped in the wheel beside this module.
GOLDEN_QUERIES: Traversable = resources.files("search_migration.gates") / "golden_queries.json"

LOGS_SQL = """
SELECT endpoint, primary_backend, primary_ids, secondary_ids, primary_latency_ms, secondary_latency_ms,
       secondary_error
FROM cn_search.shadow_read_logs
WHERE logged_at > now() - make_interval(hours => %s)
"""

REQUESTS_SQL = """
SELECT coalesce(sum(requests), 0)::bigint FROM cn_search.read_request_counts
WHERE endpoint = 'search' AND minute > now() - make_interval(hours => %s)
"""


@dataclass
class GoldenQuery:
    topic: str
    q: str
    judgments: dict[str, int] | None = None  # event_id -> grade; None: graded by the legacy ranking


class GoldenQueriesMissing(Exception):
    """The golden query set is not where the package ships it: a broken install, never 0 queries."""


def load_golden(path: Traversable = GOLDEN_QUERIES) -> list[GoldenQuery]:
    if not path.is_file():
        raise GoldenQueriesMissing(f"golden query set not found: {path} (the package is installed without its data)")
    return [GoldenQuery(**row) for row in json.loads(path.read_text(encoding="utf-8"))]


@dataclass
class ShadowReport:
    window_hours: float
    shadow_samples: dict[str, int]  # endpoint -> logged shadow reads
    golden_queries: int
    overlap_median: float | None
    overlap_p10: float | None
    ndcg_at_10: float | None
    error_rate: float | None
    zero_result_rate: dict[str, float | None]  # engine -> share of searches with no result
    latency_ms: dict[str, dict[str, float]]  # "endpoint/engine" -> {p50, p95, p99}
    expected_sample_rate: int
    observed_sample_rate: float | None = None  # percent of auto-routed search requests that were sampled
    per_query: list[dict] = field(default_factory=list)

    @property
    def sample_size(self) -> int:
        """Real traffic only: a golden set alone never makes a sample large enough."""
        return self.shadow_samples.get("search", 0)

    def p95(self, endpoint: str, engine: str = "pg") -> float | None:
        return (self.latency_ms.get(f"{endpoint}/{engine}") or {}).get("p95")


def _timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - started) * 1000


def replay_golden(router, queries: list[GoldenQuery]) -> pd.DataFrame:
    """Each golden query against both engines through the application's own read path."""
    rows = []
    for g in queries:
        pg, pg_ms = _timed(lambda: router.search(g.topic, g.q, limit=10, backend="pg"))
        meili, meili_ms = _timed(lambda: router.search(g.topic, g.q, limit=10, backend="meili"))
        pg_ids = [i["event_id"] for i in pg["items"]]
        meili_ids = [i["event_id"] for i in meili["items"]]
        rows.append({"source": "golden", "endpoint": "search", "topic": g.topic, "index": index_uid(g.topic), "q": g.q, "pg_ids": pg_ids, "meili_ids": meili_ids,
                     "pg_ms": pg_ms, "meili_ms": meili_ms, "error": False,
                     "judgments": g.judgments or legacy_grades(meili_ids)})
    return pd.DataFrame(rows)


def _logs(conn: psycopg.Connection, window_hours: float) -> pd.DataFrame:
    rows = []
    for endpoint, primary, p_ids, s_ids, p_ms, s_ms, s_err in conn.execute(LOGS_SQL, (window_hours,)):
        pg_is_primary = primary == "pg"
        pg_ids, meili_ids = (p_ids, s_ids) if pg_is_primary else (s_ids, p_ids)
        pg_ms, meili_ms = (p_ms, s_ms) if pg_is_primary else (s_ms, p_ms)
        rows.append({"source": "shadow", "endpoint": endpoint, "pg_ids": pg_ids or [], "meili_ids": meili_ids or [],
                     "pg_ms": pg_ms, "meili_ms": meili_ms, "error": s_err is not None,
                     "judgments": legacy_grades(meili_ids or [])})
    return pd.DataFrame(rows, columns=["source", "endpoint", "pg_ids", "meili_ids", "pg_ms", "meili_ms", "error",
                                       "judgments"])


def _quantiles(series: pd.Series) -> dict[str, float]:
    s = series.dropna()
    if s.empty:
        return {}
    return {"p50": round(float(s.quantile(0.50)), 2), "p95": round(float(s.quantile(0.95)), 2),
            "p99": round(float(s.quantile(0.99)), 2)}


def build(conn: psycopg.Connection, router, *, golden: list[GoldenQuery] | None = None,
          window_hours: float = 24, expected_sample_rate: int = 0) -> ShadowReport:
    router.drain()  # this process's own counts and shadow rows first
    logs = _logs(conn, window_hours)
    requests = conn.execute(REQUESTS_SQL, (window_hours,)).fetchone()[0]
    replay = replay_golden(router, load_golden() if golden is None else golden)
    frames = [d for d in (logs, replay) if len(d)]
    df = pd.concat(frames, ignore_index=True) if frames else logs
    search = df[(df.endpoint == "search") & ~df.error.astype(bool)]
    overlaps = pd.Series([overlap_at_10(a, b) for a, b in zip(search.pg_ids, search.meili_ids)], dtype=float)
    ndcg = ndcg_at_10(list(search.pg_ids), list(search.judgments))
    latency = {f"{endpoint}/{engine}": q for endpoint in ("search", "suggest") for engine in ("pg", "meili")
               if (q := _quantiles(df.loc[df.endpoint == endpoint, f"{engine}_ms"]))}
    per_query = []
    if len(replay):
        golden_ndcg = ndcg_at_10(list(replay.pg_ids), list(replay.judgments))
        per_query = [{"topic": r.topic, "index": r.index, "query": r.q, "overlap@10": round(overlap_at_10(r.pg_ids, r.meili_ids), 3),
                      "ndcg@10": round(n, 3), "pg_ms": round(r.pg_ms, 1), "meili_ms": round(r.meili_ms, 1)}
                     for r, n in zip(replay.itertuples(), golden_ndcg)]
    return ShadowReport(
        window_hours=window_hours,
        shadow_samples={e: int((logs.endpoint == e).sum()) for e in ("search", "suggest")},
        golden_queries=len(replay),
        overlap_median=round(float(overlaps.median()), 4) if len(overlaps) else None,
        overlap_p10=round(float(overlaps.quantile(0.10)), 4) if len(overlaps) else None,
        ndcg_at_10=round(sum(ndcg) / len(ndcg), 4) if ndcg else None,
        error_rate=round(float(df.error.astype(bool).mean()), 4) if len(df) else None,
        zero_result_rate={e: round(float((search[f"{e}_ids"].map(len) == 0).mean()), 4) if len(search) else None
                          for e in ("pg", "meili")},
        latency_ms=latency,
        expected_sample_rate=expected_sample_rate,
        observed_sample_rate=round(100.0 * int((logs.endpoint == "search").sum()) / requests, 2) if requests else None,
        per_query=per_query,
    )
