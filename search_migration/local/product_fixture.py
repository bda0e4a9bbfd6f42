"""The product's pre-migration world in one call: every semantic case the migration must survive.

On an empty database and a Meilisearch, `build_product_world` applies the product schema, writes
events the way cn-relay / cn-user-api do (`product_writer`) over a simulated 45 days, and runs the
emulated cn-index (`product_indexer`) along the way, so the legacy indexes end up exactly as the
product would have left them, including its known defect (an older replaceable version stays
indexed in a topic its newer version dropped). The expected searchable set is computed afterwards
from the source tables by the product's rule, not from what the script meant to write.

Cases: Japanese (no spaces) and English posts, multi-topic posts, a padded and a repeated `t` tag,
posts backdated by years, replaceable (kind 0, 3) and addressable (30023) versions, one moving topics,
an older version arriving late, NIP-09 deletions by `e` and by `a`, a deletion that arrives before its
target (tombstone), a deletion by someone else (ignored), deletion events themselves (indexed), events
already expired (by the relay's expiry and by the indexer's sweep) and expiring later, a non-public
`scope` post, a DSAR of one pubkey, posts older than 40 days whose outbox rows retention pruned, an
old deleted post retention removed, two topics whose index uids collide, and refused events.

The product has no `followers` visibility at 884c1885: Meilisearch documents carry no visibility
and the legacy search filters none; the relay's `scope` tag only asks non-public events for an epoch.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import meilisearch
import psycopg
from psycopg.rows import dict_row

from search_migration.local.product_indexer import ProductIndexer
from search_migration.local.product_writer import ProductWriter, Rejected, build_event, pubkey_of
from search_migration.write_path import legacy_documents as legacy

SCHEMA_SQL = Path(__file__).with_name("product_schema.sql")
DAY = 86_400


def apply_product_schema(conn: psycopg.Connection) -> None:
    """cn_relay (+ cn_index) as the product's migrations leave them; for an empty database only."""
    with conn.transaction():
        conn.execute(SCHEMA_SQL.read_text())


@dataclass
class ProductWorld:
    now: int  # unix seconds the world is "as of"
    topics: dict[str, str]  # role → topic id
    cases: Counter = field(default_factory=Counter)  # case → events written for it
    rejected: list[str] = field(default_factory=list)  # the relay's reasons, one per refused event
    searchable: set[tuple[str, str]] = field(default_factory=set)  # (event_id, topic_id) by the product's rule
    legacy_only: set[tuple[str, str]] = field(default_factory=set)  # indexed though not searchable (defect)

    def expected_documents(self, conn: psycopg.Connection) -> dict[str, dict[str, dict[str, Any]]]:
        """uid → event_id → the document cn-index would hold there, read from the source tables."""
        pairs = self.searchable | self.legacy_only
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute("SELECT event_id, raw_json FROM cn_relay.events WHERE event_id = ANY(%s)",
                               ([e for e, _ in pairs],)).fetchall()
        raw = {r["event_id"]: r for r in rows}
        out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for event_id, topic_id in sorted(pairs):
            out[legacy.index_uid(topic_id)][event_id] = legacy.document(raw[event_id], topic_id)
        return dict(out)


class _Script:
    """Publishes at a simulated clock that only moves forward, and tallies cases."""

    def __init__(self, writer: ProductWriter, world: ProductWorld):
        self.writer, self.world, self.clock = writer, world, 0

    def at(self, unix: int) -> None:
        self.clock = max(self.clock, unix)

    def publish(self, who: str, content: str, topics: list[str], *cases: str, kind: int = 1,
                created_at: int | None = None, tags: list[list[str]] = (), event: dict | None = None) -> dict:
        self.clock += 1
        event = event or build_event(pubkey=pubkey_of(who), content=content, topics=topics, kind=kind,
                                     created_at=self.clock if created_at is None else created_at, tags=tags)
        try:
            self.writer.publish(event, now=self.clock)
        except Rejected as exc:
            self.world.rejected.append(exc.reason)
            return event
        self.world.cases.update(cases)
        return event


