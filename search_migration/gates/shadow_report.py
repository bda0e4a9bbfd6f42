"""The numbers the quality gates read: shadow-read logs plus a replayed golden query set.

Shadow logs show real traffic (both id lists and latencies for sampled requests, or the error of the
engine that failed, primary or shadow); the golden set replays known queries against both engines so
quality is measured even when traffic is thin. Each golden query names a topic: Meilisearch answers it
from that topic's own index (topic_<sanitized id>, as the product's /v1/search does), PostgreSQL from
that topic's documents.

The golden queries are the product's: the operator's file named by SEARCH_MIGRATION_GOLDEN_QUERIES.
Without one, the packaged file is the demo's, for the demo's own topics. Either way only queries whose
topic exists in the source are replayed (a query on a topic the product does not have measures
nothing), and the report says how many were replayed and how many skipped.

A pair empty on both sides measures nothing: it is excluded from overlap@10 and NDCG@10 and counted
separately (`empty_pairs`); the quality gates need `min_sample` real shadow reads that were compared.
Errors are counted per engine; `error_rate` is PostgreSQL's (ERROR_RATE_ENGINE): the engine that
answers users in every stage the quality gates open (live, complete), primary in live, the shadow before.
Latencies are attributed to the engine that served them, whichever side was primary.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import pandas as pd
import psycopg

from search_migration.errors import first_line
from search_migration.gates.measures import both_empty, legacy_grades, ndcg_at_10, overlap_at_10
from search_migration.source import contract
from search_migration.write_path.legacy_documents import index_uid

# Package data (pyproject.toml): shipped in the wheel beside this module. The demo's queries, on the
# demo's topics (demo_corpus.topic_ids without a namespace); a product's come from GOLDEN_ENV.
GOLDEN_QUERIES: Traversable = resources.files("search_migration.gates") / "golden_queries.json"
GOLDEN_ENV = "SEARCH_MIGRATION_GOLDEN_QUERIES"
ERROR_RATE_ENGINE = "pg"
ENGINES = ("pg", "meili")

LOGS_SQL = """
SELECT endpoint, primary_backend, primary_ids, secondary_ids, primary_latency_ms, secondary_latency_ms,
       secondary_error, primary_error
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
    """The golden query set is not where it was said to be (the operator's file, or the package's data):
    never 0 queries. The message is one printable line."""


def golden_path(env=os.environ) -> Traversable:
    """The operator's golden query file (SEARCH_MIGRATION_GOLDEN_QUERIES), else the demo's packaged one."""
    given = env.get(GOLDEN_ENV)
    return Path(given) if given else GOLDEN_QUERIES


def load_golden(path: Traversable | None = None) -> list[GoldenQuery]:
    path = golden_path() if path is None else path
    if not path.is_file():
        how = f"{GOLDEN_ENV}={path}" if os.environ.get(GOLDEN_ENV) else f"{path} (the package is installed without its data)"
        raise GoldenQueriesMissing(f"golden query set not found: {how}")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        return [GoldenQuery(topic=str(r["topic"]), q=str(r["q"]), judgments=r.get("judgments")) for r in rows]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise GoldenQueriesMissing(f"golden query set {path} is not a JSON list of {{topic, q[, judgments]}}: "
                                   f"{type(exc).__name__}: {first_line(exc, 120)}") from None


@dataclass
class ShadowReport:
    window_hours: float
    shadow_samples: dict[str, int]  # endpoint -> logged shadow reads
    golden_queries: int  # replayed (their topic exists in the source)
    overlap_median: float | None
    overlap_p10: float | None
    ndcg_at_10: float | None
    error_rate: float | None  # ERROR_RATE_ENGINE's, over every read it was asked (primary, shadow, golden)
    zero_result_rate: dict[str, float | None]  # engine -> share of searches with no result
    latency_ms: dict[str, dict[str, float]]  # "endpoint/engine" -> {p50, p95, p99}
    expected_sample_rate: int
    observed_sample_rate: float | None = None  # percent of auto-routed search requests that were sampled
    per_query: list[dict] = field(default_factory=list)
    compared_samples: int = 0  # real shadow searches both engines answered, not both empty: what quality is measured on
    empty_pairs: dict[str, int] = field(default_factory=dict)  # "shadow"/"golden" -> searches empty on both sides
    error_rates: dict[str, float | None] = field(default_factory=dict)  # engine -> its error rate
    errors: dict[str, int] = field(default_factory=dict)  # engine -> failed reads
    error_rate_engine: str = ERROR_RATE_ENGINE
    golden_skipped: int = 0  # golden queries whose topic the source does not have
    golden_source: str = ""

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


COLUMNS = ["source", "endpoint", "pg_ids", "meili_ids", "pg_ms", "meili_ms", "pg_error", "meili_error", "judgments"]


def _ask(router, backend: str, g: GoldenQuery):
    """(ids, ms, failed): a failing engine is a measured error, not a report that cannot be built."""
    started = time.perf_counter()
    try:
        ids = [i["event_id"] for i in router.search(g.topic, g.q, limit=10, backend=backend)["items"]]
    except Exception:
        return None, None, True
    return ids, (time.perf_counter() - started) * 1000, False


def replay_golden(router, queries: list[GoldenQuery]) -> pd.DataFrame:
    """Each golden query against both engines through the application's own read path."""
    rows = []
    for g in queries:
        pg_ids, pg_ms, pg_error = _ask(router, "pg", g)
        meili_ids, meili_ms, meili_error = _ask(router, "meili", g)
        rows.append({"source": "golden", "endpoint": "search", "topic": g.topic, "index": index_uid(g.topic), "q": g.q,
                     "pg_ids": pg_ids, "meili_ids": meili_ids, "pg_ms": pg_ms, "meili_ms": meili_ms,
                     "pg_error": pg_error, "meili_error": meili_error,
                     "judgments": g.judgments or legacy_grades(meili_ids or [])})
    return pd.DataFrame(rows, columns=COLUMNS + ["topic", "index", "q"])


