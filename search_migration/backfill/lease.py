"""Leases on partitions: one run at a time per partition, fenced so a run that lost its lease writes nothing."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass

import psycopg

from search_migration import db
from search_migration.backfill.model import DEFAULT_LEASE_TIMEOUT_S, LeaseBusy, LeaseLost, Watermark, Window

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
                  WHERE topic_id = %(topic)s AND chunk_at >= %(start)s AND chunk_at < %(end)s),
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


def fence(conn: psycopg.Connection, lease: Lease) -> None:
    """Inside a transaction: lock the job row and refuse unless this lease is still the live one."""
    row = conn.execute("SELECT lease_token, status FROM cn_search.backfill_jobs WHERE partition_key = %s FOR UPDATE",
                       (lease.partition_key,)).fetchone()
    if row is None or row[0] != lease.token or row[1] != "running":
        raise LeaseLost(f"lease on partition {lease.partition_key} was lost (taken over or finished elsewhere); "
                        "this run writes nothing more")


def heartbeat(conn: psycopg.Connection, lease: Lease) -> None:
    """Renew the lease; raises LeaseLost when it is no longer ours."""
    with conn.transaction():
        fence(conn, lease)
        conn.execute("UPDATE cn_search.backfill_jobs SET heartbeat_at = now() WHERE partition_key = %s",
                     (lease.partition_key,))


FINISH_SQL = ("UPDATE cn_search.backfill_jobs SET status = 'succeeded', finished_at = now(), heartbeat_at = now() "
              "WHERE partition_key = %s")


def finish(conn: psycopg.Connection, lease: Lease) -> None:
    with conn.transaction():
        fence(conn, lease)
        conn.execute(FINISH_SQL, (lease.partition_key,))


def fail(conn: psycopg.Connection, lease: Lease, error: str) -> None:
    """Record a failure (the error class and a short message; never row content) if still ours."""
    with conn.transaction():
        fence(conn, lease)
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

