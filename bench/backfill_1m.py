"""Backfill throughput vs a bare COPY of the same final rows into the same indexed table, in one run.

Runs against the 1,000,000-post corpus `demo seed` writes the way the product writes (the product's
`cn_relay`: events, event_topics, events_outbox, consumer_offsets, ...), but never touches its database:
it creates the product's schema in a separate database (`bench_backfill`) on the same server and
copies every `cn_relay` table into it once (binary COPY, read-only on the seeded side). The source
indexes `search-migration db source-indexes` prints (a DBA's optional step) exist only there and only
with --source-indexes; without it they are dropped, as on a product that never created them. Then, for
each of --pairs pairs, interleaved so both sides see the same machine load: a backfill from empty
(watermark + manifest included in its time; every topic × week partition, in runs of --per-run
partitions handed to W worker processes as they free up, W = the pool limit), checked against the
first backfill's rows, then a bare COPY of exactly those rows into the emptied, still-indexed table.
Prints every pair, the median ratio (backfill rows/s ÷ COPY rows/s) and the backfill wall times; a
shared machine is noisy, so judge the median.

    eval "$(SEARCH_MIGRATION_HOME=/work/bench1m SEARCH_MIGRATION_PG_PORT=55500 \
        SEARCH_MIGRATION_MEILI_PORT=7750 .venv/bin/search-migration services env)"
    .venv/bin/python bench/backfill_1m.py                     # full corpus, 2 workers, 3 pairs, no source indexes
    .venv/bin/python bench/backfill_1m.py --source-indexes    # the same with the DBA's source indexes
    .venv/bin/python bench/backfill_1m.py --writer unnest --topics 20 --pairs 1   # other writer, bounded
    .venv/bin/python bench/backfill_1m.py --weeks 26          # 200 topics x 26 weeks (policy input)

Bounded: at most --workers processes (default 2), --pairs sequential trials; the bench database stays
(~1.5 GB) for re-runs: drop it with `DROP DATABASE bench_backfill`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from search_migration import backfill  # noqa: E402
from search_migration import db  # noqa: E402
from search_migration.backfill import PartitionOptions, Window  # noqa: E402
from search_migration.cutover import flags  # noqa: E402
from search_migration.local.product_fixture import apply_product_schema  # noqa: E402
from search_migration.schema.migrate import MigrationError, migrate  # noqa: E402
from search_migration.source import contract, indexes  # noqa: E402
from search_migration.write_path import handover, pg_documents  # noqa: E402

BENCH_DB = "bench_backfill"
MONDAY = 1_767_571_200  # 2026-01-05, the first week of the Dagster partitions (defs/backfill.BACKFILL_START)
WEEK = 7 * 24 * 3600
SOURCE_INDEX_PREFIX = "search_migration_"  # source/indexes.py names every index it prints so

PER_RUN = 1000  # search_migration/defs/backfill.py: DEFAULT_BACKFILL_POLICY (the bench does not import Dagster)
WRITERS = {"unnest": pg_documents.apply_by_topic, "copy": pg_documents.apply_staged}

# --------------------------------------------------------------------------- setup


def bench_url(source_url: str) -> str:
    return urlsplit(source_url)._replace(path=f"/{BENCH_DB}").geturl()


def prepare(source_url: str) -> str:
    """A separate database holding a copy of the product's cn_relay (once); cn_search there is ours."""
    url = bench_url(source_url)
    with db.connect(source_url) as src:
        if not src.execute("SELECT 1 FROM pg_database WHERE datname = %s", (BENCH_DB,)).fetchone():
            src.execute(f'CREATE DATABASE "{BENCH_DB}"')
        tables = [r[0] for r in src.execute("SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                                            "WHERE schemaname = 'cn_relay' ORDER BY 1")]
    with db.connect(url) as dst:
        if dst.execute("SELECT to_regnamespace('cn_relay')").fetchone()[0] is None:
            apply_product_schema(dst)  # the product's own tables and indexes, nothing of ours
    try:
        migrate(url)
    except MigrationError as exc:  # a teammate's migration still in flux: bench the schema as applied
        print(f"note: {exc}; keeping the applied schema", file=sys.stderr)
    with db.connect(source_url) as src, db.connect(url) as dst:
        # one snapshot of every table (the seeded corpus may still be written), read-only on the seeded side
        src.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for table in tables:
            n_src = src.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            if dst.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == n_src:
                continue
            print(f"copying {table} ({n_src} rows) into {BENCH_DB}", flush=True)
            with dst.transaction():
                dst.execute(f"TRUNCATE {table} CASCADE")
                with src.cursor().copy(f"COPY {table} TO STDOUT (FORMAT binary)") as out, \
                        dst.cursor().copy(f"COPY {table} FROM STDIN (FORMAT binary)") as into:
                    for chunk in out:
                        into.write(chunk)
            dst.execute(f"ANALYZE {table}")
        src.execute("COMMIT")
        # the write path takes over from index-v1, as an operator does (a second adopt is a no-op); a corpus
        # copied before its seed's reindex has no index-v1 row yet, and the backfill does not need one
        if dst.execute("SELECT 1 FROM cn_relay.consumer_offsets WHERE consumer = %s",
                       (contract.PRODUCT_INDEXER,)).fetchone():
            handover.adopt(dst, from_consumer=contract.PRODUCT_INDEXER, by="bench", reason="backfill bench")
        else:
            print(f"note: no {contract.PRODUCT_INDEXER} offset in the copy (its seed is still before the reindex)",
                  file=sys.stderr)
        flags.set_flags(dst, {"search_write_mode": "dual"}, by="bench", reason="backfill bench")
    return url


def source_indexes(url: str, wanted: bool) -> list[str]:
    """Create (CONCURRENTLY, as a DBA would) or drop the printed source indexes, in the bench database only."""
    with db.connect(url) as conn:
        conn.autocommit = True
        if wanted:
            for statement in indexes.statements():
                conn.execute(statement)
        else:
            for (name,) in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'cn_relay' "
                                        "AND indexname LIKE %s", (SOURCE_INDEX_PREFIX + "%",)).fetchall():
                conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS cn_relay."{name}"')
        for table in ("cn_relay.events", "cn_relay.events_outbox"):
            conn.execute(f"ANALYZE {table}")
        return [r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'cn_relay' "
                                           "ORDER BY 1")]


