"""A faithful emulation of the product's indexer (cn-index, consumer `index-v1`) in `meili_only` mode.

It builds the *pre-migration* Meilisearch state for fixtures and demos: the legacy per-topic indexes
exactly as the product would have left them, defects included (an older replaceable/addressable
version in a topic its newer version dropped stays indexed). Emulates kukuri-community-node/
crates/cn-index/src/lib.rs at 884c1885: `spawn_outbox_consumer` + `handle_outbox_row`
(`handle_upsert`, `handle_delete`, `find_stale_versions`, `ensure_topic_index`), `expire_events_once`
and the reindex worker (`claim_reindex_job`, `run_reindex_job_impl`, `reindex_topic`), which a DSAR
queues. The suggest graph and community terms (cn_search, later migrations) are not part of the
pre-migration product and are left out.

Writes are fire-and-forget like the product's (an accepted task counts as success); `wait=True`
waits for every task a run enqueued and fails on any that Meilisearch rejected, for fixtures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import meilisearch
import psycopg
from meilisearch.errors import MeilisearchApiError
from psycopg.rows import dict_row

from search_migration.write_path import legacy_documents as legacy

CONSUMER = "index-v1"
BATCH_SIZE = 200  # cn-index default `consumer.batch_size`


@dataclass
class ProductIndexer:
    """One cn-index process: its own index-uid cache, the shared offset row `index-v1`."""

    conn: psycopg.Connection  # autocommit
    meili: meilisearch.Client
    wait: bool = True
    batch_size: int = BATCH_SIZE
    _known_uids: set[str] = field(default_factory=set)
    _tasks: list[int] = field(default_factory=list)

    # ---- the whole indexer, one pass ---------------------------------------------------------------

    def run(self, now: float | None = None) -> dict[str, int]:
        """Consume the outbox to its head, run queued reindex jobs, sweep expired events; with
        `wait`, return only once Meilisearch applied all of it."""
        now = int(time.time() if now is None else now)
        counts = {"outbox_rows": self.consume(now), "reindexed": self.run_reindex_jobs(now),
                  "expired": self.sweep_expired(now)}
        self.settle()
        return counts

    def settle(self) -> None:
        """Wait for every task enqueued so far (no-op unless `wait`); a rejected task is an error."""
        tasks, self._tasks = self._tasks, []
        if not self.wait or not tasks:
            return
        # Meilisearch runs its queue in enqueue order: once the last task is done, look at all at once.
        self.meili.wait_for_task(tasks[-1], timeout_in_ms=600_000, interval_in_ms=20)
        for start in range(0, len(tasks), 500):
            chunk = tasks[start:start + 500]
            for task in self.meili.get_tasks({"uids": [str(u) for u in chunk], "limit": len(chunk)}).results:
                if task.status in ("enqueued", "processing"):
                    task = self.meili.wait_for_task(task.uid, timeout_in_ms=600_000, interval_in_ms=20)
                if task.status != "succeeded":
                    raise RuntimeError(f"Meilisearch task {task.uid} {task.status}: {(task.error or {}).get('code')}")

    # ---- outbox consumer ----------------------------------------------------------------------------

    def last_seq(self) -> int:
        """`load_last_seq`: the offset row, created at 0 on first use."""
        row = self.conn.execute("SELECT last_seq FROM cn_relay.consumer_offsets WHERE consumer = %s",
                                (CONSUMER,)).fetchone()
        if row:
            return row[0]
        self.conn.execute("INSERT INTO cn_relay.consumer_offsets (consumer, last_seq) VALUES (%s, 0)", (CONSUMER,))
        return 0

    def commit_last_seq(self, seq: int) -> None:
        self.conn.execute("UPDATE cn_relay.consumer_offsets SET last_seq = %s, updated_at = NOW()"
                          " WHERE consumer = %s", (seq, CONSUMER))

    def consume(self, now: int) -> int:
        """Apply outbox rows after the offset in seq order, committing the offset after each batch."""
        last, done = self.last_seq(), 0
        while True:
            with self.conn.cursor(row_factory=dict_row) as cur:
                batch = cur.execute("SELECT seq, op, event_id, topic_id, kind, effective_key FROM cn_relay.events_outbox"
                                    " WHERE seq > %s ORDER BY seq ASC LIMIT %s", (last, self.batch_size)).fetchall()
            if not batch:
                return done
            for row in batch:
                if row["op"] == "upsert":
                    self._upsert(row, now)
                elif row["op"] == "delete":
                    self._delete(row["topic_id"], row["event_id"])
                last = row["seq"]  # unknown ops are skipped, as the product warns and moves on
            self.commit_last_seq(last)
            done += len(batch)

    def _upsert(self, row: dict, now: int) -> None:
        event = self._load_event(row["event_id"])
        if not legacy.searchable(event, now):
            if event is not None and event["expires_at"] is not None and event["expires_at"] <= now:
                self._record_expired(row["event_id"], row["topic_id"], event["expires_at"])
            self._delete(row["topic_id"], row["event_id"])
            return
        uid = self._ensure_index(row["topic_id"])
        self._track(self.meili.index(uid).add_documents([legacy.document(event, row["topic_id"])],
                                                        primary_key=legacy.PRIMARY_KEY))
        if row["effective_key"]:
            stale = self._stale_versions(row["topic_id"], row["effective_key"], row["event_id"])
            if stale:  # same topic only: an older version in a topic the new one left stays indexed
                index = self.meili.index(uid)
                self._track_raw(index.http.post(f"{index.config.paths.index}/{uid}/documents/delete-batch", stale))

    def _delete(self, topic_id: str, event_id: str) -> None:
        """`handle_delete`: also creates the topic's index if it does not exist yet."""
        uid = self._ensure_index(topic_id)
        self._track(self.meili.index(uid).delete_document(event_id))

    def _load_event(self, event_id: str) -> dict | None:
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute("SELECT raw_json, is_deleted, is_current, is_ephemeral, expires_at"
                               " FROM cn_relay.events WHERE event_id = %s", (event_id,)).fetchone()

    def _stale_versions(self, topic_id: str, key: str, current_event_id: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT e.event_id FROM cn_relay.events e JOIN cn_relay.event_topics t ON e.event_id = t.event_id"
            " WHERE t.topic_id = %s AND (e.replaceable_key = %s OR e.addressable_key = %s)"
            " AND e.event_id <> %s AND e.is_current = FALSE", (topic_id, key, key, current_event_id)).fetchall()
        return [event_id for (event_id,) in rows]

    def _record_expired(self, event_id: str, topic_id: str, expired_at: int) -> None:
        self.conn.execute("INSERT INTO cn_index.expired_events (event_id, topic_id, expired_at) VALUES (%s, %s, %s)"
                          " ON CONFLICT (event_id, topic_id) DO NOTHING", (event_id, topic_id, expired_at))

    # ---- Meilisearch --------------------------------------------------------------------------------

    def _ensure_index(self, topic_id: str) -> str:
        """`ensure_topic_index`: on a cache miss, create a missing index with primary key event_id and
        PATCH the product's settings once; an existing index is left exactly as it is."""
        uid = legacy.index_uid(topic_id)
        if uid in self._known_uids:
            return uid
        try:
            self.meili.get_index(uid)
        except MeilisearchApiError as exc:
            if exc.code != "index_not_found":
                raise
            self._track(self.meili.create_index(uid, {"primaryKey": legacy.PRIMARY_KEY}))
            self._track(self.meili.index(uid).update_settings(legacy.INDEX_SETTINGS))
        self._known_uids.add(uid)
        return uid

    def _track(self, task) -> None:
        self._tasks.append(task.task_uid)

    def _track_raw(self, response: dict) -> None:
        self._tasks.append(response["taskUid"])

    # ---- expiry sweep -------------------------------------------------------------------------------

    def sweep_expired(self, now: int) -> int:
        """`expire_events_once`: remove (event, topic) pairs whose expires_at passed and that no sweep
        or upsert recorded yet, for events still current and not deleted."""
        done = 0
        while True:
            rows = self.conn.execute(
                "SELECT e.event_id, t.topic_id, e.expires_at FROM cn_relay.events e"
                " JOIN cn_relay.event_topics t ON e.event_id = t.event_id"
                " LEFT JOIN cn_index.expired_events x ON x.event_id = e.event_id AND x.topic_id = t.topic_id"
                " WHERE e.expires_at IS NOT NULL AND e.expires_at <= %s AND e.is_deleted = FALSE"
                " AND e.is_ephemeral = FALSE AND e.is_current = TRUE AND x.event_id IS NULL LIMIT 200",
                (now,)).fetchall()
            if not rows:
                return done
            for event_id, topic_id, expires_at in rows:
                self._delete(topic_id, event_id)
                self._record_expired(event_id, topic_id, expires_at)
            done += len(rows)

    # ---- reindex worker -----------------------------------------------------------------------------

    def run_reindex_jobs(self, now: int) -> int:
        """Claim pending jobs oldest first; each empties its topics' indexes, re-adds the searchable
        events and then sets the `index-v1` offset to the outbox head seen at claim time."""
        done = 0
        while (job := self._claim_job()) is not None:
            job_id, topic_id, cutoff = job
            topics = [topic_id] if topic_id else [t for (t,) in self.conn.execute(
                "SELECT DISTINCT topic_id FROM cn_relay.event_topics").fetchall()]  # no cn_admin here
            processed = 0
            for topic in topics:
                uid = self._ensure_index(topic)
                self._track(self.meili.index(uid).delete_all_documents())
                processed = self._reindex_topic(topic, uid, now, job_id, processed)
            self.conn.execute("UPDATE cn_index.reindex_jobs SET status = 'succeeded', processed_events = %s,"
                              " completed_at = NOW(), updated_at = NOW() WHERE job_id = %s", (processed, job_id))
            self.commit_last_seq(cutoff)
            done += 1
        return done

    def _claim_job(self) -> tuple[str, str | None, int] | None:
        with self.conn.transaction():
            row = self.conn.execute("SELECT job_id, topic_id FROM cn_index.reindex_jobs WHERE status = 'pending'"
                                    " ORDER BY requested_at ASC LIMIT 1 FOR UPDATE SKIP LOCKED").fetchone()
            if row is None:
                return None
            cutoff = self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM cn_relay.events_outbox").fetchone()[0]
            self.conn.execute("UPDATE cn_index.reindex_jobs SET status = 'running', started_at = NOW(),"
                              " cutoff_seq = %s, updated_at = NOW() WHERE job_id = %s", (cutoff, row[0]))
        return row[0], row[1], cutoff

    def _reindex_topic(self, topic_id: str, uid: str, now: int, job_id: str, processed: int) -> int:
        # The product's keyset starts after (0, ''): events signed with created_at < 0 are skipped.
        last_created_at, last_event_id = 0, ""
        while True:
            with self.conn.cursor(row_factory=dict_row) as cur:
                rows = cur.execute(
                    "SELECT e.raw_json, e.created_at, e.event_id FROM cn_relay.events e"
                    " JOIN cn_relay.event_topics t ON e.event_id = t.event_id"
                    " WHERE t.topic_id = %s AND e.is_deleted = FALSE AND e.is_ephemeral = FALSE"
                    " AND e.is_current = TRUE AND (e.expires_at IS NULL OR e.expires_at > %s)"
                    " AND (e.created_at > %s OR (e.created_at = %s AND e.event_id > %s))"
                    " ORDER BY e.created_at ASC, e.event_id ASC LIMIT 200",
                    (topic_id, now, last_created_at, last_created_at, last_event_id)).fetchall()
            if not rows:
                return processed
            last_created_at, last_event_id = rows[-1]["created_at"], rows[-1]["event_id"]
            self._track(self.meili.index(uid).add_documents([legacy.document(r, topic_id) for r in rows],
                                                            primary_key=legacy.PRIMARY_KEY))
            processed += len(rows)
            self.conn.execute("UPDATE cn_index.reindex_jobs SET processed_events = %s, updated_at = NOW()"
                              " WHERE job_id = %s", (processed, job_id))
