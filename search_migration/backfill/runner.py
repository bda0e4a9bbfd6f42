"""Copy partitions to completion on one connection: leases, pages, heartbeats and the final flush.

A backfill copies what the source held at a captured high watermark; everything later arrives through
catch-up. Every page commits with its checkpoint in one transaction fenced by the partition's lease, so
a run that lost its lease writes nothing and a crashed run resumes after its checkpoint. No Dagster here:
the Dagster layer (defs/backfill.py) only maps partitions to windows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import psycopg

from search_migration import db
from search_migration.backfill import batch
from search_migration.backfill.lease import FINISH_SQL, Heartbeat, Lease, acquire, fail, fence, take
from search_migration.backfill.model import DEFAULT_LEASE_TIMEOUT_S, DEFAULT_PAGE_SIZE, BackfillError, LeaseBusy, LeaseLost, Window
from search_migration.backfill.pages import Writer, read_page, write_locked
from search_migration.backfill.result import PartitionResult
from search_migration.backfill.watermark import require_watermark
from search_migration.write_path import pg_documents
from search_migration.errors import first_line


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
        self.copied = 0  # rows this backfiller wrote (statistics are refreshed on exit when they are many)
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
                refresh_statistics(self.conn, self.copied)
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
                self.copied += result.rows_copied
                return result
            lease = taken
            self.heartbeat.track(lease)
            while True:
                result.duration_s = time.monotonic() - started
                if on_page and result.pages:
                    on_page(result)
                if done:
                    break
                throttle(result, opts.max_rows_per_second, started)
                lost = self.heartbeat.lost(lease)
                if lost is not None:
                    raise lost if isinstance(lost, LeaseLost) else LeaseLost(
                        f"heartbeat for partition {partition_key} failed: {type(lost).__name__}")
                with conn.transaction():
                    fence(conn, lease)
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
        self.copied += result.rows_copied
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
            group = partitions[i:i + batch.BATCH_PARTITIONS]
            done, taken = batch.copy_small(self.conn, self.owner, self.options, group)
            for key, topic_id, window in group[:taken]:
                if key in done:
                    self.copied += done[key].rows_copied
                    yield done[key]
                else:
                    yield self.run(key, topic_id, window)
            i += taken

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
        page = write_locked(self.conn, lease, rows, result.rows_done, self.options.writer, last)
        result.rows_done += page.rows_done
        result.rows_copied += page.rows_copied
        result.rows_skipped += page.rows_skipped
        result.pages += 1
        return (rows[-1].chunk_at, rows[-1].event_id), last

    def _record_failure(self, lease: Lease | None, taken: Lease, exc: Exception) -> None:
        """Mark the job failed with the error (class and first line; never row content) if still ours.

        A failure inside the first transaction rolled the lease back with it: take it again to record.
        """
        error = f"{type(exc).__name__}: {first_line(exc)}"
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


FILLED = ("cn_search.post_search_documents", "cn_search.post_title_words", "cn_search.search_vocabulary")
RELTUPLES_SQL = "SELECT greatest(reltuples, 0) FROM pg_class WHERE oid = 'cn_search.post_search_documents'::regclass"


def refresh_statistics(conn: psycopg.Connection, copied: int) -> None:
    """ANALYZE the tables a backfill fills once it wrote a tenth of what the planner thinks they hold:
    until autovacuum gets to it, reads right after a first backfill are planned for an empty table (the
    demo's first shadow reads: a suggest at 250 ms instead of 25)."""
    if copied > 0.1 * conn.execute(RELTUPLES_SQL).fetchone()[0] + 1000:
        for table in FILLED:
            conn.execute(f"ANALYZE {table}")


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


def throttle(result: PartitionResult, max_rows_per_second: float, started: float) -> None:
    """Rate limit (not synchronization): hold the page rate at or below the configured ceiling."""
    if max_rows_per_second <= 0:
        return
    ahead = (result.rows_copied + result.rows_skipped) / max_rows_per_second - (time.monotonic() - started)
    if ahead > 0:
        time.sleep(ahead)

