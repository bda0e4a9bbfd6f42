"""The backfill engine: copy each topic × time window of the source into post_search_documents.

A backfill copies what the source held at a captured high watermark; everything later arrives
through catch-up. The watermark freezes a manifest (topic, created_at, event_id, version) so that
a partition keyset-pages its window on an index, resumes from a checkpoint after any crash, and
writes every document with the version it had at the watermark: the versioned writer then never
lets a backfill page overwrite a newer document or a tombstone written by catch-up.

Each partition is lease-fenced: a run holds a token on its `backfill_jobs` row and heartbeats it;
every page (documents, checkpoint, progress) commits in one transaction that first locks the job
row and checks the token, so a run that lost its lease can write nothing at all. Partitions smaller
than a page go several to a transaction, each job row locked and finished in it (`run_many`).

No Dagster here: the Dagster layer (defs/backfill.py) only maps partitions to windows.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple

import psycopg

from search_migration import db
from search_migration.write_path import pg_documents
from search_migration.cutover.flags import WriteMode, write_mode
from search_migration.write_path.pg_documents import MAX_CONTENT_BYTES, DocWrite

DEFAULT_PAGE_SIZE = 5_000
DEFAULT_LEASE_TIMEOUT_S = 60.0
RATE_WINDOW_S = 60.0

Writer = Callable[[psycopg.Connection, list[DocWrite]], Counter]  # rows written per topic


class BackfillError(Exception):
    """The backfill cannot proceed; the message is one printable line."""


class LeaseBusy(BackfillError):
    """Another run holds a live lease on the partition: this run must not start work."""


class LeaseLost(BackfillError):
    """This run's lease was taken over (or finished by someone else): it may write nothing."""


@dataclass(frozen=True)
class Window:
    start: int  # unix seconds, inclusive
    end: int  # unix seconds, exclusive


@dataclass(frozen=True)
class Watermark:
    watermark_id: int
    seq: int
    manifest_rows: int


# --------------------------------------------------------------------------- the high watermark

MANIFEST_SQL = """
INSERT INTO cn_search.backfill_manifest (topic_id, created_at, event_id, version_seq)
SELECT o.topic_id, e.created_at, o.event_id, max(o.seq)
FROM cn_relay.events_outbox o
JOIN cn_relay.events e ON e.event_id = o.event_id
WHERE o.seq <= %(seq)s AND o.op IN ('upsert', 'delete')  -- an unknown-op row is no version
GROUP BY o.topic_id, e.created_at, o.event_id
"""


def capture_watermark(conn: psycopg.Connection, *, by: str) -> Watermark:
    """Record MAX(outbox seq) and freeze the manifest at it; refused until writes are dual.

    In `meili_only` nothing writes PostgreSQL after the watermark, so rows between the backfill and
    the start of dual writes would be lost; the capture waits for the write mode to say so.
    """
    mode = write_mode(conn)
    if mode is WriteMode.MEILI_ONLY:
        raise BackfillError("refusing to capture the backfill high watermark while search_write_mode is "
                            "meili_only: set it to dual first, or catch-up would miss the rows written "
                            "between the backfill and dual writes")
    with conn.transaction():
        # one capture at a time; the outbox head read inside the lock
        conn.execute("LOCK TABLE cn_search.backfill_manifest IN EXCLUSIVE MODE")
        seq = conn.execute("SELECT coalesce(max(seq), 0) FROM cn_relay.events_outbox").fetchone()[0]
        conn.execute("DELETE FROM cn_search.backfill_manifest")
        rows = conn.execute(MANIFEST_SQL, {"seq": seq}).rowcount
        wid = conn.execute(
            "INSERT INTO cn_search.backfill_watermarks (high_watermark, captured_by, manifest_rows) "
            "VALUES (%s, %s, %s) RETURNING watermark_id", (seq, by, rows)).fetchone()[0]
    conn.execute("ANALYZE cn_search.backfill_manifest")
    return Watermark(wid, seq, rows)


def latest_watermark(conn: psycopg.Connection) -> Watermark | None:
    row = conn.execute("SELECT watermark_id, high_watermark, coalesce(manifest_rows, 0) "
                       "FROM cn_search.backfill_watermarks ORDER BY watermark_id DESC LIMIT 1").fetchone()
    return Watermark(*row) if row else None


