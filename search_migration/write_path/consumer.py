"""The write path: apply `cn_relay.events_outbox` in `seq` order to the engines the write mode names.

Guarantees, in the order they matter at 3 a.m.:
- The overall offset never moves past a row some engine in the mode has not applied. Each engine
  keeps its own offset, so in `dual` mode a failure on one side stalls only that side, durably, and
  the side resumes from there after any restart.
- Retryable failures (connection refused/reset, timeouts, 429, 5xx, anything unclassified) are
  retried with exponential backoff and jitter, then stall the side: the lag stays visible.
- Deterministic failures (malformed row, unknown op, missing event, a document an engine rejects)
  become dead letters and never block later rows.
- PostgreSQL writes are versioned by seq (pg_documents); Meilisearch receives each document's final
  state within a batch, so re-applying any range converges to the same state.
- The write mode is read for every batch: a flag flip takes effect without a restart.
- Each engine's commit -> applied latency is recorded with the offsets that move (write_path/freshness).
"""

from __future__ import annotations

import hashlib
import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass, field

import meilisearch
import psycopg
from meilisearch.errors import MeilisearchApiError, MeilisearchCommunicationError, MeilisearchTimeoutError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from search_migration.cutover import flags
from search_migration.write_path import expiry, freshness, handover, legacy_documents, meili_index
from search_migration.ops import counters
from search_migration.write_path import pg_documents
from search_migration.source import contract
from search_migration.write_path.pg_documents import DocWrite
from search_migration.errors import first_line

log = logging.getLogger(__name__)

CONSUMER = contract.CONSUMER
EVENT_ID = re.compile(r"^[0-9a-f]{64}$")
MAX_TOPIC_ID = 255
MAX_CONTENT_BYTES = pg_documents.MAX_CONTENT_BYTES
DEFAULT_BATCH_SIZE = 20_000  # bench/catchup_throughput.py: 100k rows dual 1,700 rows/s at 1,000, 9,200 at 20,000

# Each outbox row with the event it names, as the product's indexer reads it (cn-index `handle_upsert`).
FETCH_SQL = """
SELECT o.seq, o.op, o.event_id, o.topic_id, o.effective_key, o.reason,
       e.event_id IS NOT NULL, e.kind, e.created_at, e.content, e.raw_json,
       e.is_deleted, e.is_current, e.is_ephemeral, e.expires_at
FROM cn_relay.events_outbox o
LEFT JOIN cn_relay.events e ON e.event_id = o.event_id
WHERE o.seq > %s AND o.seq <= %s
ORDER BY o.seq
LIMIT %s
"""

# Older versions of a replaceable/addressable event, which an upsert carrying its effective key removes
# from every topic they are in. The product's indexer removes them from the upsert's topic only, so an
# older version stays searchable in a topic the new one left: a product defect we report (drift lists
# it as a legacy defect) and do not copy. Two probes, one per key column, so each can hash.
STALE_SQL = """
WITH k AS (SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS k(seq, key, current_id))
SELECT k.seq, e.event_id, t.topic_id FROM k
JOIN cn_relay.events e ON e.replaceable_key = k.key AND e.event_id <> k.current_id AND NOT e.is_current
JOIN cn_relay.event_topics t ON t.event_id = e.event_id
UNION
SELECT k.seq, e.event_id, t.topic_id FROM k
JOIN cn_relay.events e ON e.addressable_key = k.key AND e.event_id <> k.current_id AND NOT e.is_current
JOIN cn_relay.event_topics t ON t.event_id = e.event_id
"""


class TransientError(Exception):
    """Worth retrying: the engine may accept the same write later."""


class DeterministicError(Exception):
    """The same write will fail again until someone changes the data."""


class ConsumerBusy(Exception):
    """Another catch-up holds this consumer's lock."""


@dataclass(frozen=True)
class Retry:
    attempts: int = 5
    initial_s: float = 0.2
    max_s: float = 5.0

    def run(self, fn):
        for attempt in Retrying(stop=stop_after_attempt(self.attempts),
                                wait=wait_exponential_jitter(multiplier=self.initial_s, max=self.max_s, jitter=self.initial_s),
                                retry=retry_if_exception_type(TransientError), reraise=True):
            with attempt:
                return fn()