def span(url: str) -> dict[str, int]:
    """The weekly partitions' span as the asset computes it (defs/backfill.partitioned_span, without
    Dagster): from 2026-01-05 to the end of the current week; posts outside are chunked into the edges."""
    now = max(contract.now_unix(), MONDAY)
    return {"chunk_floor": MONDAY, "chunk_ceiling": MONDAY + ((now - MONDAY) // WEEK + 1) * WEEK}


def reset(url: str) -> None:
    with db.connect(url) as conn:
        conn.execute("TRUNCATE cn_search.post_search_documents, cn_search.backfill_checkpoints, "
                     "cn_search.backfill_jobs, cn_search.backfill_page_log, cn_search.backfill_manifest, "
                     "cn_search.backfill_watermarks")
        conn.execute("CHECKPOINT")


def partitions(url: str, topics: int | None, weeks: int | None) -> list[tuple[str, str, Window]]:
    """Every topic x week of the span (as the UI launches them), or the first N of each."""
    with db.connect(url) as conn:
        names = [r[0] for r in conn.execute("SELECT DISTINCT topic_id FROM cn_search.backfill_manifest ORDER BY 1")]
        ceiling = conn.execute("SELECT chunk_ceiling FROM cn_search.backfill_watermarks "
                               "ORDER BY watermark_id DESC LIMIT 1").fetchone()[0]
    names = names[:topics] if topics else names
    n_weeks = min(weeks or 10**6, (ceiling - MONDAY) // WEEK)
    return [(f"{w}|{t}", t, Window(MONDAY + w * WEEK, MONDAY + (w + 1) * WEEK)) for w in range(n_weeks) for t in names]


def _worker(args) -> tuple[int, int, int]:
    url, writer, page_size, chunk = args
    copied = skipped = 0
    with backfill.Backfiller(url, owner=f"bench pid {os.getpid()}",
                             options=PartitionOptions(page_size=page_size, writer=WRITERS[writer])) as b:
        for r in b.run_many(chunk):
            copied += r.rows_copied
            skipped += r.rows_skipped
    return copied, skipped, len(chunk)


def backfill_trial(url: str, writer: str, workers: int, per_run: int, page_size: int, topics: int | None,
                   weeks: int | None) -> dict:
    """One backfill from empty: watermark + manifest, then every partition with W worker processes."""
    reset(url)
    started = time.monotonic()
    with db.connect(url) as conn:
        wm = backfill.capture_watermark(conn, by="bench", **span(url))
    manifest_s = time.monotonic() - started
    parts = partitions(url, topics, weeks)
    # runs of `per_run` partitions taken by whichever worker is free, as Dagster's run queue hands
    # multi_run(N) runs to the pool's slots
    chunks = [parts[i:i + per_run] for i in range(0, len(parts), per_run)]
    with mp.get_context("fork").Pool(workers) as pool:
        done = list(pool.imap_unordered(_worker, [(url, writer, page_size, c) for c in chunks]))
    backfill_s = time.monotonic() - started
    copied, skipped = sum(d[0] for d in done), sum(d[1] for d in done)
    with db.connect(url) as conn:
        docs = conn.execute("SELECT count(*) FROM cn_search.post_search_documents").fetchone()[0]
        failed = conn.execute("SELECT count(*) FROM cn_search.backfill_jobs WHERE status <> 'succeeded'").fetchone()[0]
        rows = conn.execute(FINGERPRINT_SQL).fetchone()
    assert docs == copied and failed == 0, (docs, copied, failed)
    return {"fingerprint": [int(rows[0]), str(rows[1])], "partitions": len(parts), "watermark": wm.seq,
            "manifest_rows": wm.manifest_rows, "documents": docs, "rows_skipped": skipped, "manifest_seconds": round(manifest_s, 2), "seconds": round(backfill_s, 2),
            "rows_per_second": round(docs / backfill_s),
            "per_partition_ms": round(1000 * (backfill_s - manifest_s) * workers / len(parts), 2)}


# the documents' identity, version and content, order-independent: every trial must produce the same rows
FINGERPRINT_SQL = """
SELECT count(*), sum(hashtextextended(post_id || '|' || topic_id || '|' || source_seq || '|' || is_deleted || '|'
                                      || content || '|' || search_tokens::text, 0)::numeric)
FROM cn_search.post_search_documents
"""


def dump(url: str, path: Path) -> int:
    """The backfill's final rows, in binary COPY format: what every bare COPY loads."""
    with db.connect(url) as conn:
        with path.open("wb") as f, conn.cursor().copy(
                "COPY cn_search.post_search_documents TO STDOUT (FORMAT binary)") as out:
            for chunk in out:
                f.write(chunk)
        return conn.execute("SELECT count(*) FROM cn_search.post_search_documents").fetchone()[0]


def bare_copy(url: str, path: Path) -> float:
    """The same final rows, COPYed into the emptied, still-indexed table."""
    with db.connect(url) as conn:
        conn.execute("TRUNCATE cn_search.post_search_documents")
        conn.execute("CHECKPOINT")
        started = time.monotonic()
        with conn.transaction(), path.open("rb") as f, conn.cursor().copy(
                "COPY cn_search.post_search_documents FROM STDIN (FORMAT binary)") as into:
            while chunk := f.read(1 << 20):
                into.write(chunk)
        return time.monotonic() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--writer", choices=sorted(WRITERS), default="copy", help="copy: what the asset uses")
    p.add_argument("--workers", type=int, default=2, help="parallel partitions (the Dagster pool limit)")
    p.add_argument("--per-run", type=int, default=PER_RUN,
                   help="partitions per run (the asset's BackfillPolicy.multi_run)")
    p.add_argument("--page-size", type=int, default=backfill.DEFAULT_PAGE_SIZE)
    p.add_argument("--topics", type=int, help="only the first N topics (bounded runs)")
    p.add_argument("--weeks", type=int, help="only the first N weeks")
    p.add_argument("--pairs", type=int, default=3, help="backfill/COPY pairs, interleaved")
    p.add_argument("--prepare-only", action="store_true",
                   help="copy the corpus into the bench database and stop (outside a timing lock)")
    p.add_argument("--source-indexes", action="store_true",
                   help="with the indexes `db source-indexes` prints (created in the bench database only)")
    args = p.parse_args()
    source_url = os.environ.get("DATABASE_URL")
    if not source_url:
        sys.exit("error: DATABASE_URL is not set; eval the bench1m `services env` first (see the docstring)")
    url = prepare(source_url)
    if args.prepare_only:
        return
    relay_indexes = source_indexes(url, args.source_indexes)
    with db.connect(url) as conn:
        doc_indexes = [r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'cn_search' "
                                              "AND tablename = 'post_search_documents' ORDER BY 1")]
    print(json.dumps({"writer": args.writer, "workers": args.workers, "page_size": args.page_size,
                      "source_indexes": args.source_indexes, "cn_relay_indexes": relay_indexes,
                      "indexes": doc_indexes}), flush=True)
    ratios, walls = [], []
    with tempfile.TemporaryDirectory() as tmp:
        rows = Path(tmp) / "docs.bin"
        for i in range(args.pairs):
            b = backfill_trial(url, args.writer, args.workers, args.per_run, args.page_size, args.topics, args.weeks)
            if i == 0:
                rows_in_dump, first = dump(url, rows), b["fingerprint"]
            assert b["fingerprint"] == first, (b["fingerprint"], first)
            copy_s = bare_copy(url, rows)
            ratio = copy_s / b["seconds"]  # = backfill rows/s ÷ COPY rows/s: the same rows on both sides
            ratios.append(ratio)
            walls.append(b["seconds"])
            print(json.dumps({"pair": i + 1, "backfill": b, "bare_copy_seconds": round(copy_s, 2),
                              "bare_copy_rows_per_second": round(rows_in_dump / copy_s), "ratio": round(ratio, 3),
                              "load_avg_1m": round(os.getloadavg()[0], 1)}), flush=True)
    print(json.dumps({"source_indexes": args.source_indexes, "pairs": args.pairs, "ratios": [round(r, 3) for r in ratios],
                      "median_ratio": round(statistics.median(ratios), 3),
                      "backfill_seconds": walls, "median_backfill_seconds": round(statistics.median(walls), 2),
                      "goal": "median_ratio >= 0.5 and backfill_seconds < 120"}), flush=True)


if __name__ == "__main__":
    main()