def _logs(conn: psycopg.Connection, window_hours: float) -> pd.DataFrame:
    rows = []
    for endpoint, primary, p_ids, s_ids, p_ms, s_ms, s_err, p_err in conn.execute(LOGS_SQL, (window_hours,)):
        pg_is_primary = primary == "pg"
        pg_ids, meili_ids = (p_ids, s_ids) if pg_is_primary else (s_ids, p_ids)
        pg_ms, meili_ms = (p_ms, s_ms) if pg_is_primary else (s_ms, p_ms)
        pg_err, meili_err = (p_err, s_err) if pg_is_primary else (s_err, p_err)
        rows.append({"source": "shadow", "endpoint": endpoint, "pg_ids": pg_ids, "meili_ids": meili_ids,
                     "pg_ms": None if pg_err else pg_ms, "meili_ms": None if meili_err else meili_ms,
                     "pg_error": pg_err is not None, "meili_error": meili_err is not None,
                     "judgments": legacy_grades(meili_ids or [])})
    return pd.DataFrame(rows, columns=COLUMNS)


def _quantiles(series: pd.Series) -> dict[str, float]:
    s = series.dropna()
    if s.empty:
        return {}
    return {"p50": round(float(s.quantile(0.50)), 2), "p95": round(float(s.quantile(0.95)), 2),
            "p99": round(float(s.quantile(0.99)), 2)}


def replayable(conn: psycopg.Connection, queries: list[GoldenQuery]) -> tuple[list[GoldenQuery], int]:
    """The golden queries whose topic exists in the source, and how many were left out."""
    topics = set(contract.topic_ids(conn))
    kept = [g for g in queries if g.topic in topics]
    return kept, len(queries) - len(kept)


def build(conn: psycopg.Connection, router, *, golden: list[GoldenQuery] | None = None,
          window_hours: float = 24, expected_sample_rate: int = 0) -> ShadowReport:
    router.drain()  # this process's own counts and shadow rows first
    logs = _logs(conn, window_hours)
    requests = conn.execute(REQUESTS_SQL, (window_hours,)).fetchone()[0]
    source = "given" if golden is not None else str(golden_path())
    queries, skipped = replayable(conn, load_golden() if golden is None else golden)
    replay = replay_golden(router, queries)
    frames = [d[COLUMNS] for d in (logs, replay) if len(d)]
    df = pd.concat(frames, ignore_index=True) if frames else logs
    failed = df.pg_error.astype(bool) | df.meili_error.astype(bool)
    answered = df[(df.endpoint == "search") & ~failed]
    empty = pd.Series([both_empty(a, b) for a, b in zip(answered.pg_ids, answered.meili_ids)], index=answered.index,
                      dtype=bool)
    scored = answered[~empty]  # an empty pair measures nothing: excluded, counted below
    overlaps = pd.Series([overlap_at_10(a, b) for a, b in zip(scored.pg_ids, scored.meili_ids)], dtype=float)
    ndcg = ndcg_at_10(list(scored.pg_ids), list(scored.judgments))
    latency = {f"{endpoint}/{engine}": q for endpoint in ("search", "suggest") for engine in ENGINES
               if (q := _quantiles(df.loc[df.endpoint == endpoint, f"{engine}_ms"]))}
    per_query = []
    if len(replay):
        for r in replay.itertuples():
            ok = not (r.pg_error or r.meili_error)
            measured = ok and not both_empty(r.pg_ids, r.meili_ids)
            n = ndcg_at_10([r.pg_ids], [r.judgments])[0] if measured else None
            per_query.append({"topic": r.topic, "index": r.index, "query": r.q,
                              "overlap@10": round(overlap_at_10(r.pg_ids, r.meili_ids), 3) if measured else None,
                              "ndcg@10": round(n, 3) if measured else None,
                              "result": "compared" if measured else ("error" if not ok else "empty on both sides"),
                              "pg_ms": round(r.pg_ms, 1) if r.pg_ms is not None else None,
                              "meili_ms": round(r.meili_ms, 1) if r.meili_ms is not None else None})
    errors = {e: int(df[f"{e}_error"].astype(bool).sum()) for e in ENGINES}
    error_rates = {e: round(errors[e] / len(df), 4) if len(df) else None for e in ENGINES}
    return ShadowReport(
        window_hours=window_hours,
        shadow_samples={e: int((logs.endpoint == e).sum()) for e in ("search", "suggest")},
        golden_queries=len(replay),
        overlap_median=round(float(overlaps.median()), 4) if len(overlaps) else None,
        overlap_p10=round(float(overlaps.quantile(0.10)), 4) if len(overlaps) else None,
        ndcg_at_10=round(sum(ndcg) / len(ndcg), 4) if ndcg else None,
        error_rate=error_rates[ERROR_RATE_ENGINE],
        zero_result_rate={e: round(float((answered[f"{e}_ids"].map(len) == 0).mean()), 4) if len(answered) else None
                          for e in ENGINES},
        latency_ms=latency,
        expected_sample_rate=expected_sample_rate,
        observed_sample_rate=round(100.0 * int((logs.endpoint == "search").sum()) / requests, 2) if requests else None,
        per_query=per_query,
        compared_samples=int((scored.source == "shadow").sum()),
        empty_pairs={s: int((answered[empty].source == s).sum()) for s in ("shadow", "golden")},
        error_rates=error_rates,
        errors=errors,
        golden_skipped=skipped,
        golden_source=source,
    )