@dataclass
class Item:
    """One outbox row with the source state it points at, and what it means for the indexes."""

    seq: int
    op: str
    event_id: str
    topic_id: str
    effective_key: str | None
    reason: str | None
    event_exists: bool
    kind: int | None
    created_at: int | None
    content: str | None
    raw_json: dict | None
    event_deleted: bool | None
    is_current: bool | None
    is_ephemeral: bool | None
    expires_at: int | None
    now: int = 0  # when it was read: "not expired" is judged at that moment, as the product does
    stale: list[tuple[str, str]] = field(default_factory=list)  # (event, topic) of older versions it removes

    def problem(self) -> tuple[str, str] | None:
        """(reason_class, error) when the row itself is unusable for every engine."""
        if self.op not in ("upsert", "delete"):
            return "unknown_op", f"unknown op {self.op[:40]!r}"
        if not EVENT_ID.match(self.event_id or ""):
            return "malformed_payload", "event_id is not 64 lowercase hex characters"
        topic = self.topic_id or ""
        if not topic.strip() or len(topic) > MAX_TOPIC_ID or any(ord(c) < 32 for c in topic):
            return "malformed_payload", "topic_id is empty, too long or has control characters"
        if self.op == "upsert" and self.searchable:
            if not isinstance(self.raw_json, dict) or not isinstance(self.raw_json.get("content"), str):
                return "malformed_payload", "the event's raw_json is not a signed event"
            size = len((self.content or "").encode())
            if size > MAX_CONTENT_BYTES:
                return "content_too_large", f"content is {size} bytes, over the {MAX_CONTENT_BYTES}-byte limit"
        return None

    @property
    def searchable(self) -> bool:
        """The product's rule: exists, not deleted, current, not ephemeral, not expired."""
        return bool(self.event_exists and not self.event_deleted and self.is_current and not self.is_ephemeral
                    and (self.expires_at is None or self.expires_at > self.now))

    @property
    def deletes(self) -> bool:
        """A delete row, or an upsert of an event that is no longer searchable: never resurrect."""
        return self.op == "delete" or not self.searchable

    @property
    def delete_reason(self) -> str:
        if self.op == "delete":
            return self.reason or "delete"
        if not self.event_exists:
            return "missing"
        if self.event_deleted:
            return "deleted"
        if not self.is_current:
            return "superseded"
        if self.is_ephemeral:
            return "ephemeral"
        return "expired"

    def doc_writes(self) -> list[DocWrite]:
        """This row's PostgreSQL writes: the document (or its tombstone), and the older versions it removes."""
        if self.deletes:
            main = DocWrite(self.seq, self.event_id, self.topic_id, True, "", self.created_at or 0,
                            kind=self.kind, delete_reason=self.delete_reason)
        else:
            # the attributes cn-index gives Meilisearch (title/subject tags, author, every t tag), from raw_json
            main = pg_documents.doc_write_for_event(self.seq, self.raw_json, self.topic_id, post_id=self.event_id,
                                                    expires_at=self.expires_at)
        return [main] + [DocWrite(self.seq, old, topic, True, "", 0, delete_reason="superseded")
                         for old, topic in self.stale]

    def meili_document(self) -> dict:
        return legacy_documents.document({"raw_json": self.raw_json}, self.topic_id)


# --------------------------------------------------------------------------- engines


class PgSide:
    name = "pg"

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn

    def apply(self, items: list[Item]) -> None:
        try:
            pg_documents.apply(self.conn, [w for i in items for w in i.doc_writes()])
        except psycopg.Error as exc:
            # data exceptions (22), constraint violations (23) and program limits (54: a tsvector over
            # 1 MB) fail again on the same row; anything else (connection trouble, triggers, locks, a
            # server restart) is retried, then stalls
            if (exc.sqlstate or "")[:2] in ("22", "23", "54") or isinstance(exc, psycopg.DataError):
                raise DeterministicError(_pg_error(exc)) from exc
            raise TransientError(_pg_error(exc)) from exc


