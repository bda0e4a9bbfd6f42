"""Drill 6: malformed and hostile outbox rows mixed into good traffic, through real catchup_job runs in dual mode.

Fault: unknown ops, events that do not exist, malformed ids and topics, a 2 MB post (over PostgreSQL's
1 MB tsvector limit), and valid-but-nasty text (zero-width, combining, control and RTL characters,
literal JSON escapes of lone surrogates, emoji, 255-character topic ids) between ordinary posts.
Protection: the consumer's row validation (Item.problem, including the content size cap) and its
deterministic-error classification: every bad row is dead-lettered once with a reason class, never
silently dropped and never blocking the rows after it; every good row lands in both engines byte for
byte; the fixable dead letters replay. The exhaustive invariant holds, with the dead-lettered pairs as
its quarantined ones.
"""

from __future__ import annotations

import hashlib
import json
import random

import dagster as dg

from search_migration.write_path import dead_letters
from search_migration import db
from search_migration.cutover import flags
from search_migration.write_path import consumer
from search_migration.source import contract
from search_migration.definitions import defs

from ..support import invariants
from ..support.backfill import backfill_all
from ..support.writes import TOPIC

PUBKEY = "b" * 64
BASE_TS = 1_790_000_000

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
NASTY_TOPICS = {
    "long_topic": "t" * consumer.MAX_TOPIC_ID,  # exactly at the limit: valid
    "long_cjk_topic": "話" * consumer.MAX_TOPIC_ID,
    "quote_topic": "t'\"; DROP--%_\\",
    "rtl_topic": "\u202etopic\u200f🍜",
}


def eid(tag: str) -> str:
    return hashlib.sha256(f"hostile:{tag}".encode()).hexdigest()


