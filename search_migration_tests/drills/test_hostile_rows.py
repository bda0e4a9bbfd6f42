"""Drill 6: malformed and hostile outbox rows mixed into good product traffic, through real catchup_job runs
in dual mode.

Good traffic is published through the product's writer (cn-relay's ingest), with valid-but-nasty text
(zero-width, combining, control and RTL characters, literal JSON escapes of lone surrogates, emoji) and
nasty `kukuri:` topic ids (255 characters, CJK, quotes, RTL: each its own per-topic index). The hostile
rows are what a misbehaving product can still leave in its outbox, written directly as such a product
would: unknown ops, malformed ids and topics, an event whose raw_json is not a signed event, a 2 MB post (over our content limit; the relay itself caps events
at 32 KB) and a post rewritten in place to 2 MB.
Protection: the consumer's row validation (Item.problem, including the content size cap) and its
deterministic-error classification: every bad row is dead-lettered once with a reason class, never
silently dropped and never blocking the rows after it; an upsert whose event is missing from `events` is
a delete, as the product's indexer makes it (a tombstone a later upsert overrides); every good row lands in both engines (PostgreSQL
and its topic's Meilisearch index) byte for byte; the fixable dead letters replay. The exhaustive
invariant, on the product's definition of searchable, holds with the dead-lettered pairs as its
quarantined ones.
"""

from __future__ import annotations

import json
import random

import dagster as dg
from psycopg.types.json import Jsonb

from search_migration import db
from search_migration.cutover import flags
from search_migration.definitions import defs
from search_migration.local.product_writer import ProductWriter, build_event, pubkey_of
from search_migration.source import contract
from search_migration.write_path import consumer, dead_letters

from ..support.backfill import backfill_all
from ..support.writes import NOW, _live, topic as corpus_topic
from .helpers import assert_invariant, catch_up_all

PUBKEY = pubkey_of("drill:hostile")

# Text PostgreSQL stores as-is and the JSON path to Meilisearch must carry unchanged.
NASTY = {
    "zero_width": "ゼロ\u200b幅\u200c文字\u200d join\ufeffed words",
    "combining": "e\u0301 a\u0308 n\u0303 か\u3099 Z\u0336\u0335a\u0337lgo\u0489 text",
    "control": "bell\x07 tab\t vt\x0b ff\x0c esc\x1b[31m red\x1b[0m del\x7f c1\x85\x9f end",
    "surrogate_escapes": r'literal \ud800 and \udfff and {"x": "\ud83d"} escapes \\u0000',
    "json_breakers": '"quoted" \\back\\slash </script> \u2028line\u2029para {"a":[1,2]}',
    "emoji": "🍜🔥👨‍👩‍👧‍👦 🏳️‍🌈 1️⃣ 🇯🇵 ラーメン最高",
    "rtl": "\u202eevil\u202c \u200fשלום\u200e عربي mixed שלום world",
    "noncharacters": "\ufffe\uffff \U0001fffe \ue000 private \U0010ffff end",
    "empty": "",
    "only_symbols": "!!! ??? ... ---",
    "sql_like": "'; DROP TABLE cn_relay.events; -- %_ \\",
}


def nasty_topics(namespace: str) -> dict[str, str]:
    """`kukuri:` topics of the test's namespace whose ids are hostile (each gets its own topic index)."""
    prefix = f"kukuri:{namespace}-"
    return {
        "long_topic": prefix + "t" * (consumer.MAX_TOPIC_ID - len(prefix)),  # exactly at the limit: valid
        "long_cjk_topic": prefix + "話" * (consumer.MAX_TOPIC_ID - len(prefix)),
        "quote_topic": prefix + "t'\"; DROP--%_\\",
        "rtl_topic": prefix + "\u202etopic\u200f🍜",
    }


