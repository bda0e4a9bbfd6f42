"""Catch-up throughput: outbox rows/s into Meilisearch alone, PostgreSQL alone, and both (dual).

On the product's shape: the demo corpus written by the product's writer (events, topics, outbox in one
transaction, as cn-relay ingests them) into `cn_relay`, one Meilisearch index per topic
(`topic_kukuri_bench-catchup-*`), our consumer handed over at offset 0. All three modes are measured in
the same run on the same outbox rows, so the ratios hold whatever the machine. Uses the embedded
services (SEARCH_MIGRATION_PG_PORT / SEARCH_MIGRATION_MEILI_PORT); a scratch database `bench_catchup`
is created and dropped.

    flock -w 1800 -x /tmp/quiet.lock .venv/bin/python bench/catchup_throughput.py [--rows 100000] [--repeat 1]

To compare two checkouts in one session, run this file against the other one's package:
`PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/catchup_throughput.py` (it prints which).

Goal (DESIGN.md): >= 5,000 rows/s applied to both engines.
"""

from __future__ import annotations

import argparse
import os
import time
from urllib.parse import urlsplit

import pandas as pd

import search_migration
from search_migration import db
from search_migration.cutover import flags
from search_migration.local import demo_corpus, services
from search_migration.local.product_fixture import apply_product_schema
from search_migration.local.product_writer import ProductWriter, Rejected
from search_migration.schema import migrate
from search_migration.search import segment
from search_migration.settings import Settings
from search_migration.source import contract
from search_migration.write_path import consumer, handover, meili_index

SCRATCH = "bench_catchup"
NS = "bench-catchup"
TOPICS = 50
STATE = ("post_search_documents", "consumer_side_offsets", "side_write_failures", "dead_letters", "outbox_gaps",
         "index_freshness_observations", "index_freshness_buckets", "index_freshness_totals")


def bench_indexes(meili) -> list[str]:
    return [uid for uid in meili_index.topic_indexes(meili) if uid.startswith(f"topic_kukuri_{NS}")]


def reset(conn, meili) -> None:
    """Every engine empty and the consumer back at offset 0 (the handover's), the outbox untouched."""
    present = [t for t in STATE if conn.execute("SELECT to_regclass(%s)", (f"cn_search.{t}",)).fetchone()[0]]
    conn.execute("TRUNCATE " + ", ".join(f"cn_search.{t}" for t in present) + " CASCADE")
    contract.set_consumer_offset(conn, contract.CONSUMER, 0)
    for uid in bench_indexes(meili):
        meili_index.delete_index(meili, uid)


def write_product_rows(conn, rows: int) -> int:
    """The demo corpus through the product's writer until `rows` outbox rows exist; the last seq."""
    conn.execute("SET synchronous_commit = off")  # durability only: the bench database is scratch
    writer = ProductWriter(conn)
    posts = int(rows / 1.2) + 100
    written = 0
    for batch in demo_corpus.batches(posts, TOPICS, 42, NS):
        for item in batch:
            try:
                written += len(writer.publish(item.event, now=item.now))
            except Rejected:
                continue
        if written >= rows:
            break
    conn.execute("RESET synchronous_commit")
    seqs = conn.execute("SELECT seq FROM cn_relay.events_outbox ORDER BY seq LIMIT %s", (rows,)).fetchall()
    return seqs[-1][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=consumer.DEFAULT_BATCH_SIZE)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    s = Settings.from_env({k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MEILI_URL")})
    services.up(s)
    admin = urlsplit(s.embedded_pg_url())._replace(path="/postgres").geturl()
    url = urlsplit(s.embedded_pg_url())._replace(path=f"/{SCRATCH}").geturl()
    with db.connect(admin) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {SCRATCH} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {SCRATCH}")
    meili = meili_index.client(s.meili_url, s.meili_master_key, timeout=120)
    print(f"code: {os.path.dirname(search_migration.__file__)}; machine: {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    try:
        with db.connect(url) as conn:
            apply_product_schema(conn)
        migrate.migrate(url)
        with db.connect(url) as conn:
            t0 = time.perf_counter()
            to_seq = write_product_rows(conn, args.rows)
            print(f"{args.rows} outbox rows written by the product's writer in {time.perf_counter() - t0:.0f}s",
                  flush=True)
            conn.execute("INSERT INTO cn_relay.consumer_offsets (consumer, last_seq) VALUES (%s, 0)",
                         (contract.PRODUCT_INDEXER,))
            handover.adopt(conn, from_consumer=contract.PRODUCT_INDEXER, by="bench", reason="catch-up throughput")
            results = []
            for _ in range(args.repeat):
                for mode in ("meili_only", "pg_only", "dual"):
                    reset(conn, meili)
                    segment._piece.cache_clear()  # each mode tokenizes these rows cold, as the first pass did
                    flags.set_flags(conn, {"search_write_mode": mode}, by="bench", reason="catch-up throughput")
                    started = time.perf_counter()
                    result = consumer.catch_up(conn, meili, to_seq=to_seq, batch_size=args.batch_size)
                    elapsed = time.perf_counter() - started
                    assert result.end_offset == to_seq and not result.stalled, result
                    results.append({"mode": mode, "rows": args.rows, "seconds": round(elapsed, 2),
                                    "rows_per_s": round(args.rows / elapsed)})
                    print(f"  {mode}: {args.rows / elapsed:,.0f} rows/s ({elapsed:.1f}s, load "
                          f"{os.getloadavg()[0]:.2f})", flush=True)
    finally:
        for uid in bench_indexes(meili):
            meili_index.delete_index(meili, uid)
        with db.connect(admin) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {SCRATCH} WITH (FORCE)")
    table = pd.DataFrame(results).groupby("mode", sort=False).median(numeric_only=True)
    dual = table.loc["dual", "rows_per_s"]
    table["dual_vs_this"] = (dual / table["rows_per_s"]).round(2)
    print(f"catch-up of {args.rows} outbox rows, batch size {args.batch_size}, {TOPICS} topic indexes")
    print(table.to_string())
    print(f"dual: {dual:.0f} rows/s (goal >= 5000: {'met' if dual >= 5000 else 'NOT met'})")


if __name__ == "__main__":
    main()
