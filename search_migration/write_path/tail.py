"""The tail: a long-lived consumer that applies each outbox row as soon as the product commits it.

The product commits every event with `pg_notify('cn_relay_outbox', <max seq>)`. The tail LISTENs on
that channel on a dedicated autocommit connection, and polls every `poll_seconds` as a fallback (a
notification is lost when nobody listens at that moment, or when a writer does not send one). Each
wake applies everything up to the outbox head through the ordinary `Consumer`, so every guarantee of
the write path holds unchanged: seq order, per-engine offsets, versioned writes, dead letters, stalls
recorded durably, the gap rule, the write mode read per batch. Small batches while caught up (a row is
applied within one round trip of its commit); large ones while a backlog drains, so the tail drains a
backlog as fast as a catch-up run does.

Never two writers, and nobody starved: the tail takes the consumer's advisory lock
(`consumer.consumer_lock`) for each pass only, queued on PostgreSQL's lock queue for at most
`lock_wait_s`; its LISTEN lives on a connection of its own, so notifications queue up while it waits.
A rollback bringing Meilisearch current (cutover.moves.bring_meili_current), a bounded catch-up run
draining a backlog, or the tail's successor queue on the same lock and get their turn between two
passes (PostgreSQL grants a waiter the lock on release, before a new request). Holding the lock for
its whole life instead would refuse or starve every one of them.

It ends by itself after `max_seconds`; `stop` (SIGTERM, a cancel from the UI) makes it finish the batch
in hand, commit its offsets and return. A PostgreSQL restart ends its sessions: it reconnects and goes
on; an engine outage stalls that engine's side (recorded) and the tail retries it with a backoff.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

import meilisearch
import psycopg

from search_migration import db
from search_migration.source import contract
from search_migration.write_path import consumer, freshness, handover

log = logging.getLogger(__name__)

APP = "search-migration-tail"
HEARTBEAT_SECONDS = 5.0
SWEEP_SECONDS = 30.0  # the expiry sweep, at most this often (a catch-up run sweeps once per run)
PRUNE_SECONDS = 600.0
BACKLOG_CHUNK_BATCHES = 2  # while draining a backlog, stop-checks every this many large batches


class TailConsumer(consumer.Consumer):
    """The ordinary consumer, with the expiry sweep at most every `sweep_seconds` (a catch-up run
    sweeps once per run; the tail makes a run per pass, every second or so)."""

    def __init__(self, conn: psycopg.Connection, meili: meilisearch.Client, *, retry: consumer.Retry = consumer.Retry(),
                 sweep_seconds: float = 30.0):
        super().__init__(conn, meili, retry=retry)
        self.sweep_seconds = sweep_seconds
        self._last_sweep = float("-inf")

    def _sweep(self, sides):
        if time.monotonic() - self._last_sweep < self.sweep_seconds:
            return {}
        self._last_sweep = time.monotonic()
        return super()._sweep(sides)


@dataclass
class Options:
    max_seconds: float = 600.0  # the run ends by itself after this long
    poll_seconds: float = 1.0  # the fallback poll when no notification arrives
    batch_size: int = 500  # rows per batch while caught up
    backlog_batch_size: int = consumer.DEFAULT_BATCH_SIZE  # rows per batch while a backlog drains
    stall_backoff_max_s: float = 5.0
    lock_wait_s: float = 1.0  # queued for the consumer lock at most this long per try (stop is checked between)
    retry: consumer.Retry = consumer.Retry(attempts=3, initial_s=0.1, max_s=1.0)


@dataclass
class TailResult:
    run_id: str
    wakes: int = 0  # consumer passes
    notified: int = 0  # wakes a notification caused (the rest: the fallback poll or a backlog)
    rows_applied: int = 0
    dead_lettered: int = 0
    stalls: int = 0
    reconnects: int = 0
    lock_waits: int = 0
    end_offset: int | None = None
    end_reason: str = ""
    last_stall: dict[str, str] = field(default_factory=dict)


class Tail:
    def __init__(self, database_url: str, meili: meilisearch.Client, options: Options = Options(), *,
                 stop: threading.Event | None = None, run_id: str = "local"):
        self.url = database_url
        self.meili = meili
        self.options = options
        self.stop = stop or threading.Event()
        self.run_id = run_id
        self.result = TailResult(run_id)
        self.state = "starting"
        self._deadline = 0.0

    # ---- the heartbeat, from a thread of its own: alive means the process is, not that rows move

    def _heartbeat(self, done: threading.Event) -> None:
        conn = None
        while not done.is_set():
            try:
                conn = conn or db.connect(self.url, application_name=f"{APP}-heartbeat:{self.run_id}"[:63])
                conn.execute("UPDATE cn_search.tail_runs SET heartbeat_at = now(), state = %s, rows_applied = %s "
                             "WHERE run_id = %s", (self.state, self.result.rows_applied, self.run_id))
            except psycopg.Error:
                with contextlib.suppress(Exception):
                    conn and conn.close()
                conn = None
            done.wait(HEARTBEAT_SECONDS)
        with contextlib.suppress(Exception):
            conn and conn.close()

    def _register(self) -> None:
        with db.connect(self.url) as conn:
            conn.execute(
                "INSERT INTO cn_search.tail_runs (run_id, pid, host, ends_by) "
                "VALUES (%s, %s, %s, now() + make_interval(secs => %s)) ON CONFLICT (run_id) DO UPDATE "
                "SET pid = EXCLUDED.pid, host = EXCLUDED.host, ends_by = EXCLUDED.ends_by, heartbeat_at = now(), "
                "state = 'starting', ended_at = NULL, end_reason = NULL",
                (self.run_id, os.getpid(), socket.gethostname(), self.options.max_seconds))

    def _unregister(self) -> None:
        with contextlib.suppress(psycopg.Error), db.connect(self.url) as conn:
            conn.execute("UPDATE cn_search.tail_runs SET state = 'ended', ended_at = now(), end_reason = %s, "
                         "rows_applied = %s, heartbeat_at = now() WHERE run_id = %s",
                         (self.result.end_reason[:500], self.result.rows_applied, self.run_id))

    # ---- the loop

    def _remaining(self) -> float:
        return self._deadline - time.monotonic()

    def _should_stop(self) -> bool:
        return self.stop.is_set() or self._remaining() <= 0

    def run(self) -> TailResult:
        """Tail until `max_seconds` pass or `stop` is set; reconnects after PostgreSQL goes away."""
        self._deadline = time.monotonic() + self.options.max_seconds
        done = threading.Event()
        backoff = 0.2
        registered = False
        heart = threading.Thread(target=self._heartbeat, args=(done,), name="tail-heartbeat", daemon=True)
        try:
            while not self._should_stop():
                try:
                    if not registered:
                        self._register()
                        registered = True
                        heart.start()
                    self._session()
                    backoff = 0.2
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    # the server restarted or the network dropped: every session is gone, the lock with them
                    self.result.reconnects += 1
                    self.state = "reconnecting"
                    log.warning("tail %s: PostgreSQL connection lost (%s); reconnecting in %.1fs", self.run_id,
                                type(exc).__name__, backoff)
                    self.stop.wait(min(backoff, max(self._remaining(), 0)))
                    backoff = min(backoff * 2, self.options.stall_backoff_max_s)
            self.result.end_reason = "stopped" if self.stop.is_set() else "max_seconds reached"
        except BaseException as exc:
            self.result.end_reason = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            raise
        finally:
            done.set()
            self.state = "ended"
            if registered:
                self._unregister()
        return self.result

    def _session(self) -> None:
        """One pair of connections: LISTEN first (a row committed from now on wakes us), then passes,
        each under the consumer lock, until told to stop."""
        name = session_name(self.run_id)
        with db.connect(self.url, application_name=name) as listen, \
                db.connect(self.url, application_name=name) as work:
            listen.execute(f"LISTEN {contract.OUTBOX_CHANNEL}")
            handover.require(work, contract.CONSUMER)
            cons = TailConsumer(work, self.meili, retry=self.options.retry, sweep_seconds=SWEEP_SECONDS)
            last_prune = time.monotonic()
            stall_wait = 0.0
            log.info("tail %s: tailing for %.0fs", self.run_id, self._remaining())
            while not self._should_stop():
                more = self._pass(cons, work)
                if more is None:  # another writer held the lock all the while we queued: queue again
                    continue
                if self.result.last_stall:
                    self.state = "stalled"
                    stall_wait = min(max(stall_wait * 2, self.options.poll_seconds), self.options.stall_backoff_max_s)
                    self.stop.wait(min(stall_wait, max(self._remaining(), 0)))
                    continue
                stall_wait = 0.0
                self.state = "tailing"
                if time.monotonic() - last_prune > PRUNE_SECONDS:
                    freshness.prune(work)
                    last_prune = time.monotonic()
                if more:
                    continue
                self._wait(listen)

    def _pass(self, cons: TailConsumer, work) -> bool | None:
        """One pass under the consumer lock: up to the head (a chunk of it while a backlog drains).
        True when more is waiting; None when the lock stayed with another writer for `lock_wait_s`."""
        offset = contract.consumer_offset(work, contract.CONSUMER)
        head = contract.outbox_head(work)
        big = head - offset > self.options.batch_size * 4
        size = self.options.backlog_batch_size if big else self.options.batch_size
        to_seq = offset + size * BACKLOG_CHUNK_BATCHES if big else None
        wait = max(0.1, min(self.options.lock_wait_s, self._remaining()))
        try:
            result = cons.run(to_seq, size, lock_wait_s=wait)
        except consumer.ConsumerBusy:
            if self.state != "waiting_for_lock":
                self.result.lock_waits += 1
                log.info("tail %s: another writer holds the consumer lock; queued for it", self.run_id)
            self.state = "waiting_for_lock"
            return None
        self.result.wakes += 1
        self.result.rows_applied += result.rows_applied
        self.result.dead_lettered += result.dead_lettered
        self.result.end_offset = result.end_offset
        if result.stalled:
            self.result.stalls += 1
            self.result.last_stall = dict(result.stalled)
            log.warning("tail %s: stalled at seq %s (%s)", self.run_id, result.end_offset + 1,
                        ", ".join(f"{s}: {e}" for s, e in result.stalled.items()))
        else:
            self.result.last_stall = {}
        return bool(not result.stalled and result.waiting_on_gap is None and result.end_offset < head)

    def _wait(self, listen) -> None:
        """Until a notification arrives or the fallback poll is due (or stop, or the deadline)."""
        timeout = max(0.0, min(self.options.poll_seconds, self._remaining()))
        got = False
        for _ in listen.notifies(timeout=timeout, stop_after=1):
            got = True
        if got:
            self.result.notified += 1
            for _ in listen.notifies(timeout=0):  # the rest already queued: one pass reads them all
                pass


def session_name(run_id: str) -> str:
    """The application_name of a tail's two sessions (LISTEN and work): how pg_stat_activity shows it."""
    return f"{APP}:{run_id}"[:63]


