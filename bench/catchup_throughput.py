"""Catch-up throughput: outbox rows/s into Meilisearch alone, PostgreSQL alone, and both (dual).

All three are measured in the same run on the same outbox rows, so the ratios hold whatever the
machine. Uses DATABASE_URL's server (a scratch database `bench_catchup` is created and dropped) and
MEILI_URL (a scratch index `bench_catchup`); without them, the embedded services.

    .venv/bin/python bench/catchup_throughput.py [--rows 100000] [--batch-size 1000] [--repeat 1]

Goal (DESIGN.md): >= 5,000 rows/s applied to both engines.
"""

from __future__ import annotations

import argparse
import time
from urllib.parse import urlsplit

import pandas as pd

from search_migration import db
from search_migration.local import demo_seed
from search_migration.cutover import flags
from search_migration.write_path import meili_index
from search_migration.schema import migrate
from search_migration.write_path import consumer
from search_migration.local import services
from search_migration.settings import Settings

SCRATCH = "bench_catchup"


def reset(conn, meili) -> None:
    conn.execute("TRUNCATE cn_search.post_search_documents, cn_search.consumer_side_offsets, "
                 "cn_search.side_write_failures, cn_search.dead_letters CASCADE")
    conn.execute("UPDATE cn_relay.consumer_offsets SET last_seq = 0")
    meili_index.delete_index(meili, SCRATCH)
    meili_index.ensure_index(meili, SCRATCH)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=consumer.DEFAULT_BATCH_SIZE)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    s = Settings.from_env()
    services.up(s)
    admin = urlsplit(s.database_url)._replace(path="/postgres").geturl()
    url = urlsplit(s.database_url)._replace(path=f"/{SCRATCH}").geturl()
    with db.connect(admin) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {SCRATCH} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {SCRATCH}")
    meili = meili_index.client(s.meili_url, s.meili_master_key, timeout=120)
    try:
        migrate.migrate(url)
        with db.connect(url) as conn:
            posts = int(args.rows / 1.3) + 1  # ~1.35 outbox rows per post
            demo_seed.write_source(conn, posts, 50, 42)
            seqs = conn.execute("SELECT seq FROM cn_relay.events_outbox ORDER BY seq LIMIT %s", (args.rows,))
            to_seq = seqs.fetchall()[-1][0]
            conn.execute("INSERT INTO cn_relay.consumer_offsets (consumer, last_seq) VALUES (%s, 0)",
                         (consumer.CONSUMER,))
            results = []
            for _ in range(args.repeat):
                for mode in ("meili_only", "pg_only", "dual"):
                    reset(conn, meili)
                    flags.set_flags(conn, {"search_write_mode": mode}, by="bench", reason="catch-up throughput")
                    started = time.perf_counter()
                    result = consumer.catch_up(conn, meili, SCRATCH, to_seq=to_seq,
                                                      batch_size=args.batch_size)
                    elapsed = time.perf_counter() - started
                    assert result.end_offset == to_seq and not result.stalled, result
                    results.append({"mode": mode, "rows": args.rows, "seconds": round(elapsed, 2),
                                    "rows_per_s": round(args.rows / elapsed)})
    finally:
        meili_index.delete_index(meili, SCRATCH)
        with db.connect(admin) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {SCRATCH} WITH (FORCE)")
    table = pd.DataFrame(results).groupby("mode", sort=False).median(numeric_only=True)
    dual = table.loc["dual", "rows_per_s"]
    table["dual_vs_this"] = (dual / table["rows_per_s"]).round(2)
    print(f"catch-up of {args.rows} outbox rows, batch size {args.batch_size}")
    print(table.to_string())
    print(f"dual: {dual:.0f} rows/s (goal >= 5000: {'met' if dual >= 5000 else 'NOT met'})")


if __name__ == "__main__":
    main()
