"""The faithful reproduction of the product's pre-migration state, against the real servers.

Schema shape, cn-relay's write semantics (one transaction, outbox rows, NOTIFY), the emulated
cn-index's Meilisearch state, and cn-index's document/uid rules.
"""

from __future__ import annotations

import time
import uuid
from collections import deque

import psycopg
import pytest
from psycopg.rows import dict_row

from search_migration import db
from search_migration.write_path import meili_index
from search_migration.local.product_fixture import apply_product_schema, build_product_world
from search_migration.local.product_indexer import CONSUMER
from search_migration.local.product_writer import ProductWriter, Rejected, build_event, pubkey_of
from search_migration.write_path import legacy_documents as legacy

DAY = 86_400
A, B = "kukuri:alpha", "kukuri:beta"


@pytest.fixture
def product_db(database_url: str):
    with db.connect(database_url) as conn:
        apply_product_schema(conn)
        yield conn


class Listener:
    """A second connection LISTENing on cn_relay_outbox; payloads in arrival order."""

    def __init__(self, conn: psycopg.Connection):
        self.conn, self.pending = conn, deque()

    def next(self) -> str:
        """The next payload, waiting on the socket up to 10 s (one packet may carry several)."""
        if not self.pending:
            self.pending.extend(n.payload for n in self.conn.notifies(timeout=10, stop_after=1))
        assert self.pending, "no notification"
        return self.pending.popleft()


@pytest.fixture
def listener(database_url: str):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("LISTEN cn_relay_outbox")
        yield Listener(conn)


def next_notify(listener: Listener) -> str:
    return listener.next()


def outbox(conn, *event_ids: str) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT seq, op, event_id, topic_id, kind, created_at, effective_key, reason"
                           " FROM cn_relay.events_outbox WHERE event_id = ANY(%s) ORDER BY seq",
                           (list(event_ids),)).fetchall()


def event_row(conn, event_id: str) -> dict | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM cn_relay.events WHERE event_id = %s", (event_id,)).fetchone()


