"""Freshness: commit -> searchable per engine through a live `dagster dev`, tail run vs the old path.

A product-shaped writer (ProductWriter: event + topics + outbox + pg_notify in one transaction) publishes
notes at each rate for N seconds; two pollers look for every post as users would: PostgreSQL (the post's
live row in cn_search.post_search_documents) and Meilisearch (the document, fetched by id from its topic
index). Prints P50/P95/max commit -> searchable per engine, and posts never seen.

Each path runs under its own `dagster dev` (webserver, daemon, code server: the sensors tick as in
production) on the same scratch database:
  tail  - high_watermark_sensor keeps a tail_job run alive (the write path since issue 17);
  old   - SEARCH_MIGRATION_TAIL=off: the sensor requests a catchup_job run per range (before issue 17).

    flock -w 1800 -x /tmp/quiet.lock .venv/bin/python bench/freshness.py [--rates 10,100] [--seconds 30]
        [--paths tail,old] [--ui-port 3011]

Embedded services on SEARCH_MIGRATION_PG_PORT / SEARCH_MIGRATION_MEILI_PORT (scratch databases
`bench_freshness` and `bench_freshness_dagster`, topic indexes `topic_kukuri_bench-fresh-*`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
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


def scratch_url(url: str, name: str) -> str:
    parts = urlsplit(url)
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}"))


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


def dev_env(base_url: str, url: str, meili_url: str, key: str, path: str) -> tuple[dict, Path]:
    dagster_url = scratch_url(base_url, SCRATCH + "_dagster")
    home = Path(tempfile.mkdtemp(prefix=f"bench-fresh-{path}-"))
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DATABASE_URL": url, "MEILI_URL": meili_url, "MEILI_MASTER_KEY": key,
           "DAGSTER_HOME": str(home), "DAGSTER_PG_URL": dagster_url,
           "SEARCH_MIGRATION_TAIL": "on" if path == "tail" else "off"}
    return env, home


def wait_tail(url: str, dev: subprocess.Popen, log: Path, timeout: float = 300) -> float:
    """Until a tail run (launched by the sensor through the daemon) has made its first pass."""
    t0 = time.time()
    with db.connect(url) as conn:
        while time.time() - t0 < timeout:
            row = conn.execute("SELECT state FROM cn_search.tail_runs WHERE ended_at IS NULL "
                               "ORDER BY started_at DESC LIMIT 1").fetchone()
            if row and row[0] == "tailing":
                return time.time() - t0
            if dev.poll() is not None:
                raise SystemExit(log.read_text()[-3000:])
            time.sleep(0.5)
    raise SystemExit(f"no tail run within {timeout}s: {log.read_text()[-3000:]}")


def wait_caught_up(url: str, timeout: float = 300) -> None:
    with db.connect(url) as conn:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if contract.consumer_offset(conn, contract.CONSUMER) >= contract.outbox_head(conn):
                return
            time.sleep(0.5)
    raise SystemExit("the write path did not catch up before measuring")


def warm_up(url: str, topics: list[str]) -> None:
    with db.connect(url) as conn:
        writer = ProductWriter(conn)
        for t in topics:
            writer.publish(build_event(pubkey=pubkey_of("bench:warm-up"), topics=[t], created_at=int(time.time()),
                                       content="freshness bench warm-up"))
    wait_caught_up(url)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="10,100")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--mode", default="dual")
    ap.add_argument("--topics", type=int, default=4)
    ap.add_argument("--paths", default="tail,old")
    ap.add_argument("--ui-port", type=int, default=3011)
    ap.add_argument("--drain-timeout", type=float, default=120)
    args = ap.parse_args()

    s = Settings.from_env({k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MEILI_URL")})
    services.up(s)
    base_url, meili_url, key = s.embedded_pg_url(), s.meili_url, s.meili_master_key
    url = scratch_url(base_url, SCRATCH)
    meili = meili_index.client(meili_url, key)
    for uid in meili_index.topic_indexes(meili):
        if uid.startswith("topic_kukuri_bench"):
            meili_index.delete_index(meili, uid)
    demo_seed.seed(url, meili, posts=100, topics=2, seed=1, namespace=NS)
    topics = [f"kukuri:{NS}-live-{i}" for i in range(args.topics)]
    with db.connect(url) as conn:
        handover.adopt(conn, from_consumer=contract.PRODUCT_INDEXER, by="bench", reason="freshness bench")
        flags.set_flags(conn, {"search_write_mode": args.mode}, by="bench", reason="freshness bench")
    print(f"machine: {os.cpu_count()} cores; load {os.getloadavg()[0]:.2f}; write mode {args.mode}", flush=True)
    for path in args.paths.split(","):
        env, home = dev_env(base_url, url, meili_url, key, path)
        log = home / "dev.log"
        dev = subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "dev", "-w", str(REPO / "workspace.yaml"),
                                "-p", str(args.ui_port)], env=env, cwd=REPO, stdout=log.open("w"),
                               stderr=subprocess.STDOUT, start_new_session=True)
        try:
            if path == "tail":
                print(f"[{path}] dagster dev up; tail run tailing after {wait_tail(url, dev, log):.0f}s", flush=True)
            else:
                wait_caught_up(url)
                print(f"[{path}] dagster dev up, SEARCH_MIGRATION_TAIL=off: a catchup_job run per range", flush=True)
            if path == args.paths.split(",")[0]:  # each topic's index exists before measuring: creating one
                warm_up(url, topics)               # (the product's settings) is once per topic, not per post
            for rate in [int(r) for r in args.rates.split(",")]:
                wait_caught_up(url)
                measure(url, meili_url, key, topics, rate, args.seconds, args.drain_timeout, path)
        finally:
            os.killpg(dev.pid, signal.SIGTERM)  # dagster dev stops its processes; a tail run drains
            try:
                dev.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(dev.pid, signal.SIGKILL)
                dev.wait()
            with db.connect(url) as conn:  # a tail run the shutdown orphaned must not write in the next path
                deadline = time.time() + 60
                while time.time() < deadline and conn.execute(
                        "SELECT count(*) FROM cn_search.tail_runs WHERE ended_at IS NULL "
                        "AND heartbeat_at > now() - interval '10 seconds'").fetchone()[0]:
                    time.sleep(0.5)
                conn.execute("UPDATE cn_search.tail_runs SET ended_at = now(), state = 'ended', "
                             "end_reason = 'bench: dagster dev stopped' WHERE ended_at IS NULL")


def measure(url, meili_url, key, topics, rate, seconds, drain_timeout, path):
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
    print(f"[{path}] rate {rate}/s (achieved {achieved:.1f}/s) for {seconds:.0f}s, {n} posts; "
          f"load {os.getloadavg()[0]:.2f}:")
    for name, p in pollers.items():
        v = list(p.seen.values())
        print(f"  [{path}] {name:6} commit->searchable P50 {pct(v, .5):.2f}s  P95 {pct(v, .95):.2f}s  max {max(v or [0]):.2f}s"
              f"  never seen {len(p.pending)}", flush=True)
    pg_conn.close()


if __name__ == "__main__":
    main()
