"""Write the demo corpus the way the product does, then bring the legacy index to stage `legacy`.

Phase 1 writes each batch (events, topic rows, outbox rows, deletions) in one transaction, so the
source is consistent after any crash and a re-run resumes at the first missing batch. Phase 2 is
the product's legacy indexer: every live (post, topic) into Meilisearch, then the consumer offset
moves to the outbox head. Both phases are idempotent.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Callable

import meilisearch
import psycopg
from meilisearch.errors import MeilisearchCommunicationError, MeilisearchTimeoutError

from search_migration.cutover import flags
from search_migration.write_path import meili_index
from search_migration.source import contract
from search_migration.cutover import stages
from search_migration.local.demo_corpus import BATCH_POSTS, NOTE_KIND, Batch, generate
from search_migration.settings import ConfigError

MEILI_PUSH_DOCS = 20_000

LIVE_ROWS_SQL = """
SELECT e.event_id, et.topic_id, e.content, e.created_at
FROM cn_relay.event_topics et
JOIN cn_relay.events e ON e.event_id = et.event_id
WHERE NOT e.is_deleted
"""



class SeedError(Exception):
    """The seed cannot proceed; the message is one printable line."""


@dataclass
class SeedResult:
    posts_written: int
    batches_skipped: int
    documents_indexed: int
    outbox_head: int
    fingerprint: str


Progress = Callable[[str, int, int], None]  # phase, done, total


def _noop(phase: str, done: int, total: int) -> None:
    pass


def _write_batch(conn: psycopg.Connection, batch: Batch) -> None:
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy("COPY cn_relay.events (event_id, pubkey, kind, content, tags, created_at) FROM STDIN") as cp:
            for p in batch.posts:
                cp.write_row((p.event_id, p.pubkey, NOTE_KIND, p.content, json.dumps(p.tags), p.created_at))
        with cur.copy("COPY cn_relay.event_topics (event_id, topic_id) FROM STDIN") as cp:
            for p in batch.posts:
                for t in p.topics:
                    cp.write_row((p.event_id, t))
        outbox = [("upsert", p.event_id, t, "created", p.created_at) for p in batch.posts for t in p.topics]
        if batch.deletions:
            cur.execute("UPDATE cn_relay.events SET is_deleted = true WHERE event_id = ANY(%s)",
                        ([p.event_id for p in batch.deletions],))
            outbox += [("delete", p.event_id, t, "deleted", p.created_at) for p in batch.deletions for t in p.topics]
        for p, t in batch.topic_removals:
            cur.execute("DELETE FROM cn_relay.event_topics WHERE event_id = %s AND topic_id = %s", (p.event_id, t))
            outbox.append(("delete", p.event_id, t, "topic_removed", p.created_at))
        with cur.copy("COPY cn_relay.events_outbox (op, event_id, topic_id, reason, created_at, ingested_at) "
                      "FROM STDIN") as cp:
            for op, event_id, topic, reason, ts in outbox:
                stamp = _utc(ts)
                cp.write_row((op, event_id, topic, reason, stamp, stamp))


def _utc(unix_seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(unix_seconds, dt.timezone.utc)


def write_source(conn: psycopg.Connection, posts: int, topics: int, seed: int,
                 progress: Progress = _noop) -> tuple[int, int]:
    """Phase 1: write the batches not yet committed; return (posts written, batches already present)."""
    existing = conn.execute("SELECT count(*) FROM cn_relay.events").fetchone()[0]
    written = skipped = 0
    for batch in generate(posts, topics, seed):
        if batch.number == 0 and existing:
            first = batch.posts[0].event_id if batch.posts else None
            if not conn.execute("SELECT 1 FROM cn_relay.events WHERE event_id = %s", (first,)).fetchone():
                raise SeedError(f"the database holds a different corpus ({existing} events); "
                                "pass --reset to replace it")
        end = batch.number * BATCH_POSTS + len(batch.posts)
        if end <= existing:
            skipped += 1
        else:
            _write_batch(conn, batch)
            written += len(batch.posts)
        progress("source", end, posts)
    total = conn.execute("SELECT count(*) FROM cn_relay.events").fetchone()[0]
    if total != posts:
        raise SeedError(f"the database holds {total} events but this corpus has {posts}; "
                        "pass --reset to replace it")
    return written, skipped


def index_legacy(conn: psycopg.Connection, meili: meilisearch.Client, index_uid: str,
                 progress: Progress = _noop) -> int:
    """Phase 2: the product's legacy indexer. Skips the work when Meilisearch already agrees."""
    head = contract.outbox_head(conn)
    expected = contract.live_rows_per_topic(conn)
    total = sum(expected.values())
    meili_index.ensure_index(meili, index_uid)
    indexed = 0
    if meili_index.counts_per_topic(meili, index_uid) != expected:
        index = meili.index(index_uid)
        uids = []
        with conn.transaction(), conn.cursor(name="legacy_rows") as cur:  # server-side cursors need one
            cur.itersize = MEILI_PUSH_DOCS
            cur.execute(LIVE_ROWS_SQL)
            sent = 0
            while rows := cur.fetchmany(MEILI_PUSH_DOCS):
                task = index.add_documents([meili_index.document(*row) for row in rows], meili_index.PRIMARY_KEY)
                uids.append(task.task_uid)
                sent += len(rows)
                progress("meili-send", sent, total)
        try:
            indexed = meili_index.wait_tasks(meili, uids, on_progress=lambda n: progress("meili-index", n, total))
        except RuntimeError as exc:
            raise SeedError(f"Meilisearch rejected documents: {exc}") from None
        got = meili_index.counts_per_topic(meili, index_uid)
        if got != expected:
            raise SeedError(f"legacy index disagrees with the source after indexing "
                            f"({sum(got.values())} documents, expected {total})")
    with conn.transaction():
        conn.execute(
            "INSERT INTO cn_relay.consumer_offsets (consumer, last_seq) VALUES (%s, %s) "
            "ON CONFLICT (consumer) DO UPDATE SET last_seq = EXCLUDED.last_seq, updated_at = now()",
            (contract.CONSUMER, head))
    return indexed