def build_product_world(conn: psycopg.Connection, meili: meilisearch.Client, *, now: int, namespace: str = "",
                        wait: bool = True) -> ProductWorld:
    """Build it all; `namespace` (lowercase ASCII) prefixes topic ids so several worlds can share one
    Meilisearch. `conn` must be autocommit on an empty database."""
    ns = f"{namespace}-" if namespace else ""
    t = {"tokyo": f"kukuri:{ns}tokyo", "rust": f"kukuri:{ns}rust-lang", "cafe": f"kukuri:{ns}cafe-ja",
         "owls_a": f"kukuri:{ns}Night/Owls", "owls_b": f"kukuri:{ns}night_owls"}
    world = ProductWorld(now=now, topics=t)
    apply_product_schema(conn)
    writer, indexer = ProductWriter(conn), ProductIndexer(conn, meili, wait=wait)
    s = _Script(writer, world)

    # -- 45 days ago: posts whose outbox rows retention will prune; one deleted the next day ---------
    s.at(now - 45 * DAY)
    s.publish("alice", "東京駅の近くで美味しいコーヒーを飲みました。雨の日でも落ち着ける店です", [t["tokyo"]],
              "ja", "old_outbox_pruned", tags=[["title", "週末のカフェ巡り"]])
    s.publish("alice", "三年前の写真を見返していたら、桜がとても綺麗だった", [t["tokyo"]],
              "ja", "backdated", "old_outbox_pruned", created_at=now - 3 * 365 * DAY)
    s.publish("alice", "Rustで非同期処理を書くならtokioが定番だと思う", [t["tokyo"], t["rust"]],
              "ja", "multi_topic", "old_outbox_pruned")
    borrow = s.publish("bob", "The borrow checker finally clicked for me today", [t["rust"]],
                       "en", "old_outbox_pruned", tags=[["subject", "Borrow checker"]])
    s.publish("bob", "Lifetimes are not about how long a value lives but about how long a borrow is valid, "
              "which is a subtle distinction\nthat took me weeks. " + "Practice with small examples. " * 6,
              [t["rust"]], "en", "long_text", "backdated", created_at=now - 8 * 365 * DAY)
    doomed = s.publish("alice", "この投稿はあとで消します", [t["tokyo"]], "ja", "old_deleted_purged")
    s.at(now - 44 * DAY)
    s.publish("alice", "", [t["tokyo"]], "deletion_event", kind=5, tags=[["e", doomed["id"]]])
    indexer.run(now=s.clock + 60)

    # -- 10 days ago: versions, deletions, expiry, scopes, collisions, refusals ----------------------
    s.at(now - 10 * DAY)
    profile_v1 = s.publish("carol", '{"name":"carol","about":"コーヒーとRustが好き"}', [t["cafe"], t["rust"]],
                           "replaceable_version", kind=0)
    s.publish("carol", "下書き: 喫茶店の歴史について", [t["tokyo"]], "addressable_version", kind=30023,
              tags=[["d", "essay"], ["title", "喫茶店の歴史"]])
    indexer.run(now=s.clock + 60)  # the first versions are live in Meilisearch before their successors
    s.publish("carol", '{"name":"carol","about":"Rust and coffee"}', [t["rust"]],
              "replaceable_version", "topic_moved", kind=0)
    world.legacy_only.add((profile_v1["id"], t["cafe"]))  # v2 left cafe: cn-index never removes v1 there
    s.publish("carol", "喫茶店の歴史について。明治時代に最初の店が開いた", [t["tokyo"], t["rust"]],
              "addressable_version", kind=30023, tags=[["d", "essay"], ["title", "喫茶店の歴史"]])
    s.publish("carol", '{"name":"carol (old)"}', [t["cafe"]], "late_older_version", kind=0,
              created_at=profile_v1["created_at"] - 1000)

    f1 = s.publish("frank", "Meet-up at the station at 7pm, bring your laptop", [t["tokyo"]], "en", "nip09_deleted")
    f2 = s.publish("frank", "所有権の説明がわかりやすい記事を見つけた", [t["rust"]], "ja", "foreign_delete_ignored")
    s.publish("frank", "posted by mistake", [t["tokyo"]], "deletion_event", kind=5, tags=[["e", f1["id"]]])
    s.publish("bob", "not yours to delete", [t["rust"]], "deletion_event", kind=5, tags=[["e", f2["id"]]])
    f3 = build_event(pubkey=pubkey_of("frank"), content="この投稿は届く前に削除された", topics=[t["rust"]],
                     created_at=s.clock)
    s.publish("frank", "", [t["rust"]], "deletion_event", kind=5, tags=[["e", f3["id"]]])
    s.publish("frank", "", [], "tombstoned_on_arrival", event=f3)
    s.publish("frank", "Draft: notes on coffee roasting", [t["cafe"]], "a_tag_deleted", kind=30023,
              tags=[["d", "draft"]])
    s.publish("frank", "", [t["cafe"]], "deletion_event", kind=5,
              tags=[["a", f"30023:{pubkey_of('frank')}:draft"]])

    s.publish("erin", "期間限定のお知らせ: 今週末だけ営業時間を延長します", [t["tokyo"]], "expired_by_relay",
              tags=[["exp", str(now - 2 * DAY)]])
    s.publish("erin", "Flash sale on mechanical keyboards, today only", [t["rust"]], "expired_by_sweep",
              tags=[["expiration", str(now - 1800)]])
    s.publish("erin", "来週の勉強会は渋谷で開催します", [t["cafe"]], "expiring_later",
              tags=[["exp", str(now + 7 * DAY)]])
    s.publish("gina", "友達だけに共有: 新しいカフェを見つけた", [t["tokyo"]], "non_public_scope",
              tags=[["scope", "friend"], ["epoch", "1"]])
    s.publish("gina", "Cold brew recipe: steep for 18 hours", [f"  {t['tokyo']} "], "trimmed_topic", "repeated_topic_tag",
              tags=[["t", t["cafe"]], ["t", t["cafe"]]])
    s.publish("owen", "夜更かし仲間の集まり", [t["owls_a"]], "uid_collision")
    s.publish("owen", "Night owls unite: late night coding session", [t["owls_b"]], "uid_collision")

    for who, content, kind, topics in [("dave", "渋谷で見つけた古本屋がよかった", 1, [t["tokyo"]]),
                                       ("dave", "Anyone using Rust for embedded work?", 1, [t["rust"]]),
                                       ("dave", "", 3, [t["rust"]]), ("dave", "", 3, [t["rust"]])]:
        s.publish(who, content, topics, "dsar", kind=kind)
    s.publish("bob", "", [], event=build_event(pubkey=pubkey_of("bob"), content="x", topics=[t["rust"]],
                                               created_at=s.clock, tags=[["exp", str(s.clock - 5)]]))
    s.publish("bob", "off-topic", ["general"])
    s.publish("bob", "no topic at all", [])
    s.publish("bob", "missing d", [t["rust"]], kind=30023)
    s.publish("bob", "", [], "duplicate_ignored", event=borrow)
    s.publish("bob", "ephemeral typing indicator", [t["rust"]], "ephemeral_not_stored", kind=20001)
    indexer.run(now=s.clock + 60)

    # -- 1 day ago: a DSAR (queues reindex jobs for the subject's topics) ----------------------------
    s.at(now - DAY)
    writer.dsar(pubkey_of("dave"), now=s.clock, request_id="fixture")
    indexer.run(now=s.clock + 60)

    # -- an hour ago the relay's retention ran; now the indexer catches up and sweeps ----------------
    writer.retention(outbox_days=30, now=now - 3600)
    indexer.run(now=now)

    world.searchable = searchable_pairs(conn, now)
    return world


def searchable_pairs(conn: psycopg.Connection, now: int) -> set[tuple[str, str]]:
    """(event_id, topic_id) pairs the product would serve, by `legacy_documents.searchable`."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("SELECT e.event_id, t.topic_id, e.is_deleted, e.is_current, e.is_ephemeral, e.expires_at"
                           " FROM cn_relay.events e JOIN cn_relay.event_topics t ON t.event_id = e.event_id").fetchall()
    return {(r["event_id"], r["topic_id"]) for r in rows if legacy.searchable(r, now)}