def require_watermark(conn: psycopg.Connection) -> Watermark:
    wm = latest_watermark(conn)
    if wm is None:
        raise BackfillError("no backfill high watermark has been captured; materialize "
                            "backfill_high_watermark first (it needs search_write_mode=dual)")
    return wm


# --------------------------------------------------------------------------- leases


@dataclass
class Lease:
    partition_key: str
    token: uuid.UUID
    topic_id: str
    window: Window
    watermark: int
    rows_total: int
    rows_done: int  # already behind the checkpoint when this lease began
    after: tuple[int, str] | None  # the checkpoint position to resume after
    completed: bool = False  # the partition was already complete: nothing to do


LOCK_SQL = """
SELECT j.status, j.lease_owner, coalesce(j.heartbeat_at > now() - make_interval(secs => %(timeout)s), false),
       j.rows_copied + j.rows_skipped, coalesce(j.rows_total, 0), c.last_created_at, c.last_event_id, c.rows_done
FROM cn_search.backfill_jobs j LEFT JOIN cn_search.backfill_checkpoints c USING (partition_key)
WHERE j.partition_key = %(key)s FOR UPDATE OF j
"""

START_SQL = """
UPDATE cn_search.backfill_jobs SET
    status = 'running', lease_token = %(token)s, lease_owner = %(owner)s, heartbeat_at = now(),
    attempts = attempts + 1, started_at = now(), finished_at = NULL, last_error = NULL,
    high_watermark = %(seq)s,
    rows_total = (SELECT count(*) FROM cn_search.backfill_manifest
                  WHERE topic_id = %(topic)s AND created_at >= %(start)s AND created_at < %(end)s),
    rows_copied = CASE WHEN %(reset)s THEN 0 ELSE rows_copied END,
    rows_skipped = CASE WHEN %(reset)s THEN 0 ELSE rows_skipped END
WHERE partition_key = %(key)s
RETURNING rows_total
"""


def acquire(conn: psycopg.Connection, partition_key: str, topic_id: str, window: Window, wm: Watermark, *,
            owner: str, lease_timeout_s: float = DEFAULT_LEASE_TIMEOUT_S, rebuild: bool = False) -> Lease:
    """Take the partition's lease in a transaction of its own (see `take`)."""
    with conn.transaction():
        return take(conn, partition_key, topic_id, window, wm, owner=owner, lease_timeout_s=lease_timeout_s,
                    rebuild=rebuild)


def take(conn: psycopg.Connection, partition_key: str, topic_id: str, window: Window, wm: Watermark, *,
         owner: str, lease_timeout_s: float = DEFAULT_LEASE_TIMEOUT_S, rebuild: bool = False) -> Lease:
    """Inside a transaction: take the lease of a fresh job, a failed one, or one whose holder stopped heartbeating.

    The job row stays locked until the caller commits, so the caller may copy the first page (and even
    finish) in the same transaction. A completed partition is returned as `completed` (a cheap no-op)
    unless a rebuild is asked for.
    """
    token = uuid.uuid4()
    conn.execute(
        "INSERT INTO cn_search.backfill_jobs (partition_key, topic_id, window_start, window_end, high_watermark) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (partition_key) DO NOTHING",
        (partition_key, topic_id, window.start, window.end, wm.seq))
    status, holder, live, done, total, cp_ts, cp_id, cp_done = conn.execute(
        LOCK_SQL, {"key": partition_key, "timeout": lease_timeout_s}).fetchone()
    if status == "succeeded" and not rebuild:
        return Lease(partition_key, token, topic_id, window, wm.seq, total, done, None, completed=True)
    if status == "running" and live:
        raise LeaseBusy(f"partition {partition_key} is being backfilled by {holder} (its lease is live); "
                        "not starting a second copy")
    reset = rebuild or status == "succeeded"
    if reset and cp_done is not None:
        conn.execute("DELETE FROM cn_search.backfill_checkpoints WHERE partition_key = %s", (partition_key,))
        cp_done = None
    total = conn.execute(START_SQL, {"token": token, "owner": owner, "seq": wm.seq, "topic": topic_id,
                                     "start": window.start, "end": window.end, "reset": reset,
                                     "key": partition_key}).fetchone()[0]
    if cp_done is None:
        return Lease(partition_key, token, topic_id, window, wm.seq, total, 0, None)
    return Lease(partition_key, token, topic_id, window, wm.seq, total, cp_done, (cp_ts, cp_id))