def health(conn: psycopg.Connection, run_ids: list[str]) -> dict[str, tuple[float, float]]:
    """{run id: (seconds since its heartbeat, seconds until it ends by itself)} for the runs that registered
    and have not ended: what a supervisor needs to tell a live tail from a dead one."""
    return {r: (float(age), float(left)) for r, age, left in conn.execute(
        "SELECT run_id, extract(epoch FROM now() - heartbeat_at), extract(epoch FROM ends_by - now()) "
        "FROM cn_search.tail_runs WHERE run_id = ANY(%s) AND ended_at IS NULL", (run_ids,))}


STARTUP_GRACE_S = 180  # a tail run this young may not have heartbeated yet (launch, imports, the first connect)
HEARTBEAT_GRACE_S = 30  # a heartbeat older than this: the run's process is gone (SIGKILL, OOM, a lost node)
SUCCESSOR_LEAD_S = 60  # the next tail starts this long before the current one ends: it waits on the lock


def liveness(heartbeat: tuple[float, float] | None, started_s_ago: float) -> tuple[bool, bool, str | None]:
    """(alive, ending soon: time for its successor, why it is presumed dead) of a tail run, from its
    `health` entry (None: it has not registered) and how long ago it was launched."""
    age, left = heartbeat or (None, None)
    if (age is None and started_s_ago < STARTUP_GRACE_S) or (age is not None and age < HEARTBEAT_GRACE_S):
        return True, left is not None and left < SUCCESSOR_LEAD_S, None
    return False, False, "no heartbeat since it started" if age is None else f"no heartbeat for {age:.0f}s"


def mark_dead(conn: psycopg.Connection, run_id: str, why: str) -> None:
    """A tail whose process is gone (SIGKILL, OOM) never unregisters: record it ended, so `status` stops
    showing it as the live tail."""
    conn.execute("UPDATE cn_search.tail_runs SET state = 'dead', ended_at = now(), end_reason = %s "
                 "WHERE run_id = %s AND ended_at IS NULL", (f"presumed dead by the sensor: {why}", run_id))


def run(database_url: str, meili: meilisearch.Client, options: Options = Options(), *,
        stop: threading.Event | None = None, run_id: str = "local") -> TailResult:
    return Tail(database_url, meili, options, stop=stop, run_id=run_id).run()
