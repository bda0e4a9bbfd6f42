"""Freshness: commit -> searchable per engine, with the tail run (a real Dagster run of tail_job).

A product-shaped writer (ProductWriter: event + topics + outbox + pg_notify in one transaction) publishes
notes at each rate for N seconds; two pollers look for every post as users would: PostgreSQL (the post's
live row in cn_search.post_search_documents) and Meilisearch (the document, fetched by id from its topic
index). Prints P50/P95/max commit -> searchable per engine, and posts never seen.

    .venv/bin/python bench/freshness.py [--rates 10,100] [--seconds 30] [--mode dual]

Uses DATABASE_URL's server (a scratch database `bench_freshness`, recreated) and MEILI_URL/MEILI_MASTER_KEY
(topic indexes `topic_kukuri_bench_fresh-*`); without them, the embedded services.
The old sensor-per-batch path is not measured here: it needs a live daemon (sensor ticks + a launched run per
batch); issue 17 measured it under `dagster dev` at 2 posts/s: P95 31.4 s (PostgreSQL) / 34.6 s (Meilisearch).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import requests

from search_migration import db
from search_migration.cutover import flags
from search_migration.local import demo_seed, services
from search_migration.local.product_writer import ProductWriter, build_event, pubkey_of
from search_migration.settings import Settings
from search_migration.source import contract
from search_migration.write_path import handover, meili_index

SCRATCH = "bench_freshness"
NS = "bench-fresh"
REPO = Path(__file__).resolve().parents[1]


def scratch_url(url: str) -> str:
    parts = urlsplit(url)
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{SCRATCH}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{SCRATCH}"')
    return urlunsplit(parts._replace(path=f"/{SCRATCH}"))


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))] if s else float("nan")


class Poller(threading.Thread):
    """Finds each committed post in one engine; records commit -> first seen."""

    def __init__(self, name, find, interval=0.05):
        super().__init__(daemon=True, name=name)
        self.find, self.interval = find, interval
        self.pending: dict[str, tuple[str, float]] = {}  # event id -> (topic, commit time)
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()

    def add(self, event_id, topic, committed):
        with self.lock:
            self.pending[event_id] = (topic, committed)

    def run(self):
        while not self.done.is_set():
            with self.lock:
                pending = dict(self.pending)
            if pending:
                found = self.find(pending)
                now = time.time()
                with self.lock:
                    for e in found:
                        if e in self.pending:
                            self.seen[e] = now - self.pending.pop(e)[1]
            time.sleep(self.interval)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="10,100")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--mode", default="dual")
    ap.add_argument("--topics", type=int, default=4)
    ap.add_argument("--drain-timeout", type=float, default=60)
    args = ap.parse_args()

    if os.environ.get("DATABASE_URL") and os.environ.get("MEILI_URL"):
        base_url, meili_url, key = os.environ["DATABASE_URL"], os.environ["MEILI_URL"], os.environ.get("MEILI_MASTER_KEY", "")
    else:
        s = Settings.from_env(os.environ)
        services.up(s)
        base_url, meili_url, key = s.embedded_pg_url(), s.meili_url, s.meili_master_key
    url = scratch_url(base_url)
    meili = meili_index.client(meili_url, key)
    for uid in meili_index.topic_indexes(meili):
        if uid.startswith(f"topic_kukuri_bench"):
            meili_index.delete_index(meili, uid)
    demo_seed.seed(url, meili, posts=100, topics=2, seed=1, namespace=NS)
    topics = [f"kukuri:{NS}-live-{i}" for i in range(args.topics)]
    with db.connect(url) as conn:
        handover.adopt(conn, from_consumer=contract.PRODUCT_INDEXER, by="bench", reason="freshness bench")
        flags.set_flags(conn, {"search_write_mode": args.mode}, by="bench", reason="freshness bench")

    home = Path(tempfile.mkdtemp(prefix="bench-fresh-dh-"))
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    cfg = home / "run.yaml"
    cfg.write_text(json.dumps({"ops": {"tail": {"config": {"max_seconds": 3600, "poll_seconds": 1.0,
                                                            "batch_size": 500}}}}))
    env = {**os.environ, "DATABASE_URL": url, "MEILI_URL": meili_url, "MEILI_MASTER_KEY": key, "DAGSTER_HOME": str(home)}
    log = home / "tail.log"
    run = subprocess.Popen([sys.executable, "-m", "dagster", "job", "execute", "-m", "search_migration.definitions",
                            "-j", "tail_job", "--config", str(cfg)], env=env, cwd=REPO, stdout=log.open("w"),
                           stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with db.connect(url) as conn:
            deadline = time.time() + 180
            while time.time() < deadline:
                row = conn.execute("SELECT state FROM cn_search.tail_runs ORDER BY started_at DESC LIMIT 1").fetchone()
                if row and row[0] == "tailing":
                    break
                if run.poll() is not None:
                    raise SystemExit(log.read_text()[-3000:])
                time.sleep(0.2)
        print(f"tail run up ({args.mode}); machine: {os.cpu_count()} cores")
        for rate in [int(r) for r in args.rates.split(",")]:
            measure(url, meili_url, key, topics, rate, args.seconds, args.drain_timeout)
    finally:
        os.killpg(run.pid, 2)  # SIGINT: the tail drains
        run.wait(timeout=60)


def measure(url, meili_url, key, topics, rate, seconds, drain_timeout):
    pg_conn = db.connect(url)
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {key}"} if key else {})

    def in_pg(pending):
        return {r[0] for r in pg_conn.execute("SELECT post_id FROM cn_search.post_search_documents "
                                              "WHERE post_id = ANY(%s) AND NOT is_deleted", (list(pending),))}

    def in_meili(pending):
        found = set()
        by_topic: dict[str, list[str]] = {}
        for e, (t, _) in pending.items():
            by_topic.setdefault(t, []).append(e)
        for t, ids in by_topic.items():
            r = session.post(f"{meili_url}/indexes/{meili_index.index_uid(t)}/documents/fetch",
                             json={"ids": ids, "fields": ["event_id"], "limit": len(ids)}, timeout=10)
            if r.status_code == 200:
                found |= {d["event_id"] for d in r.json()["results"]}
        return found

    pollers = {"pg": Poller("pg", in_pg), "meili": Poller("meili", in_meili)}
    for p in pollers.values():
        p.start()
    writer = ProductWriter(db.connect(url))
    n = int(rate * seconds)
    start = time.time()
    for i in range(n):
        due = start + i / rate
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        topic = topics[i % len(topics)]
        event = build_event(pubkey=pubkey_of(f"bench:{i % 50}"), topics=[topic], created_at=int(time.time()),
                            content=f"freshness bench post {rate}/{i} 新しい投稿 ラーメン search me")
        writer.publish(event)
        committed = time.time()
        for p in pollers.values():
            p.add(event["id"], topic, committed)
    achieved = n / (time.time() - start)
    deadline = time.time() + drain_timeout
    while time.time() < deadline and any(p.pending for p in pollers.values()):
        time.sleep(0.1)
    for p in pollers.values():
        p.done.set()
    print(f"rate {rate}/s (achieved {achieved:.1f}/s) for {seconds:.0f}s, {n} posts:")
    for name, p in pollers.items():
        v = list(p.seen.values())
        print(f"  {name:6} commit->searchable P50 {pct(v, .5):.2f}s  P95 {pct(v, .95):.2f}s  max {max(v or [0]):.2f}s"
              f"  never seen {len(p.pending)}")
    pg_conn.close()


if __name__ == "__main__":
    main()
