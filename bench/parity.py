"""Real-text parity bench (issue 15): PostgreSQL search against the legacy Meilisearch on real prose.

Indexes the real-text corpus (bench/realtext, `.local/realtext/posts.jsonl`) the way the product does:
one Meilisearch index per topic (`topic_<sanitized>`, created with the product's settings, documents
built by write_path/legacy_documents exactly as cn-index builds them, written in the corpus's order:
created_at, event_id), PostgreSQL documents through write_path/pg_documents (the writer the write path
and the backfill share). A second copy of every Meilisearch index (`aa_topic_*`) receives the same
documents in another (seeded, shuffled) order: Meilisearch against that copy is the A/A floor, the
disagreement that is the old engine's own (ties come back in insertion order).

Then every query of `.local/realtext/queries.jsonl` runs against both engines through
search/meili_search.py and search/pg_search.py (search classes in the query's topic, limit 20; suggest
classes across topics, limit 10), after one warm-up pass, engines alternating. Prints one table:
overlap@10 and NDCG@10 (gates/measures.py; relevance graded by Meilisearch's ranking) of PostgreSQL and
of the A/A copy against Meilisearch, P50/P95 of both engines, per class and overall, and the running
Meilisearch's version (GET /version) and ranking rules.

    SEARCH_MIGRATION_HOME=$PWD/.local SEARCH_MIGRATION_PG_PORT=55618 SEARCH_MIGRATION_MEILI_PORT=7768 \
        .venv/bin/python bench/parity.py [--posts N] [--classes a,b] [--per-class N] [--json out.json]

`--posts N` keeps a seeded sample of N posts (the source post of every query kept is always included);
`--reuse` skips indexing when both engines already hold the same sample (same corpus hash, same count).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import time
from pathlib import Path

from search_migration import db
from search_migration.gates.measures import legacy_grades, ndcg_at_10, overlap_at_10
from search_migration.local.product_fixture import apply_product_schema
from search_migration.schema.migrate import migrate
from search_migration.search import meili_search, pg_search
from search_migration.search import segment
from search_migration.search.text import NORMALIZER_VERSION
from search_migration.settings import Settings
from search_migration.write_path import legacy_documents, meili_index, pg_documents
from search_migration.write_path.pg_documents import DocWrite

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / ".local" / "realtext"
AA_PREFIX = "aa_"  # the A/A copy: not `topic_*`, so the product's suggest never sees it
CLASSES = ["ja_1w", "ja_2w", "ja_3w", "en_1w", "en_2w", "en_3w", "identifier", "en_typo1", "en_typo2",
           "suggest_ja", "suggest_en"]
SEARCH_LIMIT = 20  # the product's /v1/search default
SUGGEST_LIMIT = 10
BATCH = 2_000


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load(directory: Path, posts_n: int | None, seed: int, classes: list[str], per_class: int | None):
    queries = [json.loads(line) for line in (directory / "queries.jsonl").open(encoding="utf-8")]
    queries = [q for q in queries if q["class"] in classes]
    if per_class:
        kept: dict[str, int] = {}
        queries = [q for q in queries if kept.setdefault(q["class"], 0) < per_class
                   and not kept.__setitem__(q["class"], kept[q["class"]] + 1)]
    posts = [json.loads(line) for line in (directory / "posts.jsonl").open(encoding="utf-8")]
    if posts_n and posts_n < len(posts):
        sources = {q.get("source_event_id") for q in queries}
        must = [p for p in posts if p["event_id"] in sources]
        rest = [p for p in posts if p["event_id"] not in sources]
        keep = {p["event_id"] for p in must} | {p["event_id"] for p in random.Random(seed).sample(
            rest, max(0, posts_n - len(must)))}
        posts = [p for p in posts if p["event_id"] in keep]  # corpus order (created_at, event_id) kept
    return posts, queries


def raw_event(p: dict) -> dict:
    return {"id": p["event_id"], "pubkey": p["pubkey"], "created_at": p["created_at"], "kind": p["kind"],
            "tags": p["tags"], "content": p["content"]}


def meili_documents(posts: list[dict]) -> list[tuple[str, dict]]:
    """(topic, document) in insertion order: one document per post per topic, as cn-index writes them."""
    return [(topic, legacy_documents.document({"raw_json": raw_event(p)}, topic)) for p in posts for topic in p["topics"]]


def index_meili(client, docs: list[tuple[str, dict]], prefix: str) -> None:
    by_uid: dict[str, list[dict]] = {}
    topics: dict[str, str] = {}
    for topic, doc in docs:
        uid = prefix + meili_index.index_uid(topic)
        by_uid.setdefault(uid, []).append(doc)
        topics[uid] = topic
    existing = [i.uid for i in client.get_indexes({"limit": 1000})["results"] if i.uid.startswith(prefix + "topic_")]
    for uid in existing:
        meili_index.delete_index(client, uid)
    tasks = []
    for uid, batch in by_uid.items():
        tasks.append(client.create_index(uid, {"primaryKey": legacy_documents.PRIMARY_KEY}).task_uid)
        tasks.append(client.index(uid).update_settings(legacy_documents.INDEX_SETTINGS).task_uid)
    for t in tasks:
        meili_index.wait(client, t)
    tasks = []
    for uid, batch in by_uid.items():  # in order: one batch per index keeps insertion order = list order
        for i in range(0, len(batch), BATCH):
            tasks.append(client.index(uid).add_documents(batch[i:i + BATCH]).task_uid)
    meili_index.wait_tasks(client, tasks, on_progress=None)


def doc_writes(posts: list[dict]) -> list[DocWrite]:
    out = []
    for seq, p in enumerate(posts, start=1):
        raw = raw_event(p)
        for topic in p["topics"]:
            out.append(pg_documents.doc_write_for_event(seq, raw, topic))
    return out


def index_pg(conn, writes: list[DocWrite]) -> float:
    conn.execute("TRUNCATE cn_search.post_search_documents")
    started = time.perf_counter()
    for i in range(0, len(writes), BATCH):
        with conn.transaction():
            pg_documents.apply_staged(conn, writes[i:i + BATCH])
    elapsed = time.perf_counter() - started
    conn.execute("VACUUM ANALYZE cn_search.post_search_documents")
    return elapsed


def aa_search(client, topic: str, q: str, limit: int) -> list[str]:
    """meili_search.search's request on the A/A copy of the topic's index."""
    if not segment.query_words(q):
        return []
    uid = AA_PREFIX + meili_index.index_uid(topic)
    return [h["event_id"] for h in client.index(uid).search(q, {"limit": limit, "offset": 0})["hits"]]


def aa_suggest(client, uids: list[str], q: str, limit: int) -> list[str]:
    """meili_search.suggest's federated request on the A/A copies."""
    if not segment.query_words(q):
        return []
    fields = ["event_id", "topic_id", "content"]
    result = client.multi_search([{"indexUid": u, "q": q, "attributesToRetrieve": fields} for u in uids],
                                 federation={"limit": 3 * limit})
    seen: list[str] = []
    for h in result["hits"]:
        if h["event_id"] not in seen:
            seen.append(h["event_id"])
    return seen[:limit]


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - started) * 1000


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p * (len(s) - 1))))]


