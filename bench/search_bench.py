"""Search bench: PostgreSQL search and suggest against the legacy Meilisearch, in one run.

Queries are drawn from the corpus itself (seeded): sampled posts give 1-, 2- and 3-word Japanese and
English queries of words that co-occur in that post, and prefixes of its words; each search runs in
the sampled post's topic. For each query both engines answer (order alternated, after one warm-up
pass), and the bench reports per query class:

- overlap@10 and NDCG@10 of PostgreSQL against Meilisearch (ir-measures; relevance graded by the
  legacy ranking: Meilisearch's rank r in the top 10 is grade 10 - r),
- P50 / P95 / P99 latency of both engines, measured in the same run on the same machine.

    SEARCH_MIGRATION_HOME=.local/bench1m SEARCH_MIGRATION_PG_PORT=55500 SEARCH_MIGRATION_MEILI_PORT=7750 \
        .venv/bin/python bench/search_bench.py [--per-class 30] [--seed 7] [--json out.json]

Fill post_search_documents first (bench/search_load.py). Bounded: per-class x classes x 2 engines x
2 passes queries, one at a time.
"""

from __future__ import annotations

import argparse
import random
import re
import time

import pandas as pd

from search_migration import db
from search_migration.write_path import meili_index
from search_migration.search import meili_search
from search_migration.search import pg_search
from search_migration.local import demo_corpus
from search_migration.gates.measures import legacy_grades, ndcg_at_10, overlap_at_10
from search_migration.settings import Settings
from search_migration.search.text import normalize

SAMPLE_SQL = """
SELECT post_id, topic_id, content FROM cn_search.post_search_documents TABLESAMPLE SYSTEM (2) REPEATABLE (%s)
WHERE NOT is_deleted LIMIT 20000
"""

# The demo corpus's words (local/demo_corpus.py): Japanese nouns as written, English words and names as typed.
JA_WORDS = demo_corpus.PLACES + demo_corpus.THINGS
EN_WORDS = demo_corpus.EN_WORDS + [w.lower() for w in demo_corpus.EN_TECH + demo_corpus.EN_PLACES]

GOALS = {"overlap@10": 0.90, "NDCG@10": 0.95, "pg P95 search": 50, "pg P95 suggest": 20}
GATES = {"overlap@10": 0.70, "NDCG@10": 0.90, "pg P95 search": 180, "pg P95 suggest": 80}


def _words_in(text: str, vocabulary: list[str]) -> list[str]:
    """Vocabulary words in the order they appear in the text (English ones as whole words)."""
    norm = normalize(text)
    found = []
    for w in vocabulary:
        pattern = r"(?<![a-z0-9_])" + re.escape(w) + r"(?![a-z0-9_])" if w.isascii() else re.escape(w)
        found.extend((m.start(), w) for m in re.finditer(pattern, norm))
    return [w for _, w in sorted(found)]


def draw_queries(rows, per_class: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rng.shuffle(rows)
    want = {f"{lang}-{n}w": per_class for lang in ("ja", "en") for n in (1, 2, 3)}
    want.update({"ja-prefix": per_class, "en-prefix": per_class})
    out, seen = [], set()
    for post_id, topic, content in rows:
        for lang, vocab in (("ja", JA_WORDS), ("en", EN_WORDS)):
            words = _words_in(content, vocab)
            for n in (1, 2, 3):
                cls = f"{lang}-{n}w"
                if want[cls] and len(words) >= n:
                    start = rng.randrange(len(words) - n + 1)
                    q = " ".join(words[start:start + n])
                    if (cls, topic, q) not in seen:
                        seen.add((cls, topic, q))
                        out.append({"class": cls, "topic": topic, "q": q})
                        want[cls] -= 1
            cls = f"{lang}-prefix"
            if want[cls] and words:
                w = rng.choice(words)
                cut = rng.randint(1, max(1, len(w) - 1)) if lang == "ja" else rng.randint(2, max(2, len(w) - 1))
                q = w[:cut]
                if (cls, topic, q) not in seen:
                    seen.add((cls, topic, q))
                    out.append({"class": cls, "topic": topic, "q": q})
                    want[cls] -= 1
        if not any(want.values()):
            break
    return out


def _timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - started) * 1000