def _fence(conn: psycopg.Connection, lease: Lease) -> None:
    """Inside a transaction: lock the job row and refuse unless this lease is still the live one."""
    row = conn.execute("SELECT lease_token, status FROM cn_search.backfill_jobs WHERE partition_key = %s FOR UPDATE",
                       (lease.partition_key,)).fetchone()
    if row is None or row[0] != lease.token or row[1] != "running":
        raise LeaseLost(f"lease on partition {lease.partition_key} was lost (taken over or finished elsewhere); "
                        "this run writes nothing more")


def heartbeat(conn: psycopg.Connection, lease: Lease) -> None:
    """Renew the lease; raises LeaseLost when it is no longer ours."""
    with conn.transaction():
        _fence(conn, lease)
        conn.execute("UPDATE cn_search.backfill_jobs SET heartbeat_at = now() WHERE partition_key = %s",
                     (lease.partition_key,))


FINISH_SQL = ("UPDATE cn_search.backfill_jobs SET status = 'succeeded', finished_at = now(), heartbeat_at = now() "
              "WHERE partition_key = %s")


def finish(conn: psycopg.Connection, lease: Lease) -> None:
    with conn.transaction():
        _fence(conn, lease)
        conn.execute(FINISH_SQL, (lease.partition_key,))


def fail(conn: psycopg.Connection, lease: Lease, error: str) -> None:
    """Record a failure (the error class and a short message; never row content) if still ours."""
    with conn.transaction():
        _fence(conn, lease)
        conn.execute("UPDATE cn_search.backfill_jobs SET status = 'failed', finished_at = now(), last_error = %s "
                     "WHERE partition_key = %s", (error[:500], lease.partition_key))


class Heartbeat:
    """Renews the lease currently tracked, from a thread on its own connection, until stopped.

    One heartbeat serves every partition a run copies in turn (a connection per partition would cost
    more than small partitions do). A lease found lost is remembered so the page loop stops writing.
    """

    def __init__(self, conninfo: str, interval_s: float):
        self._conninfo, self._interval = conninfo, interval_s
        self._stop = threading.Event()
        self._lease: Lease | None = None
        self._lost: dict[uuid.UUID, BaseException] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="backfill heartbeat", daemon=True)

    def track(self, lease: Lease | None) -> None:
        with self._lock:
            self._lease = lease

    def lost(self, lease: Lease) -> BaseException | None:
        with self._lock:
            return self._lost.get(lease.token)

    def _run(self) -> None:
        conn = None
        while not self._stop.wait(self._interval):
            with self._lock:
                lease = self._lease
            if lease is None:
                continue
            try:
                conn = conn or db.connect(self._conninfo)
                heartbeat(conn, lease)
            except BaseException as exc:  # a lost lease, or a connection we could not keep
                with self._lock:
                    self._lost[lease.token] = exc
                if not isinstance(exc, LeaseLost) and conn is not None:
                    conn.close()
                    conn = None
        if conn is not None:
            conn.close()

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- pages


class SourceRow(NamedTuple):
    created_at: int
    event_id: str
    version_seq: int
    live: bool
    content: str | None


# A manifest row's version with the source's current content, and whether it is still live there.
_SOURCE_ROW = """m.created_at, m.event_id, m.version_seq,
       coalesce(NOT e.is_deleted AND EXISTS (
           SELECT 1 FROM cn_relay.event_topics et WHERE et.event_id = m.event_id AND et.topic_id = m.topic_id),
           false) AS live,
       e.content"""
# created_at too: the time index keeps a window's lookups on neighbouring pages (measured a quarter faster)
_SOURCE_JOIN = "LEFT JOIN cn_relay.events e ON e.created_at = m.created_at AND e.event_id = m.event_id"

PAGE_SQL = f"""
SELECT {_SOURCE_ROW}
FROM cn_search.backfill_manifest m
{_SOURCE_JOIN}
WHERE m.topic_id = %(topic)s AND m.created_at >= %(start)s AND m.created_at < %(end)s
  AND (m.created_at, m.event_id) > (%(after_ts)s, %(after_id)s)
ORDER BY m.created_at, m.event_id
LIMIT %(limit)s
"""