def replay(conn, client, queries: list[dict], aa: bool) -> list[dict]:
    aa_uids = sorted(i.uid for i in client.get_indexes({"limit": 1000})["results"]
                     if i.uid.startswith(AA_PREFIX + "topic_")) if aa else []
    records = []
    for n, q in enumerate(queries):
        if q["class"].startswith("suggest"):
            pg_fn = lambda q=q: [i["event_id"] for i in pg_search.suggest(conn, q["q"], SUGGEST_LIMIT)]
            ms_fn = lambda q=q: [i["event_id"] for i in meili_search.suggest(client, q["q"], SUGGEST_LIMIT)]
            aa_fn = lambda q=q: aa_suggest(client, aa_uids, q["q"], SUGGEST_LIMIT)
        else:
            pg_fn = lambda q=q: [i["event_id"] for i in pg_search.search(conn, q["topic"], q["q"], SEARCH_LIMIT).items]
            ms_fn = lambda q=q: [i["event_id"] for i in meili_search.search(client, q["topic"], q["q"], SEARCH_LIMIT).items]
            aa_fn = lambda q=q: aa_search(client, q["topic"], q["q"], SEARCH_LIMIT)
        pg_fn(), ms_fn()  # warm-up
        if n % 2:
            (ms_ids, ms_ms), (pg_ids, pg_ms) = timed(ms_fn), timed(pg_fn)
        else:
            (pg_ids, pg_ms), (ms_ids, ms_ms) = timed(pg_fn), timed(ms_fn)
        aa_ids = aa_fn() if aa else None
        records.append({**q, "pg_ids": pg_ids, "meili_ids": ms_ids, "aa_ids": aa_ids, "pg_ms": pg_ms, "meili_ms": ms_ms})
        if (n + 1) % 100 == 0:
            log(f"  {n + 1}/{len(queries)} queries")
    grades = [legacy_grades(r["meili_ids"]) for r in records]
    for r, o, g in zip(records, [overlap_at_10(r["pg_ids"], r["meili_ids"]) for r in records],
                       ndcg_at_10([r["pg_ids"] for r in records], grades)):
        r["overlap"], r["ndcg"] = o, g
    if aa:
        for r, g in zip(records, ndcg_at_10([r["aa_ids"] for r in records], grades)):
            r["aa_overlap"], r["aa_ndcg"] = overlap_at_10(r["aa_ids"], r["meili_ids"]), g
    return records