def huge_text(n_bytes: int) -> str:
    """Distinct CJK bigrams, so the tsvector (not only the text) exceeds PostgreSQL's 1 MB."""
    rng = random.Random(n_bytes)
    return "".join(chr(0x4E00 + rng.randrange(20_000)) for _ in range(n_bytes // 3 + 1))


class Traffic:
    """Product-style writes (event, topic rows and outbox rows in one transaction), plus raw outbox rows."""

    def __init__(self, conn):
        self.conn = conn
        self.bad: dict[int, tuple[str, str]] = {}  # seq -> (backend, reason_class) expected dead letter
        self.good: list[tuple[str, str]] = []

    def post(self, tag: str, content: str, topic: str = TOPIC, n: int = 1) -> list[int]:
        seqs = []
        for i in range(n):
            event_id = eid(f"{tag}:{i}")
            with self.conn.transaction():
                self.conn.execute("INSERT INTO cn_relay.events (event_id, pubkey, kind, content, created_at) "
                                  "VALUES (%s, %s, 1, %s, %s)", (event_id, PUBKEY, content, BASE_TS + len(self.good)))
                self.conn.execute("INSERT INTO cn_relay.event_topics VALUES (%s, %s)", (event_id, topic))
                seqs.append(self.outbox("upsert", event_id, topic))
            self.good.append((event_id, topic))
        return seqs

    def outbox(self, op: str, event_id: str, topic: str) -> int:
        return self.conn.execute("INSERT INTO cn_relay.events_outbox (op, event_id, topic_id, reason) "
                                 "VALUES (%s, %s, %s, 'drill') RETURNING seq", (op, event_id, topic)).fetchone()[0]

    def expect_bad(self, seq: int, reason_class: str, backend: str = "source") -> None:
        self.bad[seq] = (backend, reason_class)



def catchup_run(instance, batch_size: int) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("catchup_job").execute_in_process(
        instance=instance, run_config={"ops": {"catch_up": {"config": {"batch_size": batch_size}}}},
        raise_on_error=False)


def open_dead_letters(conn) -> dict[int, tuple[str, str]]:
    return {seq: (backend, reason) for seq, backend, reason in conn.execute(
        "SELECT seq, backend, reason_class FROM cn_search.dead_letters WHERE resolved_at IS NULL")}


def test_hostile_rows_are_dead_lettered_good_rows_land_in_both_engines(dagster_env, seeded, meili, index_uid):
    with db.connect(seeded) as conn:
        flags.set_flags(conn, {"search_write_mode": "dual"}, by="drill", reason="hostile rows drill")
        t = Traffic(conn)
        # Below the watermark, so the backfill meets them too: a huge post, and garbage naming a live post.
        legacy_huge_seq = t.post("legacy-huge", huge_text(2_000_000))[0]
        legacy_huge = t.good.pop()
        t.expect_bad(legacy_huge_seq, "content_too_large")
        seeded_post = conn.execute("SELECT event_id, topic_id FROM cn_relay.event_topics ORDER BY event_id LIMIT 1"
                                   ).fetchone()
        t.expect_bad(t.outbox("frobnicate", *seeded_post), "unknown_op")  # must not become its version
        backfill_all(seeded)  # never fails on the huge post: it is dead-lettered, as catch-up does
        t.post("lead", "最初の普通の投稿 ordinary first post", n=30)
        for name, text in NASTY.items():
            t.post(name, text)
            t.post(f"{name}-between", f"普通の投稿 between {name}")
        for name, topic in NASTY_TOPICS.items():
            t.post(name, f"投稿 in topic {name}", topic=topic)

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
        missing = eid("never-written")
        missing_seq = t.outbox("upsert", missing, TOPIC)
        t.expect_bad(missing_seq, "missing_source_event")
        t.expect_bad(t.outbox("upsert", "NOT-HEX-" + "z" * 56, TOPIC), "malformed_payload")
        t.expect_bad(t.outbox("delete", existing.upper(), TOPIC), "malformed_payload")
        t.expect_bad(t.outbox("upsert", existing, "t" * (consumer.MAX_TOPIC_ID + 1)), "malformed_payload")
        t.expect_bad(t.outbox("upsert", existing, "bell\x07topic"), "malformed_payload")
        t.expect_bad(t.outbox("upsert", existing, "   "), "malformed_payload")
        t.post("after-malformed", "malformed の後の投稿", n=5)
        huge_seq = t.post("huge", huge_text(2_000_000))[0]
        huge_post = t.good.pop()  # dead-lettered, not good
        t.expect_bad(huge_seq, "content_too_large")
        # A live post edited to a huge text: the old version stays in both engines, the edit is quarantined.
        edited = t.good[1]
        conn.execute("UPDATE cn_relay.events SET content = %s WHERE event_id = %s", (huge_text(2_000_000), edited[0]))
        edited_seq = t.outbox("upsert", *edited)
        t.expect_bad(edited_seq, "content_too_large")
        deleted = t.good[2]
        conn.execute("UPDATE cn_relay.events SET is_deleted = true WHERE event_id = %s", (deleted[0],))
        t.outbox("delete", *deleted)
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
        inv = invariants.check(conn, head, meili, index_uid)
        assert inv.ok, inv.as_dict()
        pair_rows = [s for s in t.bad if conn.execute(
            "SELECT op IN ('upsert', 'delete') FROM cn_relay.events_outbox WHERE seq = %s", (s,)).fetchone()[0]]
        assert inv.quarantined == len(pair_rows)
        live_pg = {(p, tp): c for p, tp, c in conn.execute(
            "SELECT post_id, topic_id, content FROM cn_search.post_search_documents WHERE NOT is_deleted")}
        for pair in t.good:
            if pair != deleted:
                assert pair in live_pg, pair  # every good row applied (the invariant also compares content)
        assert deleted not in live_pg and huge_post not in live_pg
        assert live_pg[edited] != huge_text(2_000_000)  # the previous version, not a truncated huge one

        # The fix for the fixable ones: the missing event appears, the huge posts are shortened.
        conn.execute("INSERT INTO cn_relay.events (event_id, pubkey, kind, content, created_at) "
                     "VALUES (%s, %s, 1, '遅れて届いた投稿 late event', %s)", (missing, PUBKEY, BASE_TS))
        conn.execute("INSERT INTO cn_relay.event_topics VALUES (%s, %s)", (missing, TOPIC))
        conn.execute("UPDATE cn_relay.events SET content = left(content, 1000) WHERE event_id = ANY(%s)",
                     ([huge_post[0], edited[0], legacy_huge[0]],))
        outcomes = dead_letters.replay(conn, meili, index_uid, by="drill", reason="source fixed")
        applied = {o.seq for o in outcomes if o.action == "applied"}
        assert applied == {missing_seq, huge_seq, edited_seq, legacy_huge_seq}
        # an unknown-op row is no newer state: it must not resolve an earlier dead letter as superseded
        assert {o.seq for o in outcomes if o.action == "failed"} == set(t.bad) - applied  # audited, still open
        assert set(open_dead_letters(conn)) == set(t.bad) - applied
        after = invariants.check(conn, head, meili, index_uid)
        assert after.ok, after.as_dict()
        assert after.quarantined == len(pair_rows) - len(applied)
        assert after.live == inv.live + 1  # the late event is live now (the huge ones were live, quarantined)
    print("invariant after catch-up", json.dumps(inv.as_dict()))  # for the drill report (pytest -s)
    print("invariant after replay", json.dumps(after.as_dict()))