def read_page(conn: psycopg.Connection, topic_id: str, window: Window, after: tuple[int, str] | None,
              limit: int) -> list[SourceRow]:
    """The next keyset page of the window after `after`, in (created_at, event_id) order."""
    after_ts, after_id = after if after else (window.start - 1, "")
    rows = conn.execute(PAGE_SQL, {"topic": topic_id, "start": window.start, "end": window.end,
                                   "after_ts": after_ts, "after_id": after_id, "limit": limit}).fetchall()
    return [SourceRow(*r) for r in rows]


@dataclass(frozen=True)
class PageResult:
    rows_done: int
    rows_copied: int
    rows_skipped: int  # not live in the source, or PostgreSQL already holds a newer version / tombstone


# The checkpoint, the progress and the page log of one page in one statement (and, for the last page,
# the finish): fewer round trips per page, the same single transaction.
PAGE_DONE_SQL = """
WITH checkpoint AS (
    INSERT INTO cn_search.backfill_checkpoints (partition_key, last_created_at, last_event_id, rows_done,
                                                lease_token, updated_at)
    VALUES (%(key)s, %(ts)s, %(id)s, %(done)s, %(token)s, now())
    ON CONFLICT (partition_key) DO UPDATE SET last_created_at = EXCLUDED.last_created_at,
        last_event_id = EXCLUDED.last_event_id, rows_done = EXCLUDED.rows_done,
        lease_token = EXCLUDED.lease_token, updated_at = now()
), page_log AS (
    INSERT INTO cn_search.backfill_page_log (partition_key, lease_token, rows_done, rows_copied)
    VALUES (%(key)s, %(token)s, %(rows)s, %(copied)s)
)
UPDATE cn_search.backfill_jobs SET rows_copied = rows_copied + %(copied)s, rows_skipped = rows_skipped + %(skipped)s,
    heartbeat_at = clock_timestamp(),
    status = CASE WHEN %(last)s THEN 'succeeded' ELSE status END,
    finished_at = CASE WHEN %(last)s THEN now() ELSE finished_at END
WHERE partition_key = %(key)s
"""


TOO_LARGE_SQL = """
INSERT INTO cn_search.dead_letters (backend, op, seq, event_id, topic_id, reason_class, error)
VALUES ('source', 'upsert', %s, %s, %s, 'content_too_large', %s) ON CONFLICT (backend, seq) DO NOTHING
"""


def _writes(conn: psycopg.Connection, topic_id: str, rows: list[SourceRow]) -> list[DocWrite]:
    """The page's live rows as document writes; oversized ones dead-lettered as catch-up does
    (quarantined and replayable once shortened, never a failing page)."""
    writes = []
    for r in rows:
        if not r.live:
            continue
        content = r.content or ""
        if len(content) > MAX_CONTENT_BYTES // 4 and len(content.encode()) > MAX_CONTENT_BYTES:
            conn.execute(TOO_LARGE_SQL, (r.version_seq, r.event_id, topic_id,
                                         f"content is over the {MAX_CONTENT_BYTES}-byte limit"))
            continue
        writes.append(DocWrite(r.version_seq, r.event_id, topic_id, False, content, r.created_at))
    return writes


def write_page(conn: psycopg.Connection, lease: Lease, rows: list[SourceRow], rows_done_before: int,
               writer: Writer = pg_documents.apply_staged, *, last: bool = False) -> PageResult:
    """Documents, checkpoint and progress of one page in one fenced transaction: all or nothing."""
    with conn.transaction():
        # a page lost to a server crash loses its checkpoint with it and is simply copied again
        conn.execute("SET LOCAL synchronous_commit = off")
        _fence(conn, lease)
        return _write_page(conn, lease, rows, rows_done_before, writer, last)


def _write_page(conn: psycopg.Connection, lease: Lease, rows: list[SourceRow], rows_done_before: int,
                writer: Writer, last: bool) -> PageResult:
    """Inside a fenced transaction: documents, then checkpoint + progress (+ the finish when `last`)."""
    if not rows:
        raise ValueError("write_page needs at least one row")
    writes = _writes(conn, lease.topic_id, rows)
    copied = sum(writer(conn, writes).values()) if writes else 0
    skipped = len(rows) - copied
    conn.execute(PAGE_DONE_SQL, {"key": lease.partition_key, "ts": rows[-1].created_at, "id": rows[-1].event_id,
                                 "done": rows_done_before + len(rows), "token": lease.token, "rows": len(rows),
                                 "copied": copied, "skipped": skipped, "last": last})
    return PageResult(len(rows), copied, skipped)


# --------------------------------------------------------------------------- small partitions together

