"""Writes cn_relay exactly as the product does, so fixtures hold what a real node would hold.

Emulates (kukuri-community-node/, commit 884c1885): cn-relay `ingest.rs::ingest_event` (validation,
dedupe, replaceable/addressable versions, NIP-09 deletions and tombstones, one outbox row per `t` tag,
`pg_notify('cn_relay_outbox', max seq)` in the same transaction), cn-relay `retention.rs`
(`expire_events`, `cleanup_once`) and cn-user-api `personal_data.rs::cleanup_relay_records` plus its
`enqueue_reindex_jobs` (DSAR). Clocks are injectable: `now` (unix seconds) stands for the product's
`unix_seconds()` and `NOW()`, so tests can write 40-day-old posts and expire them.

Left out, because they depend on node configuration rather than on the event: signature and KIP
validation, WS auth/consent/subscription checks, topic allow-lists and per-topic capacity policies.
Needs an autocommit connection (`search_migration.db.connect`): every call is one transaction.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from search_migration.write_path.legacy_documents import first_tag_value, rust_trim, tag_values

OUTBOX_CHANNEL = "cn_relay_outbox"
MAX_EVENT_BYTES = 32 * 1024  # RelayRuntimeConfig defaults
MAX_TAGS = 200
ACCESS_CONTROL_KINDS = {39020, 39021, 39022}  # KEY_ENVELOPE, INVITE_CAPABILITY, JOIN_REQUEST: p2p only
_I64 = re.compile(r"[+-]?[0-9]+\Z")


class Rejected(ValueError):
    """The relay refused the event; nothing was written. `reason` is the product's reason text."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def is_replaceable(kind: int) -> bool:
    return kind in (0, 3) or 10000 <= kind < 20000


def is_addressable(kind: int) -> bool:
    return 30000 <= kind < 40000


def is_ephemeral(kind: int) -> bool:
    return 20000 <= kind < 30000


def pubkey_of(name: str) -> str:
    """A stable 64-hex pubkey for a test persona."""
    return hashlib.sha256(f"kukuri-persona:{name}".encode()).hexdigest()


def build_event(*, pubkey: str, content: str, topics: list[str] = (), kind: int = 1, created_at: int | None = None,
                tags: list[list[str]] = ()) -> dict[str, Any]:
    """A complete event: `t` tags for `topics` first, then `tags`. The id is the NIP-01 hash of the
    canonical serialization (unique per distinct event); the signature is plausible hex, not valid."""
    all_tags = [["t", t] for t in topics] + [list(tag) for tag in tags]
    created_at = int(time.time()) if created_at is None else created_at
    canonical = json.dumps([0, pubkey, created_at, kind, all_tags, content], separators=(",", ":"), ensure_ascii=False)
    event_id = hashlib.sha256(canonical.encode()).hexdigest()
    sig = hashlib.sha512(event_id.encode()).hexdigest()
    return {"id": event_id, "pubkey": pubkey, "created_at": created_at, "kind": kind, "tags": all_tags,
            "content": content, "sig": sig}


def parse_i64(value: str | None) -> int | None:
    """Rust `str::parse::<i64>().ok()`: digits with an optional sign, no spaces, in range."""
    if value is None or not _I64.match(value):
        return None
    number = int(value)
    return number if -2**63 <= number < 2**63 else None


def expires_at_of(raw: dict[str, Any]) -> int | None:
    """`exp` tag, else `expiration` (an unparsable `exp` falls through to `expiration`)."""
    exp = parse_i64(first_tag_value(raw, "exp"))
    return exp if exp is not None else parse_i64(first_tag_value(raw, "expiration"))


def normalize_topics(raw: dict[str, Any]) -> list[str]:
    """Every `t` value trimmed; all must be `kukuri:` topics; repeats kept (each writes an outbox row)."""
    topics = []
    for value in tag_values(raw, "t"):
        trimmed = rust_trim(value)
        if not trimmed:
            raise Rejected("invalid: topic_id is empty")
        if not trimmed.startswith("kukuri:"):
            raise Rejected("invalid: topic_id must start with kukuri:")
        topics.append(trimmed)
    if not topics:
        raise Rejected("invalid: missing topic")
    return topics


def _raw(event: dict[str, Any]) -> dict[str, Any]:
    """serde `RawEvent`: exactly these seven fields are stored in raw_json (extra fields dropped)."""
    return {k: event[k] for k in ("id", "pubkey", "created_at", "kind", "tags", "content", "sig")}


