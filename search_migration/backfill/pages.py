"""Keyset pages of one partition: read from the source, written with their checkpoint in one transaction."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, NamedTuple

import psycopg

from search_migration.backfill.lease import Lease, fence
from search_migration.backfill.model import Window
from search_migration.source import contract
from search_migration.write_path import pg_documents
from search_migration.write_path.pg_documents import MAX_CONTENT_BYTES, DocWrite

Writer = Callable[[psycopg.Connection, list[DocWrite]], Counter]  # rows written per topic


class SourceRow(NamedTuple):
    chunk_at: int  # the manifest's keyset position (created_at clamped into the partitioned span)
    event_id: str
    version_seq: int
    live: bool
    content: str | None
    created_at: int
    kind: int | None
    expires_at: int | None
    pubkey: str | None  # raw_json's pubkey and tags: the document's author, title tags and t tags
    tags: list | None


# A manifest row's version with the source's current content, and whether the product still indexes it
# there (searchable, and still in the topic). Of raw_json only what the document needs beside the columns
# (its pubkey and tags: cn-index's author, title/subject and t tags), not the whole event a second time.
SOURCE_ROW = f"""m.chunk_at, m.event_id, m.version_seq,
       coalesce({contract.SEARCHABLE} AND EXISTS (
           SELECT 1 FROM cn_relay.event_topics et WHERE et.event_id = m.event_id AND et.topic_id = m.topic_id),
           false) AS live,
       e.content, e.created_at, e.kind, e.expires_at, e.raw_json->>'pubkey', e.raw_json->'tags'"""
SOURCE_JOIN = "LEFT JOIN cn_relay.events e ON e.event_id = m.event_id"

PAGE_SQL = f"""
SELECT {SOURCE_ROW}
FROM cn_search.backfill_manifest m
{SOURCE_JOIN}
WHERE m.topic_id = %(topic)s AND m.chunk_at >= %(start)s AND m.chunk_at < %(end)s
  AND (m.chunk_at, m.event_id) > (%(after_ts)s, %(after_id)s)
ORDER BY m.chunk_at, m.event_id
LIMIT %(limit)s
"""


def read_page(conn: psycopg.Connection, topic_id: str, window: Window, after: tuple[int, str] | None,
              limit: int) -> list[SourceRow]:
    """The next keyset page of the window after `after`, in (created_at, event_id) order."""
    after_ts, after_id = after if after else (window.start - 1, "")
    rows = conn.execute(PAGE_SQL, {"topic": topic_id, "start": window.start, "end": window.end,
                                   "after_ts": after_ts, "after_id": after_id, "limit": limit,
                                   "now": contract.now_unix()}).fetchall()
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


def document_writes(conn: psycopg.Connection, topic_id: str, rows: list[SourceRow]) -> list[DocWrite]:
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
        raw = {"content": content, "created_at": r.created_at, "kind": r.kind, "pubkey": r.pubkey,
               "tags": r.tags or []}  # the event as cn-index reads it: the same document as catch-up writes
        writes.append(pg_documents.doc_write_for_event(r.version_seq, raw, topic_id, post_id=r.event_id,
                                                       expires_at=r.expires_at))
    return writes


def write_page(conn: psycopg.Connection, lease: Lease, rows: list[SourceRow], rows_done_before: int,
               writer: Writer = pg_documents.apply_staged, *, last: bool = False) -> PageResult:
    """Documents, checkpoint and progress of one page in one fenced transaction: all or nothing."""
    with conn.transaction():
        # a page lost to a server crash loses its checkpoint with it and is simply copied again
        conn.execute("SET LOCAL synchronous_commit = off")
        fence(conn, lease)
        return write_locked(conn, lease, rows, rows_done_before, writer, last)


def write_locked(conn: psycopg.Connection, lease: Lease, rows: list[SourceRow], rows_done_before: int,
                writer: Writer, last: bool) -> PageResult:
    """Inside a fenced transaction: documents, then checkpoint + progress (+ the finish when `last`)."""
    if not rows:
        raise ValueError("write_page needs at least one row")
    writes = document_writes(conn, lease.topic_id, rows)
    copied = sum(writer(conn, writes).values()) if writes else 0
    skipped = len(rows) - copied
    conn.execute(PAGE_DONE_SQL, {"key": lease.partition_key, "ts": rows[-1].chunk_at, "id": rows[-1].event_id,
                                 "done": rows_done_before + len(rows), "token": lease.token, "rows": len(rows),
                                 "copied": copied, "skipped": skipped, "last": last})
    return PageResult(len(rows), copied, skipped)