BATCH_PARTITIONS = 64  # partitions considered (and their job rows locked) per shared transaction

_BATCH = ("unnest(%(keys)s::text[], %(topics)s::text[], %(starts)s::bigint[], %(ends)s::bigint[]) "
          "AS p(key, topic, w_start, w_end)")

BATCH_JOBS_SQL = f"""
INSERT INTO cn_search.backfill_jobs (partition_key, topic_id, window_start, window_end, high_watermark)
SELECT key, topic, w_start, w_end, %(seq)s FROM {_BATCH} ORDER BY key
ON CONFLICT (partition_key) DO NOTHING
"""

# Job rows locked in key order (so two runs never deadlock), with what deciding needs: the status, a live
# lease, a checkpoint to resume after, the progress of a completed job, and the manifest rows in the window.
BATCH_STATE_SQL = f"""
SELECT p.key, j.status, coalesce(j.heartbeat_at > now() - make_interval(secs => %(timeout)s), false),
       c.partition_key IS NOT NULL, j.rows_copied + j.rows_skipped, coalesce(j.rows_total, 0),
       (SELECT count(*) FROM cn_search.backfill_manifest m
        WHERE m.topic_id = p.topic AND m.created_at >= p.w_start AND m.created_at < p.w_end)
FROM {_BATCH}
JOIN cn_search.backfill_jobs j ON j.partition_key = p.key
LEFT JOIN cn_search.backfill_checkpoints c ON c.partition_key = p.key
ORDER BY p.key
FOR UPDATE OF j
"""

BATCH_READ_SQL = f"""
SELECT p.key, {_SOURCE_ROW}
FROM {_BATCH}
JOIN cn_search.backfill_manifest m ON m.topic_id = p.topic AND m.created_at >= p.w_start AND m.created_at < p.w_end
{_SOURCE_JOIN}
ORDER BY p.key, m.created_at, m.event_id
"""

# Every partition of the batch finished at once: its checkpoint, its page log row and its job.
BATCH_DONE_SQL = """
WITH p AS (
    SELECT * FROM unnest(%(keys)s::text[], %(ts)s::bigint[], %(ids)s::text[], %(done)s::bigint[],
                         %(total)s::bigint[], %(copied)s::bigint[]) AS p(key, ts, id, done, total, copied)
), checkpoint AS (
    INSERT INTO cn_search.backfill_checkpoints (partition_key, last_created_at, last_event_id, rows_done,
                                                lease_token, updated_at)
    SELECT key, ts, id, done, %(token)s, now() FROM p WHERE done > 0
), page_log AS (
    INSERT INTO cn_search.backfill_page_log (partition_key, lease_token, rows_done, rows_copied)
    SELECT key, %(token)s, done, copied FROM p WHERE done > 0
)
UPDATE cn_search.backfill_jobs j SET status = 'succeeded', lease_token = %(token)s, lease_owner = %(owner)s,
    heartbeat_at = now(), attempts = j.attempts + 1, started_at = now(), finished_at = now(), last_error = NULL,
    high_watermark = %(seq)s, rows_total = p.total, rows_copied = p.copied, rows_skipped = p.done - p.copied
FROM p WHERE j.partition_key = p.key
"""


class _Member(NamedTuple):
    key: str
    topic_id: str
    window: Window
    rows_total: int


def _window_params(parts: list) -> dict[str, list]:
    """The `_BATCH` arrays of (key, topic, window, ...) tuples."""
    return {"keys": [p[0] for p in parts], "topics": [p[1] for p in parts],
            "starts": [p[2].start for p in parts], "ends": [p[2].end for p in parts]}


# --------------------------------------------------------------------------- one partition


@dataclass
class PartitionResult:
    partition_key: str
    topic_id: str
    window: Window
    rows_total: int
    rows_done: int  # behind the checkpoint now, including rows done by earlier attempts
    rows_copied: int = 0  # this attempt
    rows_skipped: int = 0  # this attempt
    pages: int = 0
    resumed_after_rows: int = 0
    duration_s: float = 0.0
    noop: bool = False

    @property
    def rows_per_second(self) -> float:
        return (self.rows_copied + self.rows_skipped) / self.duration_s if self.duration_s > 0 else 0.0

    def metadata(self) -> dict:
        return {"partition": self.partition_key, "rows_total": self.rows_total, "rows_done": self.rows_done,
                "rows_copied": self.rows_copied, "rows_skipped_newer_or_deleted": self.rows_skipped,
                "pages": self.pages, "resumed_after_rows": self.resumed_after_rows,
                "rows_per_second": round(self.rows_per_second, 1), "duration_seconds": round(self.duration_s, 3),
                "noop_already_complete": self.noop}