def _pg_error(exc: psycopg.Error) -> str:
    """What failed, never the row: a server's message may quote the data (a failing row, a tsvector
    literal, a trigger's RAISE), and this text goes to dead letters, run logs and stall records."""
    if exc.sqlstate is None:  # the client or the connection: no row data, and the words say what to fix
        return f"{type(exc).__name__}: {first_line(exc)}"
    diag = exc.diag
    named = "".join(f", {k} {v}" for k, v in (("table", diag.table_name), ("constraint", diag.constraint_name),
                                              ("column", diag.column_name)) if v)
    return f"{type(exc).__name__} (SQLSTATE {exc.sqlstate}{named})"


class MeiliSide:
    """The product's per-topic indexes, written as its indexer writes them (uids, documents, settings)."""

    name = "meili"

    def __init__(self, client: meilisearch.Client, task_timeout_s: float = 120):
        self.client = client
        self.task_timeout_s = task_timeout_s
        self._known: set[str] = set()  # topic indexes known to exist

    def _call(self, fn):
        try:
            return fn()
        except (MeilisearchCommunicationError, MeilisearchTimeoutError) as exc:
            raise TransientError(f"{type(exc).__name__}: {first_line(exc)}") from exc
        except MeilisearchApiError as exc:
            status = getattr(exc, "status_code", None) or 0
            if status in (408, 429) or status >= 500:
                raise TransientError(f"HTTP {status}: {exc.code}") from exc
            raise DeterministicError(f"HTTP {status}: {exc.code}") from exc  # its message may quote the document

    def _wait(self, task_uid: int) -> None:
        def wait():
            task = self.client.wait_for_task(task_uid, timeout_in_ms=int(self.task_timeout_s * 1000),
                                             interval_in_ms=20)
            if task.status == "succeeded":
                return
            error = task.error or {}
            message = f"task {task_uid} {task.status}: {error.get('code', '?')}"
            if error.get("type") == "invalid_request":
                raise DeterministicError(message)
            raise TransientError(message)
        self._call(wait)

    def _index(self, topic_id: str, tasks: list[int]) -> str:
        """The topic's index, created with the product's settings on first write (never reconfigured)."""
        uid = meili_index.index_uid(topic_id)
        if uid not in self._known:
            _, created = self._call(lambda: meili_index.ensure_topic_index(self.client, topic_id))
            tasks += created
            self._known.add(uid)
        return uid

    def submit(self, items: list[Item]) -> list[int]:
        """Enqueue each document's final state in this batch, per topic index; Meilisearch indexes
        while we go on. Deletes and upserts keep their order per document: the last row wins."""
        final: dict[tuple[str, str], tuple[str, Item | None]] = {}  # (uid, event id) -> (topic, upsert or None)
        tasks: list[int] = []
        for item in items:
            uid = self._index(item.topic_id, tasks)
            final[(uid, item.event_id)] = (item.topic_id, None if item.deletes else item)
            for old, topic in item.stale:
                final[(self._index(topic, tasks), old)] = (topic, None)
        upserts: dict[str, list[dict]] = {}
        deletes: dict[str, list[str]] = {}
        for (uid, event_id), (_, item) in final.items():
            if item is None:
                deletes.setdefault(uid, []).append(event_id)
            else:
                upserts.setdefault(uid, []).append(item.meili_document())
        for uid in sorted(set(upserts) | set(deletes)):
            index = self.client.index(uid)
            if uid in deletes:
                tasks.append(self._call(lambda: index.delete_documents(deletes[uid])).task_uid)
            if uid in upserts:
                tasks.append(self._call(lambda: index.add_documents(upserts[uid], meili_index.PRIMARY_KEY)).task_uid)
        return tasks

    def wait(self, task_uids: list[int]) -> None:
        for uid in task_uids:
            self._wait(uid)

    def apply(self, items: list[Item]) -> None:
        self.wait(self.submit(items))


# --------------------------------------------------------------------------- bookkeeping