def test_schema_has_the_products_shape(product_db):
    columns = {(r[0], r[1]): (r[2], r[3], r[4]) for r in product_db.execute(
        "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns"
        " WHERE table_schema = 'cn_relay'").fetchall()}
    assert columns[("events", "created_at")] == ("bigint", "NO", None)
    assert columns[("events", "expires_at")] == ("bigint", "YES", None)
    assert columns[("events", "raw_json")] == ("jsonb", "NO", None)
    assert columns[("events", "is_current")] == ("boolean", "NO", "true")
    assert columns[("events", "ingested_at")] == ("timestamp with time zone", "NO", "now()")
    assert columns[("events_outbox", "created_at")] == ("bigint", "NO", None)
    assert columns[("events_outbox", "ingested_at")] == ("timestamp with time zone", "NO", None)
    assert columns[("events_outbox", "seq")][2] == "nextval('cn_relay.events_outbox_seq_seq'::regclass)"
    assert columns[("consumer_offsets", "last_seq")] == ("bigint", "NO", None)
    tables = {t for t, _ in columns}
    assert tables == {"events", "event_topics", "events_outbox", "consumer_offsets", "event_dedupe",
                      "deletion_tombstones", "replaceable_current", "addressable_current"}
    indexes = {r[0] for r in product_db.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'cn_relay'")}
    assert {"relay_events_kind_idx", "relay_events_created_at_idx", "relay_events_ingested_at_idx",
            "relay_event_topics_topic_idx", "relay_outbox_event_idx", "relay_tombstones_target_event_idx",
            "events_outbox_pkey"} <= indexes
    assert not any("pubkey" in i or "is_current" in i for i in indexes)  # none the product lacks
    assert product_db.execute("SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace"
                              " WHERE n.nspname = 'cn_relay' AND c.contype = 'f'").fetchone()[0] == 0


def test_publish_is_one_transaction_with_a_row_per_t_tag_then_notify(product_db, listener):
    writer = ProductWriter(product_db)
    now = int(time.time())
    event = build_event(pubkey=pubkey_of("alice"), content="東京でコーヒー", topics=[f"  {A} ", B, A],
                        created_at=now - 5 * 365 * DAY)  # backdated: accepted as signed
    seqs = writer.publish(event, now=now)
    assert next_notify(listener) == str(max(seqs))
    rows = outbox(product_db, event["id"])
    assert [(r["op"], r["topic_id"], r["effective_key"], r["reason"]) for r in rows] == [
        ("upsert", A, None, None), ("upsert", B, None, None), ("upsert", A, None, None)]
    assert [r["seq"] for r in rows] == seqs and {r["created_at"] for r in rows} == {event["created_at"]}
    assert sorted(t for (t,) in product_db.execute(
        "SELECT topic_id FROM cn_relay.event_topics WHERE event_id = %s", (event["id"],))) == [A, B]
    stored = event_row(product_db, event["id"])
    assert stored["raw_json"] == event and stored["is_current"] and stored["replaceable_key"] is None

    assert writer.publish(event, now=now) == []  # duplicate: deduped, nothing new
    refused = [build_event(pubkey=pubkey_of("bob"), content="x", topics=[A], tags=[["exp", str(now)]]),
               build_event(pubkey=pubkey_of("bob"), content="x", topics=[A, "general"]),
               build_event(pubkey=pubkey_of("bob"), content="x"),
               build_event(pubkey=pubkey_of("bob"), content="x", topics=[A], kind=30023)]
    for bad in refused:
        with pytest.raises(Rejected):
            writer.publish(bad, now=now)
    ids = [bad["id"] for bad in refused]
    assert product_db.execute("SELECT (SELECT count(*) FROM cn_relay.events WHERE event_id = ANY(%s))"
                              " + (SELECT count(*) FROM cn_relay.event_dedupe WHERE event_id = ANY(%s))",
                              (ids, ids)).fetchone()[0] == 0
    assert outbox(product_db, *ids) == []
    later = writer.publish(build_event(pubkey=pubkey_of("bob"), content="ok", topics=[B], created_at=now), now=now)
    assert next_notify(listener) == str(max(later))  # nothing was announced for the refused events


def test_versions_deletions_expiry_dsar_and_retention(product_db, listener):
    writer = ProductWriter(product_db)
    now = int(time.time())
    carol, frank = pubkey_of("carol"), pubkey_of("frank")
    v1 = build_event(pubkey=carol, content="{}", topics=[A, B], kind=0, created_at=now - 100)
    v2 = build_event(pubkey=carol, content='{"name":"c"}', topics=[B], kind=0, created_at=now - 50)
    older = build_event(pubkey=carol, content='{"old":1}', topics=[A], kind=0, created_at=now - 500)
    writer.publish(v1, now=now)
    v2_seqs = writer.publish(v2, now=now)
    assert writer.publish(older, now=now) == []  # an older version arriving late: stored, not announced
    assert not event_row(product_db, v1["id"])["is_current"] and not event_row(product_db, older["id"])["is_current"]
    assert [(r["op"], r["topic_id"], r["effective_key"]) for r in outbox(product_db, v2["id"])] == [
        ("upsert", B, f"{carol}:0")]
    assert all(r["op"] == "upsert" for r in outbox(product_db, v1["id"]))  # no delete row for the old one
    essay = build_event(pubkey=carol, content="essay", topics=[A], kind=30023, tags=[["d", "essay"]])
    writer.publish(essay, now=now)
    assert outbox(product_db, essay["id"])[0]["effective_key"] == f"30023:{carol}:essay"

    post = build_event(pubkey=frank, content="oops", topics=[A, B], created_at=now - 10)
    writer.publish(post, now=now)
    deletion = build_event(pubkey=frank, content="", topics=[B], kind=5, tags=[["e", post["id"]]])
    seqs = writer.publish(deletion, now=now)
    rows = outbox(product_db, deletion["id"], post["id"])[-3:]
    assert [(r["op"], r["event_id"], r["reason"]) for r in rows] == [
        ("upsert", deletion["id"], None), ("delete", post["id"], "nip09"), ("delete", post["id"], "nip09")]
    assert {r["topic_id"] for r in rows[1:]} == {A, B} and [r["seq"] for r in rows] == seqs
    assert event_row(product_db, post["id"])["is_deleted"] and event_row(product_db, deletion["id"])["is_current"]

    expiring = build_event(pubkey=frank, content="today only", topics=[A], tags=[["exp", str(now + 100)]])
    writer.publish(expiring, now=now)
    assert event_row(product_db, expiring["id"])["expires_at"] == now + 100
    for _ in range(6):
        next_notify(listener)  # v1, v2, essay, post, deletion, expiring (not the late older version)
    expired = writer.expire_due(now=now + 200)
    assert next_notify(listener) == str(max(expired))
    assert [(r["op"], r["reason"]) for r in outbox(product_db, expiring["id"])][-1] == ("delete", "expiration")

    dsar_seqs = writer.dsar(carol, now=now)
    rows = [r for r in outbox(product_db, v1["id"], v2["id"], older["id"], essay["id"]) if r["reason"] == "dsar"]
    assert sorted((r["event_id"], r["topic_id"]) for r in rows) == sorted(
        [(v1["id"], A), (v1["id"], B), (v2["id"], B), (older["id"], A), (essay["id"], A)])  # old versions too
    assert sorted(r["seq"] for r in rows) == dsar_seqs
    assert sorted(t for (t,) in product_db.execute("SELECT topic_id FROM cn_index.reindex_jobs")) == [A, B]
    marker = writer.publish(build_event(pubkey=frank, content="after", topics=[A]), now=now)
    assert next_notify(listener) == str(max(marker))  # the DSAR itself announced nothing

    old = build_event(pubkey=pubkey_of("old"), content="40 days old", topics=[A], created_at=now - 40 * DAY)
    writer.publish(old, now=now - 40 * DAY)
    old_gone = build_event(pubkey=pubkey_of("old"), content="old and deleted", topics=[A], created_at=now - 40 * DAY)
    writer.publish(old_gone, now=now - 40 * DAY)
    writer.publish(build_event(pubkey=pubkey_of("old"), content="", topics=[A], kind=5, tags=[["e", old_gone["id"]]],
                               created_at=now - 39 * DAY), now=now - 39 * DAY)
    counts = writer.retention(outbox_days=30, now=now + 300)
    assert counts["events_outbox"] >= 3 and counts["events"] == 1
    assert outbox(product_db, old["id"], old_gone["id"]) == [] and event_row(product_db, old["id"])["is_current"]
    assert event_row(product_db, old_gone["id"]) is None  # deleted and older than 30 days: gone from the source
    assert event_row(product_db, v1["id"]) is not None  # deleted today: kept until it is 30 days old


def meili_documents(meili, uid: str) -> dict[str, dict]:
    docs = meili.index(uid).get_documents({"limit": 10_000}).results
    return {d.event_id: {k: v for k, v in dict(d).items() if not k.startswith("_")} for d in docs}


def test_emulated_indexer_holds_exactly_what_the_product_would(database_url, meili):
    namespace = uuid.uuid4().hex[:10]
    now = int(time.time())
    try:
        with db.connect(database_url) as conn:
            world = build_product_world(conn, meili, now=now, namespace=namespace)
            expected = world.expected_documents(conn)

            # the searchable set by the rule, computed again in SQL
            assert world.searchable == set(conn.execute(
                "SELECT e.event_id, t.topic_id FROM cn_relay.events e JOIN cn_relay.event_topics t USING (event_id)"
                " WHERE NOT e.is_deleted AND e.is_current AND NOT e.is_ephemeral"
                " AND (e.expires_at IS NULL OR e.expires_at > %s)", (now,)).fetchall())
            # the one defect: an older version, not deleted, in a topic its current version left
            [(stale_id, stale_topic)] = world.legacy_only
            stale = event_row(conn, stale_id)
            assert not stale["is_current"] and not stale["is_deleted"]
            assert conn.execute(
                "SELECT count(*) FROM cn_relay.events e JOIN cn_relay.event_topics t USING (event_id)"
                " WHERE e.replaceable_key = %s AND e.is_current AND t.topic_id = %s",
                (stale["replaceable_key"], stale_topic)).fetchone()[0] == 0
            # outbox history is gone for the old posts, and they are still served
            assert conn.execute("SELECT count(*) FROM cn_relay.events e WHERE e.is_current AND NOT EXISTS"
                                " (SELECT 1 FROM cn_relay.events_outbox o WHERE o.event_id = e.event_id)"
                                ).fetchone()[0] >= world.cases["old_outbox_pruned"] > 0
            assert conn.execute("SELECT last_seq FROM cn_relay.consumer_offsets WHERE consumer = %s",
                                (CONSUMER,)).fetchone()[0] == conn.execute(
                "SELECT max(seq) FROM cn_relay.events_outbox").fetchone()[0]

        for case in ["ja", "en", "multi_topic", "backdated", "replaceable_version", "addressable_version",
                     "topic_moved", "late_older_version", "deletion_event", "nip09_deleted", "a_tag_deleted",
                     "tombstoned_on_arrival", "foreign_delete_ignored", "expired_by_relay", "expired_by_sweep",
                     "expiring_later", "dsar", "non_public_scope", "repeated_topic_tag", "old_outbox_pruned",
                     "old_deleted_purged", "uid_collision"]:
            assert world.cases[case] > 0, case
        assert sorted(world.rejected) == ["invalid: expired", "invalid: missing d tag", "invalid: missing topic",
                                          "invalid: topic_id must start with kukuri:"]

        ours = sorted(i.uid for i in meili.get_indexes({"limit": 10_000})["results"] if namespace in i.uid)
        assert ours == sorted(expected) and len(ours) == 4  # five topics, two share a uid
        assert legacy.uid_collisions(world.topics.values()) == {
            f"topic_kukuri_{namespace}-night_owls": sorted([world.topics["owls_a"], world.topics["owls_b"]])}
        for uid in ours:
            assert meili_documents(meili, uid) == expected[uid], uid
            settings = meili.index(uid).get_settings()
            assert settings["searchableAttributes"] == legacy.INDEX_SETTINGS["searchableAttributes"]
            assert set(settings["filterableAttributes"]) == set(legacy.INDEX_SETTINGS["filterableAttributes"])
            assert settings["sortableAttributes"] == ["created_at"] and not settings.get("localizedAttributes")
            assert meili.get_index(uid).primary_key == "event_id"
    finally:
        for idx in meili.get_indexes({"limit": 10_000})["results"]:
            if namespace in idx.uid:
                meili_index.delete_index(meili, idx.uid)


def test_index_uid_and_collisions():
    assert legacy.index_uid("kukuri:abcDEF") == "topic_kukuri_abcdef"
    assert legacy.index_uid("kukuri:topic/one") == "topic_kukuri_topic_one"
    assert legacy.index_uid("kukuri:東京-cafe_1") == "topic_kukuri___-cafe_1"  # one `_` per character
    assert legacy.uid_collisions(["kukuri:Foo", "kukuri:foo", "kukuri:f.o", "kukuri:f_o", "kukuri:bar",
                                  "kukuri:foo"]) == {"topic_kukuri_f_o": ["kukuri:f.o", "kukuri:f_o"],
                                                     "topic_kukuri_foo": ["kukuri:Foo", "kukuri:foo"]}
    assert legacy.uid_collisions(["kukuri:a", "kukuri:b"]) == {}


def test_document_follows_cn_index_rules():
    pk = pubkey_of("doc")
    long_ja = "あ" * 100

    def doc(content: str, tags: list[list[str]]) -> dict:
        event = build_event(pubkey=pk, content=content, topics=[" kukuri:x", "kukuri:x"], tags=tags, created_at=7)
        return legacy.document({"raw_json": event}, "kukuri:x")

    d = doc("  本文です  \n二行目", [["title", "  題名  "], ["subject", "件名"]])
    assert (d["title"], d["summary"], d["content"]) == ("題名", "本文です  \n二行目", "  本文です  \n二行目")
    assert d["tags"] == [" kukuri:x", "kukuri:x"]  # distinct as signed, not trimmed
    assert (d["kind"], d["author"], d["created_at"], d["topic_id"]) == (1, pk, 7, "kukuri:x")
    assert list(d) == ["event_id", "topic_id", "kind", "author", "created_at", "title", "summary", "content", "tags"]
    assert doc("body", [["subject", " Hello "]])["title"] == "Hello"
    assert doc("first line\r\nsecond", [["title", "   "], ["subject", "ignored"]])["title"] == "first line"
    assert doc("body", [["title"], ["title", "second title tag"]])["title"] == "second title tag"
    assert doc(long_ja, [])["title"] == "あ" * 80 and len(doc(long_ja * 3, [])["summary"]) == 200  # chars
    assert doc("\x1fkeep", [])["title"] == "\x1fkeep"  # Rust trim keeps U+001F; Python's strip would not
    assert doc("", [])["title"] == "" and doc("   ", [])["summary"] == ""


def test_searchable_rule():
    row = {"is_deleted": False, "is_current": True, "is_ephemeral": False, "expires_at": None}
    assert legacy.searchable(row, 100) and legacy.searchable({**row, "expires_at": 101}, 100)
    for change in ({"expires_at": 100}, {"is_deleted": True}, {"is_current": False}, {"is_ephemeral": True}):
        assert not legacy.searchable({**row, **change}, 100)
    assert not legacy.searchable(None, 100)
