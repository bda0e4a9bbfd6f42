"""Small partitions together: most topic-weeks hold a few hundred rows, so several share one transaction."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import NamedTuple

import psycopg

from search_migration.backfill.model import Watermark, Window
from search_migration.backfill.pages import SOURCE_JOIN, SOURCE_ROW, SourceRow, Writer, document_writes
from search_migration.backfill.result import PartitionResult
from search_migration.backfill.watermark import require_watermark
from search_migration.source import contract

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
        WHERE m.topic_id = p.topic AND m.chunk_at >= p.w_start AND m.chunk_at < p.w_end)
FROM {_BATCH}
JOIN cn_search.backfill_jobs j ON j.partition_key = p.key
LEFT JOIN cn_search.backfill_checkpoints c ON c.partition_key = p.key
ORDER BY p.key
FOR UPDATE OF j
"""

BATCH_READ_SQL = f"""
SELECT p.key, {SOURCE_ROW}
FROM {_BATCH}
JOIN cn_search.backfill_manifest m ON m.topic_id = p.topic AND m.chunk_at >= p.w_start AND m.chunk_at < p.w_end
{SOURCE_JOIN}
ORDER BY p.key, m.chunk_at, m.event_id
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


def window_params(parts: list) -> dict[str, list]:
    """The `_BATCH` arrays of (key, topic, window, ...) tuples."""
    return {"keys": [p[0] for p in parts], "topics": [p[1] for p in parts],
            "starts": [p[2].start for p in parts], "ends": [p[2].end for p in parts]}


def copy_small(conn: psycopg.Connection, owner: str, options, group: list[tuple[str, str, Window]]
               ) -> tuple[dict[str, PartitionResult], int]:
    """Finish the small partitions at the front of `group` in one transaction.

    Returns their results and how many partitions from the front it settled or left to `run`
    (at least one). Should the transaction fail, nothing of it stays and all of them go to `run`,
    which records each failure on its own job.
    """
    opts = options
    if opts.rebuild or opts.max_rows_per_second > 0:
        return {}, len(group)
    started = time.monotonic()
    arrays = window_params(group)
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
                results.update(_copy_members(conn, owner, opts.writer, members, wm, started))
    except Exception:
        return {}, max(taken, 1)
    return results, max(taken, 1)

def _copy_members(conn: psycopg.Connection, owner: str, writer: Writer, members: list[_Member], wm: Watermark,
                  started: float) -> dict[str, PartitionResult]:
    """Inside the batch's transaction: read every member's window, write, finish them all."""
    rows: dict[str, list[SourceRow]] = {m.key: [] for m in members}
    for key, *row in conn.execute(BATCH_READ_SQL, {**window_params(members), "now": contract.now_unix()}).fetchall():
        rows[key].append(SourceRow(*row))
    writes = [w for m in members for w in document_writes(conn, m.topic_id, rows[m.key])]
    written = writer(conn, writes) if writes else Counter()
    done = [len(rows[m.key]) for m in members]
    copied = [written[m.topic_id] for m in members]  # one partition per topic in a batch
    last = [rows[m.key][-1] if rows[m.key] else SourceRow(0, "", 0, False, None, 0, None, None, None, None) for m in members]
    conn.execute(BATCH_DONE_SQL, {
        "keys": [m.key for m in members], "done": done, "total": [m.rows_total for m in members],
        "copied": copied, "ts": [r.chunk_at for r in last], "ids": [r.event_id for r in last],
        "token": uuid.uuid4(), "owner": owner, "seq": wm.seq})
    elapsed, total_rows = time.monotonic() - started, max(1, sum(done))
    return {m.key: PartitionResult(m.key, m.topic_id, m.window, m.rows_total, n, rows_copied=c,
                                   rows_skipped=n - c, pages=1 if n else 0, duration_s=elapsed * n / total_rows)
            for m, n, c in zip(members, done, copied)}