@dataclass
class CatchUpResult:
    consumer: str
    start_offset: int
    end_offset: int
    target: int
    rows_applied: int = 0
    dead_lettered: int = 0
    batches: int = 0
    stalled: dict[str, str] = field(default_factory=dict)  # side → error
    stalled_at: dict[str, int] = field(default_factory=dict)  # side → the seq it could not apply
    waiting_on_gap: int | None = None
    expired: dict[str, int] = field(default_factory=dict)  # side → documents the expiry sweep removed

    @property
    def lag(self) -> int:
        return self.target - self.end_offset

    def stall_line(self) -> str:
        """Which engine stalled at which seq and why, in one line (the first line an operator reads)."""
        names = {"pg": "PostgreSQL", "meili": "Meilisearch"}
        parts = [f"{names.get(side, side)} stalled at outbox seq {self.stalled_at.get(side, self.end_offset + 1)}: "
                 f"{' '.join(str(error).split())}" for side, error in sorted(self.stalled.items())]
        return f"catch-up stalled: {'; '.join(parts)} (consumer {self.consumer} offset {self.end_offset}, " \
               f"target {self.target})"


@contextmanager
def consumer_lock(conn: psycopg.Connection, consumer: str, wait_s: float = 0):
    """The consumer's lock: at once, or queued for up to `wait_s` (PostgreSQL grants a queued waiter the
    lock when it is released, so a writer that loops cannot starve it)."""
    key = int.from_bytes(hashlib.sha256(f"outbox_consumer:{consumer}".encode()).digest()[:8], "big", signed=True)
    busy = ConsumerBusy(f"another catch-up is running for consumer {consumer!r}")
    if wait_s <= 0:
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
            raise busy
    else:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(wait_s * 1000)}ms",))
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        except psycopg.errors.LockNotAvailable:
            raise busy from None
        finally:
            conn.execute("RESET lock_timeout")
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def side_offsets(conn: psycopg.Connection, consumer: str, sides: list[str]) -> dict[str, int]:
    """Each side's offset; a side seen for the first time starts at the overall offset."""
    overall = contract.consumer_offset(conn, consumer)
    known = dict(conn.execute("SELECT backend, last_seq FROM cn_search.consumer_side_offsets WHERE consumer = %s",
                              (consumer,)).fetchall())
    return {side: known.get(side, overall) for side in sides}


def _dead_letter(conn, backend: str, item: Item, reason_class: str, error: str) -> None:
    """Record once: a row re-read after another side stalled is not a second failure."""
    inserted = conn.execute(
        "INSERT INTO cn_search.dead_letters (backend, op, seq, event_id, topic_id, reason_class, error) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (backend, seq) DO NOTHING RETURNING 1",
        (backend, item.op[:40], item.seq, item.event_id[:200], item.topic_id[:MAX_TOPIC_ID], reason_class, error),
    ).fetchone()
    if inserted:
        counters.increment(conn, counters.DUAL_WRITE_ERRORS, backend, item.op if item.op in ("upsert", "delete") else "other")


def _record_stall(conn, consumer: str, side: str, item: Item, error: str) -> None:
    conn.execute(
        "INSERT INTO cn_search.side_write_failures (consumer, backend, seq, op, error_class, error) "
        "VALUES (%s, %s, %s, %s, 'retryable', %s) ON CONFLICT (consumer, backend) DO UPDATE SET "
        "seq = EXCLUDED.seq, op = EXCLUDED.op, error = EXCLUDED.error, last_failed_at = now(), "
        "attempts = side_write_failures.attempts + 1",
        (consumer, side, item.seq, item.op, error))
    counters.increment(conn, counters.DUAL_WRITE_ERRORS, side, item.op)


def _clear_stall(conn, consumer: str, side: str, applied_upto: int) -> None:
    """The side applied past its recorded failure: that is one successful retry."""
    row = conn.execute("DELETE FROM cn_search.side_write_failures WHERE consumer = %s AND backend = %s "
                       "AND seq <= %s RETURNING op", (consumer, side, applied_upto)).fetchone()
    if row:
        counters.increment(conn, counters.DUAL_WRITE_RETRIES, side, row[0])