@dataclass
class PartitionOptions:
    page_size: int = DEFAULT_PAGE_SIZE
    lease_timeout_s: float = DEFAULT_LEASE_TIMEOUT_S
    rebuild: bool = False
    max_rows_per_second: float = 0.0  # 0: unthrottled; otherwise spare the source
    writer: Writer = field(default=pg_documents.apply_staged)  # measured faster than apply for pages


class Backfiller:
    """Copies partitions one after another on one connection and one heartbeat (a run, a bench worker).

    Its commits are asynchronous (a page lost to a server crash loses its checkpoint with it and is
    simply copied again); leaving the `with` block normally flushes them, so whatever a run reports as
    done is durable.
    """

    def __init__(self, conninfo: str, *, owner: str, options: PartitionOptions | None = None):
        self.conninfo, self.owner, self.options = conninfo, owner, options or PartitionOptions()
        if self.options.page_size < 1:
            raise BackfillError("page_size must be at least 1")

    def __enter__(self) -> "Backfiller":
        self.conn = db.connect(self.conninfo)
        self.conn.execute("SET synchronous_commit = off")
        # a page is a few thousand index lookups: starting parallel workers for it costs more than it saves
        self.conn.execute("SET max_parallel_workers_per_gather = 0")
        pg_documents.create_stage(self.conn)
        self.heartbeat = Heartbeat(self.conninfo, max(0.2, self.options.lease_timeout_s / 4)).__enter__()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.heartbeat.__exit__(exc_type, *exc)
        try:
            if exc_type is None:
                flush(self.conn)
        finally:
            self.conn.close()

    def run(self, partition_key: str, topic_id: str, window: Window,
            on_page: Callable[[PartitionResult], None] | None = None) -> PartitionResult:
        """Copy one partition to completion under a lease; resumes after its checkpoint.

        The lease, the first page and, when that page is the last, the finish commit as one transaction:
        most weekly windows fit one page, so most partitions cost one commit. Every further page is its
        own fenced transaction with its checkpoint.
        """
        opts, conn = self.options, self.conn
        started = time.monotonic()
        lease = taken = None
        try:
            with conn.transaction():
                taken = take(conn, partition_key, topic_id, window, require_watermark(conn), owner=self.owner,
                             lease_timeout_s=opts.lease_timeout_s, rebuild=opts.rebuild)
                result = PartitionResult(partition_key, topic_id, window, taken.rows_total, taken.rows_done,
                                         resumed_after_rows=taken.rows_done if taken.after else 0,
                                         noop=taken.completed)
                if not taken.completed:
                    after, done = self._page(taken, taken.after, result)
            if taken.completed:
                result.duration_s = time.monotonic() - started
                return result
            lease = taken
            self.heartbeat.track(lease)
            while True:
                result.duration_s = time.monotonic() - started
                if on_page and result.pages:
                    on_page(result)
                if done:
                    break
                _throttle(result, opts.max_rows_per_second, started)
                lost = self.heartbeat.lost(lease)
                if lost is not None:
                    raise lost if isinstance(lost, LeaseLost) else LeaseLost(
                        f"heartbeat for partition {partition_key} failed: {type(lost).__name__}")
                with conn.transaction():
                    _fence(conn, lease)
                    after, done = self._page(lease, after, result)
        except (LeaseLost, LeaseBusy):
            raise
        except Exception as exc:
            if taken is not None and not taken.completed:
                self._record_failure(lease, taken, exc)
            raise
        finally:
            self.heartbeat.track(None)
        result.duration_s = time.monotonic() - started
        return result

    def run_many(self, partitions: list[tuple[str, str, Window]]) -> Iterator[PartitionResult]:
        """Copy (key, topic, window) partitions in order, yielding each one's result.

        Partitions that fit a page together (most weekly windows hold a few hundred rows) are taken,
        copied and finished in one transaction: one commit and six statements for the lot instead of
        about ten round trips each, the largest per-partition cost the bench measured. A partition that
        needs several pages, resumes after a checkpoint or is held by another run goes through `run`,
        alone; so do all of them when a rebuild or a throttle is asked for.
        """
        i = 0
        while i < len(partitions):
            group = partitions[i:i + BATCH_PARTITIONS]
            done, taken = self._batch(group)
            for key, topic_id, window in group[:taken]:
                yield done[key] if key in done else self.run(key, topic_id, window)
            i += taken

    def _batch(self, group: list[tuple[str, str, Window]]) -> tuple[dict[str, PartitionResult], int]:
        """Finish the small partitions at the front of `group` in one transaction.

        Returns their results and how many partitions from the front it settled or left to `run`
        (at least one). Should the transaction fail, nothing of it stays and all of them go to `run`,
        which records each failure on its own job.
        """
        opts, conn = self.options, self.conn
        if opts.rebuild or opts.max_rows_per_second > 0:
            return {}, len(group)
        started = time.monotonic()
        arrays = _window_params(group)
        taken = 0
        try:
            with conn.transaction():
                wm = require_watermark(conn)
                conn.execute(BATCH_JOBS_SQL, {**arrays, "seq": wm.seq})
                state = {row[0]: row[1:] for row in conn.execute(
                    BATCH_STATE_SQL, {**arrays, "timeout": opts.lease_timeout_s})}
                results: dict[str, PartitionResult] = {}
                members: list[_Member] = []
                budget, topics = opts.page_size, set()
                for key, topic_id, window in group:
                    status, live, resumes, done, total, manifest_rows = state[key]
                    if status == "succeeded":
                        results[key] = PartitionResult(key, topic_id, window, total, done, noop=True)
                    elif not ((status == "running" and live) or resumes or manifest_rows > opts.page_size):
                        if manifest_rows > budget or topic_id in topics:
                            break  # the page is full (rows are counted per topic): the next batch starts here
                        members.append(_Member(key, topic_id, window, manifest_rows))
                        budget -= manifest_rows
                        topics.add(topic_id)
                    taken += 1
                if members:
                    results.update(self._copy_members(members, wm, started))
        except Exception:
            return {}, max(taken, 1)
        return results, max(taken, 1)

    def _copy_members(self, members: list[_Member], wm: Watermark, started: float) -> dict[str, PartitionResult]:
        """Inside the batch's transaction: read every member's window, write, finish them all."""
        conn = self.conn
        rows: dict[str, list[SourceRow]] = {m.key: [] for m in members}
        for key, *row in conn.execute(BATCH_READ_SQL, _window_params(members)).fetchall():
            rows[key].append(SourceRow(*row))
        writes = [w for m in members for w in _writes(conn, m.topic_id, rows[m.key])]
        written = self.options.writer(conn, writes) if writes else Counter()
        done = [len(rows[m.key]) for m in members]
        copied = [written[m.topic_id] for m in members]  # one partition per topic in a batch
        last = [rows[m.key][-1] if rows[m.key] else SourceRow(0, "", 0, False, None) for m in members]
        conn.execute(BATCH_DONE_SQL, {
            "keys": [m.key for m in members], "done": done, "total": [m.rows_total for m in members],
            "copied": copied, "ts": [r.created_at for r in last], "ids": [r.event_id for r in last],
            "token": uuid.uuid4(), "owner": self.owner, "seq": wm.seq})
        elapsed, total_rows = time.monotonic() - started, max(1, sum(done))
        return {m.key: PartitionResult(m.key, m.topic_id, m.window, m.rows_total, n, rows_copied=c,
                                       rows_skipped=n - c, pages=1 if n else 0, duration_s=elapsed * n / total_rows)
                for m, n, c in zip(members, done, copied)}

    def _page(self, lease: Lease, after: tuple[int, str] | None,
              result: PartitionResult) -> tuple[tuple[int, str] | None, bool]:
        """Inside the lease's transaction: read and write the next page; finish on the last one.

        Returns the new position and whether the partition is done. A window the manifest shows empty
        finishes without a page read.
        """
        rows = read_page(self.conn, lease.topic_id, lease.window, after, self.options.page_size) \
            if lease.rows_total else []
        if not rows:
            self.conn.execute(FINISH_SQL, (lease.partition_key,))
            return after, True
        last = len(rows) < self.options.page_size
        page = _write_page(self.conn, lease, rows, result.rows_done, self.options.writer, last)
        result.rows_done += page.rows_done
        result.rows_copied += page.rows_copied
        result.rows_skipped += page.rows_skipped
        result.pages += 1
        return (rows[-1].created_at, rows[-1].event_id), last

    def _record_failure(self, lease: Lease | None, taken: Lease, exc: Exception) -> None:
        """Mark the job failed with the error (class and first line; never row content) if still ours.

        A failure inside the first transaction rolled the lease back with it: take it again to record.
        """
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        try:
            if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                return  # the connection is broken: nothing can be recorded
            if lease is None:
                lease = acquire(self.conn, taken.partition_key, taken.topic_id, taken.window,
                                require_watermark(self.conn), owner=self.owner,
                                lease_timeout_s=self.options.lease_timeout_s, rebuild=self.options.rebuild)
            fail(self.conn, lease, error)
        except Exception:
            pass  # the lease is gone or the database is: the original error is what matters