def run(per_class: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    s = Settings.from_env()
    meili = meili_index.client(s.meili_url, s.meili_master_key)
    with db.connect(s.database_url) as conn:
        rows = conn.execute(SAMPLE_SQL, (seed,)).fetchall()
        queries = draw_queries(rows, per_class, seed)
        records = []
        for endpoint in ("search", "suggest"):
            for q in queries:
                if endpoint == "suggest" and not q["class"].endswith(("prefix", "1w")):
                    continue
                if endpoint == "search":
                    pg_fn = lambda q=q: [i["event_id"] for i in pg_search.search(conn, q["topic"], q["q"], 10).items]
                    ms_fn = lambda q=q: [i["event_id"] for i in
                                         meili_search.search(meili, q["topic"], q["q"], 10).items]
                else:
                    pg_fn = lambda q=q: [i["event_id"] for i in pg_search.suggest(conn, q["q"], 5)]
                    ms_fn = lambda q=q: [i["event_id"] for i in meili_search.suggest(meili, q["q"], 5)]
                pg_fn(), ms_fn()  # warm-up: both engines see the query once
                if len(records) % 2:
                    (ms_ids, ms_ms), (pg_ids, pg_ms) = _timed(ms_fn), _timed(pg_fn)
                else:
                    (pg_ids, pg_ms), (ms_ids, ms_ms) = _timed(pg_fn), _timed(ms_fn)
                records.append({"endpoint": endpoint, **q, "pg_ids": pg_ids, "meili_ids": ms_ids,
                                "pg_ms": pg_ms, "meili_ms": ms_ms})
    df = pd.DataFrame(records)
    df["overlap@10"] = [overlap_at_10(a, b) for a, b in zip(df.pg_ids, df.meili_ids)]
    df["NDCG@10"] = ndcg_at_10(list(df.pg_ids), [legacy_grades(ids) for ids in df.meili_ids])

    def summary(g: pd.DataFrame) -> pd.Series:
        return pd.Series({
            "queries": len(g),
            "overlap@10": g["overlap@10"].mean(),
            "NDCG@10": g["NDCG@10"].mean(),
            "pg P50": g.pg_ms.quantile(0.50), "pg P95": g.pg_ms.quantile(0.95), "pg P99": g.pg_ms.quantile(0.99),
            "meili P50": g.meili_ms.quantile(0.50), "meili P95": g.meili_ms.quantile(0.95),
            "meili P99": g.meili_ms.quantile(0.99),
        })

    table = df.groupby(["endpoint", "class"]).apply(summary, include_groups=False)
    overall = df.groupby("endpoint").apply(summary, include_groups=False)
    overall.index = pd.MultiIndex.from_tuples([(e, "ALL") for e in overall.index], names=["endpoint", "class"])
    return pd.concat([table, overall]).sort_index(), df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", help="write per-query results here")
    args = ap.parse_args()
    table, df = run(args.per_class, args.seed)
    pd.set_option("display.width", 200)
    print(table.to_string(float_format=lambda v: f"{v:.3f}" if v < 1.0001 else f"{v:.1f}"))
    search_all, suggest_all = table.loc[("search", "ALL")], table.loc[("suggest", "ALL")]
    got = {"overlap@10": search_all["overlap@10"], "NDCG@10": search_all["NDCG@10"],
           "pg P95 search": search_all["pg P95"], "pg P95 suggest": suggest_all["pg P95"]}
    print(f"search P95 ratio pg/meili: {search_all['pg P95'] / search_all['meili P95']:.1f}x, "
          f"suggest: {suggest_all['pg P95'] / suggest_all['meili P95']:.1f}x")
    for name, value in got.items():
        higher = not name.startswith("pg P95")
        ok = (lambda lim: value >= lim) if higher else (lambda lim: value <= lim)
        print(f"{name:<16} {value:8.3f}  goal {GOALS[name]:<6} {'met' if ok(GOALS[name]) else 'MISSED':<6}  "
              f"gate {GATES[name]:<6} {'pass' if ok(GATES[name]) else 'FAIL'}")
    if args.json:
        df.to_json(args.json, orient="records", force_ascii=False, indent=1)


if __name__ == "__main__":
    main()
