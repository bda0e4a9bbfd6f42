"""Which BackfillPolicy for post_search_documents: measured run overhead × measured partition cost.

A backfill of P partitions under multi_run(N) launches ceil(P/N) runs, at most L (the pool limit) at a
time; single_run() is one run, so one partition at a time. With O the wall time of one real Dagster run
that does no copying (process start, code load, run storage, an already-complete partition) and c the
engine's wall time per partition (from bench/backfill_1m.py on the 1M corpus: backfill seconds ×
workers / partitions):

    single_run      ≈ O + P·c
    multi_run(N)    ≈ ceil(ceil(P/N) / L) · (O + N·c)

O is measured here with real `dagster asset materialize` runs against the bench database; c is passed
in from the 1M bench. The default P = 200 topics × 26 weeks.

    eval "$(SEARCH_MIGRATION_HOME=$PWD/.local/bench1m SEARCH_MIGRATION_PG_PORT=55500 \
        SEARCH_MIGRATION_MEILI_PORT=7750 .venv/bin/search-migration services env)"
    .venv/bin/python bench/backfill_policy.py --per-partition-ms 40 [--samples 3]

Bounded: --samples sequential runs of one partition each (run bench/backfill_1m.py first: it creates
the bench database this uses).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import dagster as dg  # noqa: E402

from search_migration import db  # noqa: E402
from search_migration.backfill.partition_keys import topic_partition_key  # noqa: E402

from backfill_1m import bench_url  # noqa: E402


def run_overhead(url: str, samples: int) -> list[float]:
    """Wall seconds of real single-partition runs; the first copies (warm-up), the rest are no-ops."""
    with db.connect(url) as conn:
        topic = conn.execute("SELECT min(topic_id) FROM cn_search.backfill_manifest").fetchone()[0]
    key = f"2026-01-05|{topic_partition_key(topic)}"
    times = []
    with tempfile.TemporaryDirectory() as home:
        with dg.DagsterInstance.from_config(home) as instance:
            instance.add_dynamic_partitions("topics", [topic_partition_key(topic)])
        env = dict(os.environ, DATABASE_URL=url, DAGSTER_HOME=home)
        for _ in range(samples + 1):
            started = time.monotonic()
            subprocess.run([str(REPO / ".venv" / "bin" / "dagster"), "asset", "materialize", "-m",
                            "search_migration.definitions", "--select", "post_search_documents", "--partition", key],
                           env=env, cwd=REPO, check=True, capture_output=True)
            times.append(time.monotonic() - started)
    return times[1:]


def model(partitions: int, pool: int, overhead_s: float, per_partition_s: float) -> dict[str, float]:
    out = {"single_run": overhead_s + partitions * per_partition_s}
    for n in (1, 10, 25, 50, 100, 200, 400, 1000):
        runs = math.ceil(partitions / n)
        out[f"multi_run({n})"] = math.ceil(runs / pool) * (overhead_s + min(n, partitions) * per_partition_s)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-partition-ms", type=float, required=True, help="from bench/backfill_1m.py")
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--partitions", type=int, default=200 * 26)
    p.add_argument("--pool", type=int, default=2, help="concurrency.pools.default_limit in dagster.yaml")
    args = p.parse_args()
    url = bench_url(os.environ["DATABASE_URL"])
    times = run_overhead(url, args.samples)
    overhead = sorted(times)[len(times) // 2]
    predicted = model(args.partitions, args.pool, overhead, args.per_partition_ms / 1000)
    print(json.dumps({"run_overhead_seconds": [round(t, 2) for t in times], "overhead_median_s": round(overhead, 2),
                      "per_partition_ms": args.per_partition_ms, "partitions": args.partitions, "pool": args.pool,
                      "predicted_wall_seconds": {k: round(v) for k, v in predicted.items()},
                      "best": min(predicted, key=predicted.get)}, indent=2))


if __name__ == "__main__":
    main()