def flush(conn: psycopg.Connection) -> None:
    """Make every earlier asynchronous commit of this session durable: a synchronous commit flushes
    the WAL up to its own record, which lies after theirs."""
    conn.execute("SET synchronous_commit = on")
    with conn.transaction():
        conn.execute("SELECT pg_current_xact_id()")  # an xid, so the commit writes (and flushes) a record


def run_partition(conninfo: str, partition_key: str, topic_id: str, window: Window, *, owner: str,
                  options: PartitionOptions | None = None,
                  on_page: Callable[[PartitionResult], None] | None = None) -> PartitionResult:
    """One partition on its own connection (a Backfiller of one)."""
    with Backfiller(conninfo, owner=owner, options=options) as b:
        return b.run(partition_key, topic_id, window, on_page)


def _throttle(result: PartitionResult, max_rows_per_second: float, started: float) -> None:
    """Rate limit (not synchronization): hold the page rate at or below the configured ceiling."""
    if max_rows_per_second <= 0:
        return
    ahead = (result.rows_copied + result.rows_skipped) / max_rows_per_second - (time.monotonic() - started)
    if ahead > 0:
        time.sleep(ahead)


# --------------------------------------------------------------------------- the backfill as a whole


@dataclass(frozen=True)
class Progress:
    watermark: int | None
    captured_at: str | None
    rows_total: int
    rows_done: int
    partitions: dict[str, int]  # status -> count
    rows_per_second: float  # over the last RATE_WINDOW_S only
    eta_seconds: float | None  # None: nothing moved recently, so no honest estimate

    def as_dict(self) -> dict:
        return {"high_watermark": self.watermark, "captured_at": self.captured_at, "rows_total": self.rows_total,
                "rows_done": self.rows_done,
                "percent_done": round(100.0 * self.rows_done / self.rows_total, 2) if self.rows_total else None,
                "partitions": self.partitions, "rows_per_second": round(self.rows_per_second, 1),
                "eta_seconds": round(self.eta_seconds, 1) if self.eta_seconds is not None else None}