def _set_offsets(conn, consumer: str, offsets: dict[str, int]) -> int:
    for side, seq in offsets.items():
        conn.execute(
            "INSERT INTO cn_search.consumer_side_offsets (consumer, backend, last_seq) VALUES (%s, %s, %s) "
            "ON CONFLICT (consumer, backend) DO UPDATE SET last_seq = EXCLUDED.last_seq, updated_at = now()",
            (consumer, side, seq))
    overall = min(offsets.values())
    contract.set_consumer_offset(conn, consumer, overall)
    return overall


# A gap already seen: was it skipped (through at least `through`), and is any transaction that was in
# progress when it was first seen still in progress?
GAP_STATE_SQL = """
SELECT skipped_at IS NOT NULL AND through_seq >= %s,
       EXISTS (SELECT 1 FROM unnest(waiting_on) AS w(x) WHERE pg_xact_status(w.x) = 'in progress')
FROM cn_search.outbox_gaps WHERE consumer = %s AND seq = %s
"""
# First sight: every transaction with an xid in progress now may hold the missing seq.
GAP_NEW_SQL = """
INSERT INTO cn_search.outbox_gaps (consumer, seq, through_seq, waiting_on)
SELECT %s, %s, %s, coalesce(array_agg(x), '{}') FROM pg_snapshot_xip(pg_current_snapshot()) AS x
RETURNING cardinality(waiting_on) > 0
"""


def _visible_prefix(conn, consumer: str, low: int, rows: list[Item]) -> tuple[list[Item], int | None]:
    """Rows up to the first gap in seq that may still fill: a lower seq held by a transaction still in
    progress (a slow product transaction commits later, however long it takes) is waited for; one whose
    transaction can no longer commit is skipped and recorded. This assumes what the product does: the
    transaction that takes an outbox seq already has an xid (it wrote the event first)."""
    expected = low + 1
    for n, item in enumerate(rows):
        if item.seq != expected:
            state = conn.execute(GAP_STATE_SQL, (item.seq - 1, consumer, expected)).fetchone()
            skipped, waiting = state if state else (False, conn.execute(
                GAP_NEW_SQL, (consumer, expected, item.seq - 1)).fetchone()[0])
            if not skipped:
                if waiting:
                    return rows[:n], expected
                # every transaction that could hold the seq has ended: committed ones are visible now
                if conn.execute("SELECT EXISTS (SELECT 1 FROM cn_relay.events_outbox WHERE seq >= %s AND seq < %s)",
                                (expected, item.seq)).fetchone()[0]:
                    return rows[:n], expected  # committed meanwhile: the next fetch reads it
                conn.execute("UPDATE cn_search.outbox_gaps SET skipped_at = now(), through_seq = %s "
                             "WHERE consumer = %s AND seq = %s", (item.seq - 1, consumer, expected))
                log.warning("outbox seq %s..%s can never commit (its transaction ended); skipped", expected,
                            item.seq - 1)
        expected = item.seq + 1
    return rows, None


def find_stale(conn: psycopg.Connection, rows: list[Item]) -> None:
    """Attach to each upsert with an effective key the older versions it removes.

    Searchable or not: a new version deleted (or superseded again) before catch-up reads its upsert is
    applied as a delete, and the version it replaced must leave the indexes all the same. A version
    that is not current never becomes current again, so removing it is always right."""
    keyed = [i for i in rows if i.op == "upsert" and i.effective_key]
    if not keyed:
        return
    by_seq = {i.seq: i for i in keyed}
    for seq, event_id, topic_id in conn.execute(STALE_SQL, ([i.seq for i in keyed], [i.effective_key for i in keyed],
                                                            [i.event_id for i in keyed])):
        by_seq[seq].stale.append((event_id, topic_id))


# --------------------------------------------------------------------------- the loop


@dataclass
class _Batch:
    """One fetched slice of the outbox on its way through the engines."""

    sides: list[str]
    start: dict[str, int]  # each side's offset before this batch
    upto: int  # the last seq this batch covers
    gap: int | None
    good: list[Item]
    problems: list[tuple[Item, str, str]]
    outcomes: dict[str, tuple[int, list, str | None]] = field(default_factory=dict)
    meili_tasks: list[int] | None = None  # enqueued, not yet confirmed

    def items_for(self, side: str) -> list[Item]:
        return [i for i in self.good if i.seq > self.start[side]]