def huge_text(n_bytes: int) -> str:
    """Distinct CJK bigrams, so the tsvector (not only the text) exceeds PostgreSQL's 1 MB."""
    rng = random.Random(n_bytes)
    return "".join(chr(0x4E00 + rng.randrange(20_000)) for _ in range(n_bytes // 3 + 1))


class Traffic:
    """Good writes through the product's writer; hostile rows written directly, as a misbehaving product."""

    def __init__(self, conn, topic: str):
        self.conn, self.topic = conn, topic
        self.bad: dict[int, tuple[str, str]] = {}  # seq -> (backend, reason_class) expected dead letter
        self.good: list[tuple[str, str]] = []
        self.n = 0

    def note(self, tag: str, content: str, topic: str | None = None) -> dict:
        self.n += 1
        return build_event(pubkey=PUBKEY, topics=[topic or self.topic], created_at=NOW + self.n,
                           content=content, tags=[["client", f"drill-{tag}"]])

    def post(self, tag: str, content: str, topic: str | None = None, n: int = 1) -> list[int]:
        seqs = []
        for i in range(n):
            event = self.note(f"{tag}:{i}", content, topic)
            seqs += ProductWriter(self.conn).publish(event, now=NOW + self.n)
            self.good.append((event["id"], topic or self.topic))
        return seqs

    def raw_post(self, tag: str, content: str) -> tuple[tuple[str, str], int]:
        """An event stored and announced by a product that skips the relay's checks (size): one transaction."""
        event = self.note(tag, content)
        with self.conn.transaction():
            self.store(event)
            seq = self.outbox("upsert", event["id"], self.topic)
        return (event["id"], self.topic), seq

    def store(self, event: dict, raw_json=None) -> None:
        self.conn.execute(
            "INSERT INTO cn_relay.events (event_id, pubkey, kind, created_at, tags, content, sig, raw_json) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (event["id"], event["pubkey"], event["kind"], event["created_at"], Jsonb(event["tags"]), event["content"],
             event["sig"], Jsonb(event if raw_json is None else raw_json)))
        self.conn.execute("INSERT INTO cn_relay.event_topics (event_id, topic_id) VALUES (%s, %s)",
                          (event["id"], self.topic))

    def outbox(self, op: str, event_id: str, topic: str) -> int:
        return self.conn.execute(
            "INSERT INTO cn_relay.events_outbox (op, event_id, topic_id, kind, created_at, ingested_at, reason) "
            "VALUES (%s, %s, %s, 1, %s, now(), 'drill') RETURNING seq", (op, event_id, topic, NOW)).fetchone()[0]

    def delete(self, pair: tuple[str, str]) -> None:
        """The author's NIP-09 deletion, through the product's writer."""
        ProductWriter(self.conn).publish(build_event(pubkey=PUBKEY, kind=5, topics=[pair[1]], created_at=NOW + 10_000,
                                                     content="", tags=[["e", pair[0]]]), now=NOW + 10_000)

    def expect_bad(self, seq: int, reason_class: str, backend: str = "source") -> None:
        self.bad[seq] = (backend, reason_class)


def catchup_run(instance, batch_size: int) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("catchup_job").execute_in_process(
        instance=instance, run_config={"ops": {"catch_up": {"config": {"batch_size": batch_size}}}},
        raise_on_error=False)


def open_dead_letters(conn) -> dict[int, tuple[str, str]]:
    return {seq: (backend, reason) for seq, backend, reason in conn.execute(
        "SELECT seq, backend, reason_class FROM cn_search.dead_letters WHERE resolved_at IS NULL")}


def test_hostile_rows_are_dead_lettered_good_rows_land_in_both_engines(dagster_env, seeded, meili, namespace):
    with db.connect(seeded) as conn:
        flags.set_flags(conn, {"search_write_mode": "dual"}, by="drill", reason="hostile rows drill")
        TOPIC = corpus_topic(conn)
        t = Traffic(conn, TOPIC)
        # Below the watermark, so the backfill meets them too: a huge post, and garbage naming a live post.
        legacy_huge, legacy_huge_seq = t.raw_post("legacy-huge", huge_text(2_000_000))
        t.expect_bad(legacy_huge_seq, "content_too_large")
        seeded_post = conn.execute("SELECT event_id, topic_id FROM cn_relay.event_topics WHERE topic_id = %s "
                                   "ORDER BY event_id LIMIT 1", (TOPIC,)).fetchone()
        t.expect_bad(t.outbox("frobnicate", *seeded_post), "unknown_op")  # must not become its version
        backfill_all(seeded)  # never fails on the huge post: it is dead-lettered, as catch-up does
        t.post("lead", "最初の普通の投稿 ordinary first post", n=30)
        for name, text in NASTY.items():
            t.post(name, text)
            t.post(f"{name}-between", f"普通の投稿 between {name}")
        for name, nasty in nasty_topics(namespace).items():
            t.post(name, f"投稿 in topic {name}", topic=nasty)

        # Bad rows, each followed by good traffic so "never blocks later rows" is observable.
        existing = t.good[0][0]
        t.expect_bad(t.outbox("frobnicate", existing, TOPIC), "unknown_op")  # after its upsert: would overwrite
        t.expect_bad(t.outbox("UPSERT", existing, TOPIC), "unknown_op")
        t.expect_bad(t.outbox("", existing, TOPIC), "unknown_op")
        t.post("after-unknown", "unknown op の後の投稿", n=5)

    # Small batches: bad rows fall in different batches, between good ones, through real Dagster runs.
    run = catchup_run(dagster_env, batch_size=16)
    assert run.success, [e.step_failure_data.error.message for e in run.all_events if e.is_step_failure]

    with db.connect(seeded) as conn:
        t.conn = conn
        # An upsert whose event is missing from `events` (its outbox row committed without it): the product's
        # indexer treats it as a delete, and so does the write path (a tombstone, no dead letter).
        late = t.note("late", "遅れて届いた投稿 late event")
        missing_seq = t.outbox("upsert", late["id"], TOPIC)
        t.expect_bad(t.outbox("upsert", "NOT-HEX-" + "z" * 56, TOPIC), "malformed_payload")
        t.expect_bad(t.outbox("delete", existing.upper(), TOPIC), "malformed_payload")
        t.expect_bad(t.outbox("upsert", existing, "t" * (consumer.MAX_TOPIC_ID + 1)), "malformed_payload")
        t.expect_bad(t.outbox("upsert", existing, "bell\x07topic"), "malformed_payload")
        t.expect_bad(t.outbox("upsert", existing, "   "), "malformed_payload")
        unsigned = t.note("unsigned", "raw_json の壊れた投稿 unsigned event")
        with conn.transaction():  # an event stored with a raw_json that is no signed event
            t.store(unsigned, raw_json={"id": unsigned["id"], "note": "not an event"})
            unsigned_seq = t.outbox("upsert", unsigned["id"], TOPIC)
        t.expect_bad(unsigned_seq, "malformed_payload")
        t.post("after-malformed", "malformed の後の投稿", n=5)
        huge_post, huge_seq = t.raw_post("huge", huge_text(2_000_000))
        t.expect_bad(huge_seq, "content_too_large")
        # A live post rewritten in place to a huge text (the product never edits a note; a misbehaving one
        # might): the old text stays in both engines, the rewrite is quarantined.
        edited = t.good[1]
        conn.execute("UPDATE cn_relay.events SET content = %(c)s, raw_json = jsonb_set(raw_json, '{content}', "
                     "to_jsonb(%(c)s::text)) WHERE event_id = %(id)s", {"c": huge_text(2_000_000), "id": edited[0]})
        edited_seq = t.outbox("upsert", *edited)
        t.expect_bad(edited_seq, "content_too_large")
        deleted = t.good[2]
        t.delete(deleted)
        t.post("tail", "最後の普通の投稿 tail post", n=30)
        head = contract.outbox_head(conn)

    run = catchup_run(dagster_env, batch_size=16)
    assert run.success, [e.step_failure_data.error.message for e in run.all_events if e.is_step_failure]

    with db.connect(seeded) as conn:
        assert contract.consumer_offset(conn, contract.CONSUMER) == head  # nothing blocked the offset
        assert conn.execute("SELECT count(*) FROM cn_search.side_write_failures").fetchone()[0] == 0
        assert open_dead_letters(conn) == t.bad  # every bad row once, with its reason class; no good row
        errors = [e for e, in conn.execute("SELECT error FROM cn_search.dead_letters")]
        assert all(e and len(e) <= 300 and "\n" not in e for e in errors), errors  # one clear line each
        pair_rows = [s for s in t.bad if conn.execute(
            "SELECT op IN ('upsert', 'delete') FROM cn_relay.events_outbox WHERE seq = %s", (s,)).fetchone()[0]]
    inv = assert_invariant(seeded, "6 hostile rows (after catch-up)", meili, quarantined=len(pair_rows))
    with db.connect(seeded) as conn:
        live_pg = {(p, tp): c for p, tp, c in conn.execute(
            "SELECT post_id, topic_id, content FROM cn_search.post_search_documents WHERE NOT is_deleted")}
        for pair in t.good:
            if pair != deleted:
                assert pair in live_pg, pair  # every good row applied (the invariant also compares content)
        for name, nasty in nasty_topics(namespace).items():  # each nasty topic in its own index, found there
            assert any(tp == nasty for _, tp in live_pg), name
        assert deleted not in live_pg and huge_post not in live_pg
        assert live_pg[edited] != huge_text(2_000_000)  # the previous version, not a truncated huge one
        assert conn.execute("SELECT source_seq, is_deleted, delete_reason FROM cn_search.post_search_documents "
                            "WHERE post_id = %s AND topic_id = %s", (late["id"], TOPIC)).fetchone() == \
            (missing_seq, True, "missing")

        # The fix for the fixable ones: the unsigned event gets its signed raw_json, the huge posts are
        # shortened; and the missing event is published after all (a new outbox row, which wins).
        conn.execute("UPDATE cn_relay.events SET raw_json = %s WHERE event_id = %s", (Jsonb(unsigned), unsigned["id"]))
        conn.execute("UPDATE cn_relay.events SET content = left(content, 1000), "
                     "raw_json = jsonb_set(raw_json, '{content}', to_jsonb(left(content, 1000))) "
                     "WHERE event_id = ANY(%s)", ([huge_post[0], edited[0], legacy_huge[0]],))
        outcomes = dead_letters.replay(conn, meili, by="drill", reason="source fixed")
        applied = {o.seq for o in outcomes if o.action == "applied"}
        assert applied == {unsigned_seq, huge_seq, edited_seq, legacy_huge_seq}
        # an unknown-op row is no newer state: it must not resolve an earlier dead letter as superseded
        assert {o.seq for o in outcomes if o.action == "failed"} == set(t.bad) - applied  # audited, still open
        assert set(open_dead_letters(conn)) == set(t.bad) - applied
        ProductWriter(conn).publish(late, now=NOW + 20_000)
    catch_up_all(seeded, meili)
    after = assert_invariant(seeded, "6 hostile rows (after replay)", meili, quarantined=len(pair_rows) - len(applied))
    assert after.live == inv.live + 1  # the late event is live now (the others were live, quarantined)
    print("invariant after catch-up", json.dumps(inv.as_dict()))  # for the drill report (pytest -s)
    print("invariant after replay", json.dumps(after.as_dict()))


def test_a_new_version_deleted_before_catch_up_takes_the_old_one_out_of_both_engines(seeded, meili):
    """The product supersedes replaceable/addressable events and the author deletes the new versions before
    catch-up reads their upserts: those apply as deletes, and the versions they replaced (no longer current,
    so no longer searchable) must still leave PostgreSQL and every topic index they were in."""
    with db.connect(seeded) as conn:
        flags.set_flags(conn, {"search_write_mode": "dual"}, by="drill", reason="superseded then deleted")
    backfill_all(seeded)
    catch_up_all(seeded, meili)
    with db.connect(seeded) as conn:
        versioned = _live(conn, contract.topic_ids(conn), None, versioned=True)[:6]
        assert len(versioned) == 6
        writer = ProductWriter(conn)
        for event_id, pubkey, kind, created_at, raw in versioned:
            raw = raw if isinstance(raw, dict) else json.loads(raw)
            topics = [tg for tg in raw["tags"] if tg[0] == "t"]
            newer = build_event(pubkey=pubkey, kind=kind, created_at=created_at + 1, content=raw["content"] + " v2",
                                tags=raw["tags"])
            writer.publish(newer, now=NOW + 20_000)
            writer.publish(build_event(pubkey=pubkey, kind=5, created_at=NOW + 20_001, content="",
                                       tags=topics + [["e", newer["id"]]]), now=NOW + 20_001)
    catch_up_all(seeded, meili)
    assert_invariant(seeded, "6b superseded then deleted", meili)
