"""Drills 7 and 9: the product keeps writing and reading through the whole migration.

Two product writers (inserts, edits, deletes, topic removals and additions, multi-topic posts, each in
one product transaction) and a reader run while the migration goes legacy -> dual -> backfill ->
shadow 5/25/50 -> live, rolls back to shadow and goes live again: every write-mode and read-backend
flip happens with writes in flight, and a third of the product's transactions commit slowly, so
later outbox seqs become visible before earlier ones. At the end the invariant holds in both engines and the reader saw
no failed request. Protections it leans on: the sequence-gap wait (two writers commit out of seq
order), the mode read per batch, tombstones for upserts of deleted posts, and versioned writes
racing the backfill.

`SEARCH_MIGRATION_SOAK_SECONDS` holds every stage that long under traffic (the soak, on demand).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from contextlib import contextmanager

from search_migration import db
from search_migration.local import demo_corpus
from search_migration.write_path import consumer as write_consumer
from search_migration.source import contract
from search_migration.search.read_router import ReadRouter

from ..support import invariants
from ..support.backfill import backfill_all
from ..support.cutover import QUERIES, evaluations, failure_message, run_job, shadow_traffic, stage_flags

SOAK_S = float(os.environ.get("SEARCH_MIGRATION_SOAK_SECONDS", "0"))


class ProductWriter(threading.Thread):
    """Writes like the product: the event row first (locking it), then topic rows and outbox rows."""

    def __init__(self, url: str, topics: list[str], seed: int, per_second: float):
        super().__init__(daemon=True, name=f"writer-{seed}")
        self.url, self.topics, self.seed, self.interval = url, topics, seed, 1.0 / per_second
        self.rng = random.Random(seed)
        self.posts = demo_corpus.live_traffic(topics, seed)  # the demo's text model: realistic relevance
        self.stop = threading.Event()
        self.ops: Counter[str] = Counter()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with db.connect(self.url) as conn:
                while not self.stop.wait(self.interval):
                    with conn.transaction():
                        self.ops[self._one(conn)] += 1
                        if self.rng.random() < 0.3:  # a slow product transaction: later seqs commit first
                            time.sleep(self.rng.uniform(0.05, 0.3))
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _outbox(self, conn, op: str, event_id: str, topics, reason: str) -> None:
        for t in topics:
            conn.execute("INSERT INTO cn_relay.events_outbox (op, event_id, topic_id, reason) VALUES (%s, %s, %s, %s)",
                         (op, event_id, t, reason))

    def _one(self, conn) -> str:
        roll = self.rng.random()
        if roll < 0.5:
            post = next(self.posts)
            conn.execute("INSERT INTO cn_relay.events (event_id, pubkey, kind, content, created_at) "
                         "VALUES (%s, %s, 1, %s, %s)", (post.event_id, post.pubkey, post.content, post.created_at))
            for t in post.topics:
                conn.execute("INSERT INTO cn_relay.event_topics VALUES (%s, %s)", (post.event_id, t))
            self._outbox(conn, "upsert", post.event_id, post.topics, "created")
            return "insert"
        # an existing live post, locked as the product does before changing it
        row = conn.execute("SELECT event_id FROM cn_relay.events WHERE NOT is_deleted "
                           "ORDER BY md5(event_id || %s) LIMIT 1 FOR UPDATE", (str(self.rng.random()),)).fetchone()
        if row is None:
            return "noop"
        event_id = row[0]
        topics = [t for (t,) in conn.execute("SELECT topic_id FROM cn_relay.event_topics WHERE event_id = %s",
                                             (event_id,))]
        if roll < 0.7:
            conn.execute("UPDATE cn_relay.events SET content = %s WHERE event_id = %s", (next(self.posts).content, event_id))
            self._outbox(conn, "upsert", event_id, topics, "edited")
            return "edit"
        if roll < 0.8:
            conn.execute("UPDATE cn_relay.events SET is_deleted = true WHERE event_id = %s", (event_id,))
            self._outbox(conn, "delete", event_id, topics, "deleted")
            return "delete"
        if roll < 0.9 and len(topics) > 1:
            conn.execute("DELETE FROM cn_relay.event_topics WHERE event_id = %s AND topic_id = %s",
                         (event_id, topics[-1]))
            self._outbox(conn, "delete", event_id, topics[-1:], "topic_removed")
            return "topic_removal"
        extra = [t for t in self.topics if t not in topics]
        if not extra:
            return "noop"
        conn.execute("INSERT INTO cn_relay.event_topics VALUES (%s, %s)", (event_id, extra[0]))
        self._outbox(conn, "upsert", event_id, extra[:1], "topic_added")
        return "topic_addition"


class Reader(threading.Thread):
    """A product reader: search and suggest through the router, whatever backend the flags pick."""

    def __init__(self, url: str, meili, uid: str, topics: list[str]):
        super().__init__(daemon=True, name="reader")
        self.router = ReadRouter(url, meili, uid)
        self.topics = topics
        self.stop = threading.Event()
        self.requests = 0
        self.backends: Counter[str] = Counter()
        self.failures: list[str] = []

    def run(self) -> None:
        rng = random.Random(3)
        with self.router:
            while not self.stop.wait(0.02):
                q = rng.choice(QUERIES)
                try:
                    page = self.router.search(rng.choice(self.topics), q, viewer=f"reader-{rng.randrange(1000)}")
                    self.router.suggest(q[:2], viewer=f"reader-{rng.randrange(1000)}")
                    self.backends[page["backend"]] += 1
                except Exception as exc:  # every failure counts against the drill
                    self.failures.append(f"{type(exc).__name__}: {exc}"[:200])
                self.requests += 2


class Consumer(threading.Thread):
    """The catch-up loop the sensor drives in production, pausable so a gate can read a still state."""

    def __init__(self, url: str, meili, uid: str):
        super().__init__(daemon=True, name="consumer")
        self.url, self.meili, self.uid = url, meili, uid
        self.stop, self.running, self.idle = threading.Event(), threading.Event(), threading.Event()
        self.running.set()
        self.batches = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with db.connect(self.url) as conn:
                while not self.stop.is_set():
                    if not self.running.is_set():
                        self.idle.set()
                        self.running.wait(0.1)
                        continue
                    self.idle.clear()
                    write_consumer.catch_up(conn, self.meili, self.uid, batch_size=200)
                    self.batches += 1
        except BaseException as exc:
            self.error = exc
        finally:
            self.idle.set()

    @contextmanager
    def paused(self):
        self.running.clear()
        assert self.idle.wait(120), "the consumer did not pause"
        try:
            yield
        finally:
            self.running.set()


def hold() -> None:
    """The soak: keep the stage under traffic (0 s in the regular run)."""
    if SOAK_S:
        time.sleep(SOAK_S)


def gates_pass(instance, consumer: Consumer, *names: str) -> None:
    with consumer.paused():  # writes keep flowing; the gates read engines that hold still
        checks = evaluations(instance, *names)
    assert checks and all(c.passed for c in checks), [f"{c.check_name}: {c.description}" for c in checks if not c.passed]


def advance(instance, target: str, rate: int | None = None, job: str = "cutover_job") -> None:
    result = run_job(instance, job, target_stage=target, shadow_rate=rate)
    assert result.success, failure_message(result)


def ramp(instance, url: str, meili, uid: str, consumer: Consumer, rates=(25, 50)) -> None:
    """Shadow traffic and both reports at each rate, then the next step; ends live."""
    for nxt in (*[("shadow", r) for r in rates], ("live", None)):
        shadow_traffic(url, meili, uid, int(stage_flags(url)["shadow_sample_rate"]))
        gates_pass(instance, consumer, "shadow_read_report", "search_drift_report")
        advance(instance, *nxt)
        hold()


def test_writes_and_reads_flow_through_the_whole_migration(dagster_env, seeded, meili, index_uid):
    instance, url = dagster_env, seeded
    with db.connect(url) as conn:
        topics = contract.topic_ids(conn)
    writers = [ProductWriter(url, topics, seed, per_second=15) for seed in (1, 2)]
    reader, consumer = Reader(url, meili, index_uid, topics), Consumer(url, meili, index_uid)
    for t in (*writers, reader, consumer):
        t.start()
    started = time.monotonic()
    try:
        hold()                                   # legacy: meili_only
        advance(instance, "dual")                # write-mode flip with writes in flight
        backfill_all(url)                        # racing the writers and the consumer
        gates_pass(instance, consumer, "search_drift_report")
        advance(instance, "shadow", 5)
        ramp(instance, url, meili, index_uid, consumer)              # reads flip to PostgreSQL
        advance(instance, "shadow", 50, job="rollback_job")          # and back to Meilisearch
        assert stage_flags(url)["search_read_backend"] == "meili"
        ramp(instance, url, meili, index_uid, consumer, rates=())    # and forward again
        assert stage_flags(url)["search_read_backend"] == "pg"
    finally:
        for w in writers:
            w.stop.set()
            w.join(30)
        reader.stop.set()
        reader.join(30)
        consumer.stop.set()
        consumer.join(120)
    elapsed = time.monotonic() - started
    for t in (*writers, consumer):
        assert t.error is None, repr(t.error)
    ops = sum((w.ops for w in writers), Counter())
    assert all(ops[k] > 0 for k in ("insert", "edit", "delete")), ops
    assert not reader.failures, reader.failures[:5]
    assert reader.backends["pg"] > 0 and reader.backends["meili"] > 0, reader.backends

    with db.connect(url) as conn:
        head = write_consumer.catch_up(conn, meili, index_uid).end_offset
        assert head == contract.outbox_head(conn)
        inv = invariants.check(conn, head, meili, index_uid)
    print(f"\ncontinuous writer: {sum(ops.values())} writes in {elapsed:.0f} s "
          f"({sum(ops.values()) / elapsed:.1f}/s) {dict(ops)}; reader {reader.requests} requests, 0 failed; "
          f"invariant: {inv.checked} pairs checked, lost {inv.lost}, duplicated {inv.duplicated}, "
          f"resurrected {inv.resurrected}, wrong version {inv.wrong_version}")
    assert inv.ok and inv.quarantined == 0, inv.as_dict()
