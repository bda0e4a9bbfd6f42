"""Drills 7 and 9: the product keeps writing and reading through the whole migration.

Two product writers (through the product's writer: notes in one to three topics, new versions of
replaceable and addressable events, versions that leave or join a topic, NIP-09 deletions, a DSAR deletion
now and then, each in one product transaction) and a reader run while the migration goes legacy -> dual -> backfill ->
shadow 5/25/50 -> live, rolls back to shadow and goes live again: every write-mode and read-backend
flip happens with writes in flight, and a third of the product's transactions commit slowly, so
later outbox seqs become visible before earlier ones. At the end the invariant holds in both engines and the reader saw
no failed request. Protections it leans on: the sequence-gap wait (two writers commit out of seq
order), the mode read per batch, tombstones for upserts of deleted posts, older versions leaving every
topic when a newer one arrives, and versioned writes racing the backfill.

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
from search_migration.local.product_writer import ProductWriter as RelayWriter, build_event
from search_migration.write_path import consumer as write_consumer
from search_migration.source import contract
from search_migration.search.read_router import ReadRouter

from ..support import invariants
from ..support.backfill import backfill_all
from .helpers import DRILL_POLICY, explain
from ..support.cutover import QUERIES, evaluations, failure_message, run_job, shadow_traffic, stage_flags, use_policy

SOAK_S = float(os.environ.get("SEARCH_MIGRATION_SOAK_SECONDS", "0"))


class Writer(threading.Thread):
    """Writes as the product does, through its writer (cn-relay's ingest: event, topic rows and one outbox
    row per topic in one transaction): the demo's live traffic (notes in 1-3 topics, expiring and backdated
    notes, new versions of profiles, lists and articles, late older versions, NIP-09 deletions of one's own
    notes and articles), plus new article versions that leave or join a topic, and now and then a DSAR
    deletion of an author. A third of the transactions commit slowly, so later seqs become visible first."""

    def __init__(self, url: str, topics: list[str], seed: int, per_second: float):
        super().__init__(daemon=True, name=f"writer-{seed}")
        self.url, self.topics, self.seed, self.interval = url, topics, seed, 1.0 / per_second
        self.rng = random.Random(seed)
        self.posts = demo_corpus.live_traffic(topics, seed)  # the demo's text model: realistic relevance
        self.articles: dict[tuple[str, str], dict] = {}  # (pubkey, d) -> the newest version this writer wrote
        self.notes: list[tuple[str, str, list[str]]] = []  # (id, pubkey, topics) of notes it may delete
        self.stop = threading.Event()
        self.ops: Counter[str] = Counter()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with db.connect(self.url) as conn:
                writer = RelayWriter(conn)
                while not self.stop.wait(self.interval):
                    with conn.transaction():  # the writer's own transaction nests in it: commits at the end
                        self.ops[self._one(writer)] += 1
                        if self.rng.random() < 0.3:  # a slow product transaction: later seqs commit first
                            time.sleep(self.rng.uniform(0.05, 0.3))
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _one(self, writer: RelayWriter) -> str:
        roll = self.rng.random()
        if roll < 0.06 and self.articles:  # a new version of an article that leaves or joins a topic
            key = self.rng.choice(sorted(self.articles))
            old = self.articles[key]
            own = [tg[1] for tg in old["tags"] if tg[0] == "t"]
            extra = [t for t in self.topics if t not in own]
            moved = own[:-1] if len(own) > 1 else own + extra[:1]
            event = build_event(pubkey=old["pubkey"], kind=old["kind"], topics=moved,
                                created_at=max(int(time.time()), old["created_at"] + 1),
                                content=old["content"] + " (moved)", tags=[tg for tg in old["tags"] if tg[0] != "t"])
            writer.publish(event)
            self.articles[key] = event
            return "topic_removal" if len(moved) < len(own) else "topic_addition"
        if roll < 0.062 and self.articles:  # a personal-data deletion of one of the authors
            pubkey = self.rng.choice(sorted(self.articles))[0]
            writer.dsar(pubkey)
            self.articles = {k: v for k, v in self.articles.items() if k[0] != pubkey}
            self.notes = [n for n in self.notes if n[1] != pubkey]
            return "dsar"
        if roll < 0.15 and self.notes:  # the author deletes one of their notes (NIP-09), in its first topic
            event_id, pubkey, topics = self.notes.pop(self.rng.randrange(len(self.notes)))
            writer.publish(build_event(pubkey=pubkey, kind=5, topics=topics[:1], content="",
                                       created_at=int(time.time()), tags=[["e", event_id]]))
            return "deletion"
        item = next(self.posts)
        writer.publish(item.event, now=item.now)
        event = item.event
        if event["kind"] == 30023:
            d = next(tg[1] for tg in event["tags"] if tg[0] == "d")
            self.articles[(event["pubkey"], d)] = event
        elif event["kind"] == 1:
            self.notes.append((event["id"], event["pubkey"], [tg[1] for tg in event["tags"] if tg[0] == "t"]))
        return item.role


class Reader(threading.Thread):
    """A product reader: search and suggest through the router, whatever backend the flags pick."""

    def __init__(self, url: str, meili, topics: list[str]):
        super().__init__(daemon=True, name="reader")
        self.router = ReadRouter(url, meili)
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

    def __init__(self, url: str, meili):
        super().__init__(daemon=True, name="consumer")
        self.url, self.meili = url, meili
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
                    try:
                        write_consumer.catch_up(conn, self.meili, batch_size=200)
                    except write_consumer.ConsumerBusy:  # a rollback's own catch-up: the sensor skips too
                        self.stop.wait(0.1)
                        continue
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


def ramp(instance, url: str, meili, consumer: Consumer, rates=(25, 50)) -> None:
    """Shadow traffic and both reports at each rate, then the next step; ends live."""
    for nxt in (*[("shadow", r) for r in rates], ("live", None)):
        shadow_traffic(url, meili, int(stage_flags(url)["shadow_sample_rate"]))
        gates_pass(instance, consumer, "shadow_read_report", "search_drift_report")
        advance(instance, *nxt)
        hold()


def test_writes_and_reads_flow_through_the_whole_migration(dagster_env, seeded, meili, monkeypatch, tmp_path):
    instance, url = dagster_env, seeded  # the product's corpus in index-v1's topic indexes, handed over
    use_policy(monkeypatch, tmp_path, **DRILL_POLICY)
    with db.connect(url) as conn:
        topics = contract.topic_ids(conn)
    writers = [Writer(url, topics, seed, per_second=15) for seed in (1, 2)]
    reader, consumer = Reader(url, meili, topics), Consumer(url, meili)
    for t in (*writers, reader, consumer):
        t.start()
    started = time.monotonic()
    try:
        hold()                                   # legacy: meili_only
        advance(instance, "dual")                # write-mode flip with writes in flight
        backfill_all(url)                        # racing the writers and the consumer
        gates_pass(instance, consumer, "search_drift_report")
        advance(instance, "shadow", 5)
        ramp(instance, url, meili, consumer)              # reads flip to PostgreSQL
        advance(instance, "shadow", 50, job="rollback_job")          # and back to Meilisearch
        assert stage_flags(url)["search_read_backend"] == "meili"
        ramp(instance, url, meili, consumer, rates=())    # and forward again
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
    # new notes, new versions, versions that move between topics and deletions all happened in flight
    kinds = {"insert": ("note", "expiring", "backdated"),
             "new version": ("profile", "contacts", "relays", "article", "late_version"),
             "topic move": ("topic_removal", "topic_addition"), "delete": ("deletion", "dsar")}
    assert all(sum(ops[k] for k in group) > 0 for group in kinds.values()), ops
    assert not reader.failures, reader.failures[:5]
    assert reader.backends["pg"] > 0 and reader.backends["meili"] > 0, reader.backends

    with db.connect(url) as conn:
        head = write_consumer.catch_up(conn, meili).end_offset
        assert head == contract.outbox_head(conn)
        inv = invariants.check(conn, head, meili)
        why = "" if inv.ok else explain(conn, inv)
    print(f"\ncontinuous writer: {sum(ops.values())} writes in {elapsed:.0f} s "
          f"({sum(ops.values()) / elapsed:.1f}/s) {dict(ops)}; reader {reader.requests} requests, 0 failed; "
          f"invariant: {inv.checked} pairs checked, lost {inv.lost}, duplicated {inv.duplicated}, "
          f"resurrected {inv.resurrected}, wrong version {inv.wrong_version}")
    assert inv.ok and inv.quarantined == 0, f"{inv.as_dict()}\n{why}"
    assert (inv.lost, inv.duplicated, inv.resurrected, inv.wrong_version) == (0, 0, 0, 0)