def table(records: list[dict], aa: bool) -> str:
    head = f"{'class':<12} {'n':>4} {'overlap':>8} {'NDCG':>6} "
    if aa:
        head += f"{'AA ovl':>7} {'AA NDCG':>7} "
    head += f"{'pg P50':>7} {'pg P95':>7} {'ms P50':>7} {'ms P95':>7} {'P95 x':>6} {'pg 0':>5} {'ms 0':>5}"
    lines = [head, "-" * len(head)]
    groups = [(c, [r for r in records if r["class"] == c]) for c in CLASSES]
    groups = [(c, g) for c, g in groups if g]
    groups.append(("search", [r for r in records if not r["class"].startswith("suggest")]))
    groups.append(("suggest", [r for r in records if r["class"].startswith("suggest")]))
    groups.append(("ALL", records))
    for name, g in groups:
        if not g:
            continue
        if name == "search":
            lines.append("-" * len(head))
        mean = lambda k: statistics.fmean(r[k] for r in g)
        line = f"{name:<12} {len(g):>4} {mean('overlap'):>8.3f} {mean('ndcg'):>6.3f} "
        if aa:
            line += f"{mean('aa_overlap'):>7.3f} {mean('aa_ndcg'):>7.3f} "
        pg, ms = [r["pg_ms"] for r in g], [r["meili_ms"] for r in g]
        line += (f"{pct(pg, .5):>7.1f} {pct(pg, .95):>7.1f} {pct(ms, .5):>7.1f} {pct(ms, .95):>7.1f} "
                 f"{pct(pg, .95) / pct(ms, .95):>6.1f} {sum(not r['pg_ids'] for r in g):>5} "
                 f"{sum(not r['meili_ids'] for r in g):>5}")
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--posts", type=int, default=None, help="a seeded sample of N posts (default: all)")
    ap.add_argument("--classes", default=",".join(CLASSES))
    ap.add_argument("--per-class", type=int, default=None)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--no-aa", action="store_true", help="skip the A/A copy")
    ap.add_argument("--reuse", action="store_true", help="keep both engines' documents when they match the sample")
    ap.add_argument("--json", help="write per-query records here")
    args = ap.parse_args()
    s = Settings.from_env()
    client = meili_index.client(s.meili_url, s.meili_master_key, timeout=120)
    version = client.get_version()
    posts, queries = load(args.dir, args.posts, args.seed, args.classes.split(","), args.per_class)
    digest = hashlib.sha256("\n".join(p["event_id"] for p in posts).encode()).hexdigest()[:16]
    stamp = f"{digest}/{len(posts)}/{NORMALIZER_VERSION}/{pg_documents.INDEX_FORMAT}"
    log(f"{len(posts)} posts, {len(queries)} queries; Meilisearch {version.get('pkgVersion')}")
    with db.connect(s.database_url) as conn:
        if conn.execute("SELECT to_regnamespace('cn_relay') IS NULL").fetchone()[0]:
            apply_product_schema(conn)  # a fresh bench home: the product's (empty) tables, then ours
    migrate(s.database_url)
    with db.connect(s.database_url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS cn_search.bench_parity_stamp (meili text, pg text)")
        held = conn.execute("SELECT meili, pg FROM cn_search.bench_parity_stamp").fetchone() or (None, None)
        docs = None
        meili_stamp = f"{digest}/{len(posts)}/{'aa' if not args.no_aa else 'noaa'}"
        if not (args.reuse and held[0] == meili_stamp):
            docs = meili_documents(posts)
            started = time.perf_counter()
            index_meili(client, docs, "")
            log(f"meilisearch: {len(docs)} documents in {time.perf_counter() - started:.1f}s")
            if not args.no_aa:
                shuffled = docs[:]
                random.Random(args.seed + 1).shuffle(shuffled)
                index_meili(client, shuffled, AA_PREFIX)
                log("meilisearch A/A copy indexed (shuffled order)")
        if not (args.reuse and held[1] == stamp):
            writes = doc_writes(posts)
            elapsed = index_pg(conn, writes)
            log(f"postgresql: {len(writes)} documents in {elapsed:.1f}s ({len(writes) / elapsed:.0f} docs/s)")
        conn.execute("DELETE FROM cn_search.bench_parity_stamp")
        conn.execute("INSERT INTO cn_search.bench_parity_stamp VALUES (%s, %s)", (meili_stamp, stamp))
        meili_search.topic_index_cache.clear()
        uid = meili_index.index_uid(queries[0]["topic"]) if queries else None
        rules = client.index(uid).get_settings().get("rankingRules") if uid else None
        records = replay(conn, client, queries, not args.no_aa)
    print(f"Meilisearch {version.get('pkgVersion')} (commit {str(version.get('commitSha'))[:8]}), ranking rules {rules}")
    print(f"corpus {len(posts)} posts ({digest}), {len(queries)} queries, normalizer v{NORMALIZER_VERSION}")
    print(table(records, not args.no_aa))
    if args.json:
        Path(args.json).write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