@dataclass
class _Clock:
    unix: int
    at: datetime

    @classmethod
    def of(cls, now: float | None, at: datetime | None = None) -> "_Clock":
        unix = time.time() if now is None else now
        return cls(int(unix), at or datetime.fromtimestamp(unix, timezone.utc))


class ProductWriter:
    """cn-relay's ingest, retention and cn-user-api's DSAR against one cn_relay database."""

    def __init__(self, conn: psycopg.Connection):
        if not conn.autocommit:
            raise ValueError("ProductWriter needs an autocommit connection: each call is its own transaction")
        self.conn = conn

    # ---- ingest (ingest.rs::ingest_event) ---------------------------------------------------------

    def publish(self, event: dict[str, Any], *, now: float | None = None, ingested_at: datetime | None = None
                ) -> list[int]:
        """Ingest one event; returns the outbox seqs written (empty for a duplicate or an ephemeral
        event). Raises `Rejected` for what the relay refuses."""
        clock = _Clock.of(now, ingested_at)
        raw = _raw(event)
        kind = raw["kind"]
        if len(json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode()) > MAX_EVENT_BYTES:
            raise Rejected("invalid: event too large")
        if len(raw["tags"]) > MAX_TAGS:
            raise Rejected("invalid: too many tags")
        topics = normalize_topics(raw)
        expires_at = expires_at_of(raw)
        if expires_at is not None and expires_at <= clock.unix:
            raise Rejected("invalid: expired")
        if kind in ACCESS_CONTROL_KINDS:
            raise Rejected("restricted: access control p2p-only")
        scope = first_tag_value(raw, "scope")
        if scope is not None and scope != "public":  # non-public scopes only need a positive epoch
            epoch = first_tag_value(raw, "epoch")
            if epoch is None:
                raise Rejected("invalid: missing epoch")
            if parse_i64(epoch) is None:
                raise Rejected("invalid: epoch must be integer")
            if parse_i64(epoch) <= 0:
                raise Rejected("invalid: epoch must be positive")
        if is_ephemeral(kind):
            return []  # relayed live, never stored
        replaceable_key = f"{raw['pubkey']}:{kind}" if is_replaceable(kind) else None
        d_tag = first_tag_value(raw, "d") if is_addressable(kind) else None
        if is_addressable(kind) and d_tag is None:
            raise Rejected("invalid: missing d tag")
        addressable_key = f"{kind}:{raw['pubkey']}:{d_tag}" if d_tag is not None else None

        with self.conn.transaction(), self.conn.cursor() as cur:
            if not self._insert_dedupe(cur, raw["id"], clock):
                return []
            is_current = True
            if replaceable_key:
                is_current = self._take_current(cur, "replaceable", replaceable_key, raw, clock)
            if addressable_key:
                is_current = self._take_current(cur, "addressable", addressable_key, raw, clock, d_tag)
            cur.execute(
                "INSERT INTO cn_relay.events (event_id, pubkey, kind, created_at, tags, content, sig, raw_json,"
                " ingested_at, is_deleted, is_ephemeral, is_current, replaceable_key, addressable_key, expires_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, FALSE, FALSE, %s, %s, %s, %s)",
                (raw["id"], raw["pubkey"], kind, raw["created_at"], Jsonb(raw["tags"]), raw["content"], raw["sig"],
                 Jsonb(raw), clock.at, is_current, replaceable_key, addressable_key, expires_at))
            for topic_id in topics:
                cur.execute("INSERT INTO cn_relay.event_topics (event_id, topic_id) VALUES (%s, %s)"
                            " ON CONFLICT DO NOTHING", (raw["id"], topic_id))
            tombstoned = self._apply_tombstones(cur, raw, replaceable_key, addressable_key, clock)
            seqs: list[int] = []
            if is_current and not tombstoned:
                # repeated `t` tags: repeated upsert rows (the topic list is not deduplicated)
                for topic_id in topics:
                    seqs.append(self._outbox(cur, "upsert", raw["id"], topic_id, kind, raw["created_at"],
                                             replaceable_key or addressable_key, None, clock))
            elif tombstoned:
                seqs += self._delete_rows(cur, raw["id"], kind, raw["created_at"], "nip09", clock)
            if kind == 5:
                seqs += self._apply_deletions(cur, raw, clock)
            self._notify(cur, seqs)
        return seqs

    def _insert_dedupe(self, cur, event_id: str, clock: _Clock) -> bool:
        cur.execute("INSERT INTO cn_relay.event_dedupe (event_id, first_seen_at, last_seen_at, seen_count)"
                    " VALUES (%s, %s, %s, 1) ON CONFLICT DO NOTHING", (event_id, clock.at, clock.at))
        if cur.rowcount:
            return True
        cur.execute("UPDATE cn_relay.event_dedupe SET last_seen_at = %s, seen_count = seen_count + 1"
                    " WHERE event_id = %s", (clock.at, event_id))
        return False

    def _take_current(self, cur, which: str, key: str, raw: dict, clock: _Clock, d_tag: str | None = None) -> bool:
        """`replaceable_is_current` / `addressable_is_current`: newer created_at wins, ties go to the
        lower id; the version it replaces only gets is_current = false (no outbox row for it)."""
        table = f"cn_relay.{which}_current"
        cur.execute(f"SELECT event_id, created_at FROM {table} WHERE {which}_key = %s", (key,))
        row = cur.fetchone()
        if row:
            current_id, current_created_at = row
            newer = raw["created_at"] > current_created_at or (
                raw["created_at"] == current_created_at and raw["id"] < current_id)
            if not newer:
                return False
            cur.execute("UPDATE cn_relay.events SET is_current = FALSE WHERE event_id = %s", (current_id,))
        if which == "replaceable":
            cur.execute(
                "INSERT INTO cn_relay.replaceable_current (replaceable_key, event_id, pubkey, kind, created_at,"
                " updated_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (replaceable_key) DO UPDATE SET"
                " event_id = EXCLUDED.event_id, pubkey = EXCLUDED.pubkey, kind = EXCLUDED.kind,"
                " created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at",
                (key, raw["id"], raw["pubkey"], raw["kind"], raw["created_at"], clock.at))
        else:
            cur.execute(
                "INSERT INTO cn_relay.addressable_current (addressable_key, event_id, pubkey, kind, d_tag,"
                " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (addressable_key)"
                " DO UPDATE SET event_id = EXCLUDED.event_id, pubkey = EXCLUDED.pubkey, kind = EXCLUDED.kind,"
                " d_tag = EXCLUDED.d_tag, created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at",
                (key, raw["id"], raw["pubkey"], raw["kind"], d_tag, raw["created_at"], clock.at))
        return True

    def _apply_tombstones(self, cur, raw: dict, replaceable_key: str | None, addressable_key: str | None,
                          clock: _Clock) -> bool:
        """A deletion that arrived before its target deletes the target on arrival (same author only)."""
        deleted = False
        targets = [("target_event_id", raw["id"])] + ([("target_a", addressable_key)] if addressable_key else [])
        for column, target in targets:
            cur.execute(f"SELECT deletion_event_id FROM cn_relay.deletion_tombstones"
                        f" WHERE {column} = %s AND applied_at IS NULL", (target,))
            for (deletion_id,) in cur.fetchall():
                cur.execute("SELECT pubkey FROM cn_relay.events WHERE event_id = %s", (deletion_id,))
                author = cur.fetchone()
                if author and author[0] == raw["pubkey"]:
                    self._mark_deleted(cur, raw["id"], clock)
                    deleted = True
                    cur.execute(f"UPDATE cn_relay.deletion_tombstones SET applied_at = %s"
                                f" WHERE deletion_event_id = %s AND {column} = %s", (clock.at, deletion_id, target))
        if deleted:
            self._forget_current(cur, replaceable_key, addressable_key)
        return deleted

    def _apply_deletions(self, cur, deletion: dict, clock: _Clock) -> list[int]:
        """NIP-09 (kind 5): `e` targets by id, `a` targets by kind:pubkey:d; only the author's own
        events; an unknown target leaves a tombstone."""
        seqs: list[int] = []
        for event_id in tag_values(deletion, "e"):
            cur.execute("SELECT pubkey, kind, created_at, replaceable_key, addressable_key FROM cn_relay.events"
                        " WHERE event_id = %s", (event_id,))
            row = cur.fetchone()
            if row is None:
                self._tombstone(cur, "target_event_id", event_id, deletion)
                continue
            pubkey, kind, created_at, replaceable_key, addressable_key = row
            if pubkey != deletion["pubkey"]:
                continue
            self._mark_deleted(cur, event_id, clock)
            self._forget_current(cur, replaceable_key, addressable_key)
            seqs += self._delete_rows(cur, event_id, kind, created_at, "nip09", clock)
        for target in tag_values(deletion, "a"):
            parts = target.split(":")
            if len(parts) < 3 or parts[1] != deletion["pubkey"]:
                continue
            kind = parse_i64(parts[0])  # Rust parses an i32 here, 0 when it cannot
            kind = kind if kind is not None and -2**31 <= kind < 2**31 else 0
            key = f"{kind}:{parts[1]}:{':'.join(parts[2:])}"
            cur.execute("SELECT event_id FROM cn_relay.addressable_current WHERE addressable_key = %s", (key,))
            row = cur.fetchone()
            if row is None:
                self._tombstone(cur, "target_a", key, deletion)
                continue
            cur.execute("SELECT kind, created_at FROM cn_relay.events WHERE event_id = %s", row)
            kind, created_at = cur.fetchone()
            self._mark_deleted(cur, row[0], clock)
            self._forget_current(cur, None, key)
            seqs += self._delete_rows(cur, row[0], kind, created_at, "nip09", clock)
        return seqs

    def _tombstone(self, cur, column: str, target: str, deletion: dict) -> None:
        cur.execute(f"INSERT INTO cn_relay.deletion_tombstones ({column}, deletion_event_id, requested_at)"
                    f" VALUES (%s, %s, %s)", (target, deletion["id"], deletion["created_at"]))

    @staticmethod
    def _mark_deleted(cur, event_id: str, clock: _Clock) -> None:
        cur.execute("UPDATE cn_relay.events SET is_deleted = TRUE, deleted_at = %s, is_current = FALSE"
                    " WHERE event_id = %s", (clock.at, event_id))

    @staticmethod
    def _forget_current(cur, replaceable_key: str | None, addressable_key: str | None) -> None:
        if replaceable_key:
            cur.execute("DELETE FROM cn_relay.replaceable_current WHERE replaceable_key = %s", (replaceable_key,))
        if addressable_key:
            cur.execute("DELETE FROM cn_relay.addressable_current WHERE addressable_key = %s", (addressable_key,))

    def _delete_rows(self, cur, event_id: str, kind: int, created_at: int, reason: str, clock: _Clock) -> list[int]:
        """`insert_delete_outbox`: one delete row per topic the event is stored under."""
        cur.execute("SELECT topic_id FROM cn_relay.event_topics WHERE event_id = %s", (event_id,))
        return [self._outbox(cur, "delete", event_id, topic_id, kind, created_at, None, reason, clock)
                for (topic_id,) in cur.fetchall()]

    @staticmethod
    def _outbox(cur, op: str, event_id: str, topic_id: str, kind: int, created_at: int, effective_key: str | None,
                reason: str | None, clock: _Clock) -> int:
        cur.execute("INSERT INTO cn_relay.events_outbox (op, event_id, topic_id, kind, created_at, ingested_at,"
                    " effective_key, reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING seq",
                    (op, event_id, topic_id, kind, created_at, clock.at, effective_key, reason))
        return cur.fetchone()[0]

    @staticmethod
    def _notify(cur, seqs: list[int]) -> None:
        if seqs:
            cur.execute("SELECT pg_notify(%s, %s)", (OUTBOX_CHANNEL, str(max(seqs))))

    # ---- expiry (retention.rs::expire_events) -----------------------------------------------------

    def expire_due(self, now: float | None = None) -> list[int]:
        """Mark every current, live event whose expires_at <= now deleted and write `delete` rows with
        reason `expiration` (batches of 200, oldest created_at first, a notify per batch)."""
        clock = _Clock.of(now)
        seqs: list[int] = []
        while True:
            with self.conn.transaction(), self.conn.cursor() as cur:
                cur.execute(
                    "SELECT event_id, kind, created_at, replaceable_key, addressable_key FROM cn_relay.events"
                    " WHERE expires_at IS NOT NULL AND expires_at <= %s AND is_deleted = FALSE"
                    " AND is_ephemeral = FALSE AND is_current = TRUE ORDER BY created_at ASC, event_id ASC"
                    " LIMIT 200 FOR UPDATE SKIP LOCKED", (clock.unix,))
                rows = cur.fetchall()
                batch: list[int] = []
                for event_id, kind, created_at, replaceable_key, addressable_key in rows:
                    self._mark_deleted(cur, event_id, clock)
                    self._forget_current(cur, replaceable_key, addressable_key)
                    batch += self._delete_rows(cur, event_id, kind, created_at, "expiration", clock)
                self._notify(cur, batch)
            seqs += batch
            if not rows:
                return seqs

    # ---- retention (retention.rs::cleanup_once) ---------------------------------------------------

    def retention(self, outbox_days: int = 30, *, now: float | None = None, events_days: int = 30,
                  dedupe_days: int = 180, tombstone_days: int = 180) -> dict[str, int]:
        """Expire due events, then drop non-current (old versions, deleted) events ingested more than
        `events_days` ago, old dedupe rows, outbox rows ingested more than `outbox_days` ago, and old
        tombstones. Returns the row counts removed. (No per-topic retention policies: none are set.)"""
        clock = _Clock.of(now)
        counts = {"expired_outbox_rows": len(self.expire_due(now=clock.unix))}
        with self.conn.cursor() as cur:
            if events_days > 0:
                with self.conn.transaction():
                    cur.execute(
                        "DELETE FROM cn_relay.event_topics WHERE event_id IN (SELECT event_id FROM cn_relay.events"
                        " WHERE is_current = FALSE AND ingested_at < %s - (%s * INTERVAL '1 day'))",
                        (clock.at, events_days))
                    counts["event_topics"] = cur.rowcount
                    cur.execute("DELETE FROM cn_relay.events e WHERE e.is_current = FALSE AND NOT EXISTS"
                                " (SELECT 1 FROM cn_relay.event_topics t WHERE t.event_id = e.event_id)")
                    counts["events"] = cur.rowcount
            if dedupe_days > 0:
                cur.execute("DELETE FROM cn_relay.event_dedupe WHERE last_seen_at < %s - (%s * INTERVAL '1 day')",
                            (clock.at, dedupe_days))
                counts["event_dedupe"] = cur.rowcount
            if outbox_days > 0:
                cur.execute("DELETE FROM cn_relay.events_outbox WHERE ingested_at < %s - (%s * INTERVAL '1 day')",
                            (clock.at, outbox_days))
                counts["events_outbox"] = cur.rowcount
            if tombstone_days > 0:
                cur.execute("DELETE FROM cn_relay.deletion_tombstones WHERE requested_at < %s",
                            (clock.unix - tombstone_days * 86400,))
                counts["deletion_tombstones"] = cur.rowcount
        return counts

    # ---- DSAR (personal_data.rs::perform_deletion, its cn_relay and cn_index parts) ---------------

    def dsar(self, pubkey: str, *, now: float | None = None, request_id: str | None = None) -> list[int]:
        """Personal-data deletion: `delete` rows reason `dsar` for every not-deleted event of the pubkey
        in each of its topics (old versions included), the events marked deleted, the current-version
        rows dropped, and a reindex job queued per affected topic. No pg_notify: the product sends none."""
        clock = _Clock.of(now)
        requested_by = f"dsar:{request_id or uuid.uuid4()}"
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute("SELECT DISTINCT t.topic_id FROM cn_relay.events e JOIN cn_relay.event_topics t"
                        " ON t.event_id = e.event_id WHERE e.pubkey = %s AND e.is_deleted = FALSE", (pubkey,))
            topics = [topic_id for (topic_id,) in cur.fetchall()]
            cur.execute(
                "INSERT INTO cn_relay.events_outbox (op, event_id, topic_id, kind, created_at, ingested_at,"
                " effective_key, reason) SELECT 'delete', e.event_id, t.topic_id, e.kind, e.created_at, %s, NULL,"
                " 'dsar' FROM cn_relay.events e JOIN cn_relay.event_topics t ON t.event_id = e.event_id"
                " WHERE e.pubkey = %s AND e.is_deleted = FALSE RETURNING seq", (clock.at, pubkey))
            seqs = sorted(seq for (seq,) in cur.fetchall())
            cur.execute("UPDATE cn_relay.events SET is_deleted = TRUE, deleted_at = %s, is_current = FALSE"
                        " WHERE pubkey = %s AND is_deleted = FALSE", (clock.at, pubkey))
            cur.execute("DELETE FROM cn_relay.replaceable_current WHERE pubkey = %s", (pubkey,))
            cur.execute("DELETE FROM cn_relay.addressable_current WHERE pubkey = %s", (pubkey,))
            for topic_id in topics:
                cur.execute("SELECT EXISTS (SELECT 1 FROM cn_index.reindex_jobs WHERE topic_id = %s"
                            " AND status IN ('pending', 'running'))", (topic_id,))
                if not cur.fetchone()[0]:
                    cur.execute("INSERT INTO cn_index.reindex_jobs (job_id, topic_id, status, requested_by,"
                                " requested_at, updated_at) VALUES (%s, %s, 'pending', %s, %s, %s)",
                                (str(uuid.uuid4()), topic_id, requested_by, clock.at, clock.at))
        return seqs