RATE_SQL = """
SELECT coalesce(sum(rows_done), 0),
       extract(epoch FROM now() - (SELECT min(logged_at) FROM cn_search.backfill_page_log))
FROM cn_search.backfill_page_log WHERE logged_at > now() - make_interval(secs => %s)
"""


def progress(conn: psycopg.Connection) -> Progress:
    """Rows done against the manifest, and an ETA from the current rate (the last minute) only."""
    wm = conn.execute("SELECT high_watermark, captured_at, coalesce(manifest_rows, 0) FROM cn_search.backfill_watermarks "
                      "ORDER BY watermark_id DESC LIMIT 1").fetchone()
    partitions = dict(conn.execute("SELECT status, count(*) FROM cn_search.backfill_jobs GROUP BY status").fetchall())
    done = conn.execute("SELECT coalesce(sum(least(rows_copied + rows_skipped, coalesce(rows_total, 0))), 0) "
                        "FROM cn_search.backfill_jobs").fetchone()[0]
    recent, since_first = conn.execute(RATE_SQL, (RATE_WINDOW_S,)).fetchone()
    span = min(RATE_WINDOW_S, float(since_first or 0.0))
    rate = float(recent) / span if recent and span > 0 else 0.0
    total = wm[2] if wm else 0
    remaining = max(0, total - int(done))
    eta = (remaining / rate if rate > 0 else None) if remaining else 0.0
    return Progress(wm[0] if wm else None, wm[1].isoformat(timespec="seconds") if wm else None, total, int(done),
                    {k: int(v) for k, v in partitions.items()}, rate, eta)