def fingerprint(conn: psycopg.Connection) -> str:
    """A content hash of the source corpus: same seed and sizes → same fingerprint."""
    return conn.execute("""
        SELECT md5(coalesce(string_agg(
            e.event_id || ':' || md5(e.content) || ':' || e.created_at || ':' || e.is_deleted || ':' ||
            coalesce((SELECT string_agg(topic_id, ',' ORDER BY topic_id)
                      FROM cn_relay.event_topics t WHERE t.event_id = e.event_id), ''),
            '|' ORDER BY e.event_id), ''))
        FROM cn_relay.events e
    """).fetchone()[0]


def reset(conn: psycopg.Connection, meili: meilisearch.Client, index_uid: str) -> None:
    """Drop the demo corpus and everything derived from it, and go back to stage legacy (audited)."""
    flags.set_flags(conn, stages.BASE_FLAGS["legacy"], by="demo seed --reset", reason="demo corpus replaced",
                    stage_to="legacy")
    with conn.transaction():
        conn.execute("""
            TRUNCATE cn_relay.event_topics, cn_relay.events_outbox, cn_relay.consumer_offsets,
                     cn_search.post_search_documents, cn_search.backfill_checkpoints, cn_search.backfill_jobs,
                     cn_search.backfill_watermarks, cn_search.backfill_manifest, cn_search.backfill_page_log,
                     cn_search.shadow_read_logs,
                     cn_search.dead_letter_replays, cn_search.dead_letters, cn_search.consumer_side_offsets,
                     cn_search.side_write_failures, cn_search.outbox_gaps, cn_search.write_path_counters,
                     cn_search.read_request_counts
                     RESTART IDENTITY
        """)
        conn.execute("DELETE FROM cn_relay.events")
    meili_index.delete_index(meili, index_uid)


def seed(conn: psycopg.Connection, meili: meilisearch.Client, index_uid: str, *, posts: int, topics: int,
         seed: int = 42, reset_first: bool = False, progress: Progress = _noop) -> SeedResult:
    if posts < 1 or topics < 1:
        raise ConfigError("--posts and --topics must be at least 1")
    if not conn.autocommit:
        raise ValueError("demo seed needs an autocommit connection (search_migration.db.connect)")
    try:
        meili.health()
    except MeilisearchCommunicationError:
        raise SeedError(f"Meilisearch at {meili.config.url} is unreachable; nothing was written") from None
    if reset_first:
        reset(conn, meili, index_uid)
    written, skipped = write_source(conn, posts, topics, seed, progress)
    try:
        indexed = index_legacy(conn, meili, index_uid, progress)
    except (MeilisearchCommunicationError, MeilisearchTimeoutError):
        raise SeedError(f"Meilisearch at {meili.config.url} went away while indexing; the source corpus is "
                        "committed, re-run `demo seed` with the same arguments to finish the legacy index") from None
    return SeedResult(written, skipped, indexed, contract.outbox_head(conn), fingerprint(conn))