class Consumer:
    """Two batches in flight: while Meilisearch indexes batch k, batch k+1 is fetched, enqueued and
    written to PostgreSQL. Batch k+1 is committed only after batch k, and is dropped (to be fetched
    and applied again) if batch k needed any fallback, so engines always converge in seq order."""

    def __init__(self, conn: psycopg.Connection, meili: meilisearch.Client, *,
                 consumer: str = CONSUMER, retry: Retry = Retry()):
        if not conn.autocommit:
            raise ValueError("the outbox consumer needs an autocommit connection (search_migration.db.connect)")
        self.conn = conn
        self.consumer = consumer
        self.retry = retry
        self.engines = {"pg": PgSide(conn), "meili": MeiliSide(meili)}

    def _apply_side(self, side: str, items: list[Item]) -> tuple[int, list[tuple[Item, str]], str | None]:
        """Apply to one engine synchronously: (applied up to seq, rejected items, stall error).

        A rejected write is found by bisection, in seq order, so one poison row in a large batch
        costs a few extra requests, not one per row."""
        engine = self.engines[side]
        rejected: list[tuple[Item, str]] = []

        def bisect(chunk: list[Item]) -> tuple[int, str] | None:
            try:
                self.retry.run(lambda: engine.apply(chunk))
                return None
            except TransientError as exc:
                return chunk[0].seq - 1, str(exc)
            except DeterministicError as exc:
                if len(chunk) == 1:
                    rejected.append((chunk[0], str(exc)))
                    return None
            mid = len(chunk) // 2
            return bisect(chunk[:mid]) or bisect(chunk[mid:])

        if not items:
            return 0, [], None
        stall = bisect(items)
        return (stall[0], rejected, stall[1]) if stall else (items[-1].seq, rejected, None)

    def _fetch(self, start: dict[str, int], sides: list[str], target: int, batch_size: int) -> _Batch | None:
        low = min(start.values())
        if low >= target:
            return None
        now = contract.now_unix()
        rows = [Item(*r, now=now) for r in self.conn.execute(FETCH_SQL, (low, target, batch_size)).fetchall()]
        rows, gap = _visible_prefix(self.conn, self.consumer, low, rows)
        find_stale(self.conn, rows)
        if not rows:
            return _Batch(sides, start, low, gap, [], [])
        batch = _Batch(sides, start, rows[-1].seq, gap, [], [])
        for item in rows:
            problem = item.problem()
            (batch.problems.append((item, *problem)) if problem else batch.good.append(item))
        return batch

    def _start(self, batch: _Batch) -> None:
        """Enqueue the Meilisearch part and write the PostgreSQL part while it indexes."""
        if "meili" in batch.sides and batch.items_for("meili"):
            try:
                batch.meili_tasks = self.engines["meili"].submit(batch.items_for("meili"))
            except (TransientError, DeterministicError):
                batch.meili_tasks = None  # handled synchronously in _finish
        if "pg" in batch.sides:
            batch.outcomes["pg"] = self._apply_side("pg", batch.items_for("pg"))

    def _finish(self, batch: _Batch, result: CatchUpResult) -> str:
        """Confirm Meilisearch, then commit the batch's bookkeeping.

        Returns "next", "restart" (a fallback re-applied rows after later batches were enqueued:
        those must be applied again, in order) or "stop" (a side stalled, or a gap needs waiting).
        """
        clean = True
        if "meili" in batch.sides:
            items = batch.items_for("meili")
            try:
                if batch.meili_tasks is None and items:
                    raise TransientError("not enqueued")
                self.engines["meili"].wait(batch.meili_tasks or [])
                batch.outcomes["meili"] = (items[-1].seq if items else 0, [], None)
            except (TransientError, DeterministicError):
                clean = False  # later batches may already be enqueued: they will be applied again
                batch.outcomes["meili"] = self._apply_side("meili", items)
        conn = self.conn
        with conn.transaction():
            for item, reason_class, error in batch.problems:
                _dead_letter(conn, "source", item, reason_class, error)
            offsets = {}
            for side, (applied, rejected, stall) in batch.outcomes.items():
                for item, error in rejected:
                    _dead_letter(conn, side, item, "rejected", error)
                if stall is None:
                    offsets[side] = max(batch.start[side], batch.upto)
                    _clear_stall(conn, self.consumer, side, offsets[side])
                else:
                    offsets[side] = max(batch.start[side], applied)
                    stalled_item = next(i for i in batch.good if i.seq > offsets[side])
                    _record_stall(conn, self.consumer, side, stalled_item, stall)
                    result.stalled[side] = stall
                    result.stalled_at[side] = stalled_item.seq
            result.end_offset = _set_offsets(conn, self.consumer, offsets)
            for side, seq in offsets.items():  # in the offsets' transaction: each row observed exactly once
                freshness.record(conn, side, batch.start[side], seq)
        result.batches += 1
        result.rows_applied += sum(1 for i in batch.good if i.seq <= result.end_offset)
        result.dead_lettered += len(batch.problems) + sum(len(o[1]) for o in batch.outcomes.values())
        result.waiting_on_gap = batch.gap
        if result.stalled or batch.gap is not None:
            return "stop"
        return "next" if clean else "restart"

    def run(self, to_seq: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
            lock_wait_s: float = 0) -> CatchUpResult:
        conn = self.conn
        handover.require(conn, self.consumer)  # two writers of the product's indexes would race
        with consumer_lock(conn, self.consumer, lock_wait_s):
            head = contract.outbox_head(conn)  # never past the head: a higher seq may not be visible yet
            target = head if to_seq is None else min(to_seq, head)
            offset = contract.consumer_offset(conn, self.consumer)
            result = CatchUpResult(self.consumer, offset, offset, target)
            inflight: _Batch | None = None
            while True:
                mode = flags.write_mode(conn)  # every batch: a flag flip applies without a restart
                sides = [s for s in ("meili", "pg") if getattr(mode, s)]
                if inflight is not None and inflight.sides != sides:
                    if self._finish(inflight, result) == "stop":  # drain before the mode changes
                        break
                    inflight = None
                if inflight is None:
                    start = side_offsets(conn, self.consumer, sides)
                else:  # the next batch starts where the one in flight ends, for every side
                    start = {side: max(inflight.start[side], inflight.upto) for side in sides}
                batch = self._fetch(start, sides, target, batch_size) if inflight is None or \
                    inflight.gap is None else None
                if batch is not None and not batch.good and not batch.problems:
                    result.waiting_on_gap = batch.gap
                    batch = None
                if batch is not None:
                    self._start(batch)
                outcome = self._finish(inflight, result) if inflight is not None else "next"
                if outcome == "stop":
                    break  # the batch just started is dropped: fetched and applied again next run
                if outcome == "restart":
                    inflight = None  # drop it and fetch again from the committed offsets
                    continue
                if batch is None:
                    break
                inflight = batch
            if not result.stalled:
                result.expired = self._sweep(sides)
            return result

    def _sweep(self, sides: list[str]) -> dict[str, int]:
        """The expiry sweep, under the consumer's lock; a failing engine leaves its cursor for next time."""
        try:
            return expiry.sweep(self.conn, self.engines["meili"].client, sides, consumer=self.consumer)
        except (psycopg.Error, MeilisearchApiError, MeilisearchCommunicationError, MeilisearchTimeoutError,
                RuntimeError) as exc:
            log.warning("expiry sweep deferred: %s", type(exc).__name__)
            return {}


def catch_up(conn: psycopg.Connection, meili: meilisearch.Client, *, to_seq: int | None = None,
             batch_size: int = DEFAULT_BATCH_SIZE, retry: Retry = Retry(), lock_wait_s: float = 0) -> CatchUpResult:
    """Apply the outbox after the offset up to `to_seq` (default: the head now) to the mode's engines."""
    return Consumer(conn, meili, retry=retry).run(to_seq, batch_size, lock_wait_s)
