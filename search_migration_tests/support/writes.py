"""The product's writes through its own writer (cn-relay's ingest: an event, its topic rows and one outbox
row per topic in one transaction, then a notify), write modes, and the seeded corpora tests start from."""

from __future__ import annotations

import json
import random
import time

import psycopg

from search_migration import db
from search_migration.cutover import flags
from search_migration.local import demo_corpus, demo_seed
from search_migration.local.product_fixture import apply_product_schema
from search_migration.local.product_writer import ProductWriter, build_event, pubkey_of
from search_migration.schema.migrate import migrate
from search_migration.source import contract
from search_migration.write_path import handover, meili_index
from search_migration.write_path.consumer import Retry
from search_migration.write_path.pg_documents import DocWrite, apply

FAST = Retry(attempts=2, initial_s=0.01, max_s=0.05)  # retries that fail fast: a stall shows at once
NOW = demo_corpus.T_END + 86_400  # new test posts: a day after the demo's history, still in the past

SEARCHABLE_ROWS_SQL = f"""
SELECT e.event_id, et.topic_id, e.content, e.created_at, e.kind, e.expires_at
FROM cn_relay.event_topics et JOIN cn_relay.events e ON e.event_id = et.event_id
WHERE {contract.SEARCHABLE}
"""


def set_mode(conn: psycopg.Connection, mode: str, *, by: str = "test", reason: str = "test sets the write mode") -> None:
    flags.set_flags(conn, {"search_write_mode": mode}, by=by, reason=reason)


def topic(conn: psycopg.Connection, n: int = 0) -> str:
    """The seeded corpus's n-th topic (in id order): where a test writes."""
    return contract.topic_ids(conn)[n]


def seed_source(url: str, posts: int = 2000, topics: int = 4, namespace: str = "src") -> None:
    """The demo corpus in the source tables only (the product's schema, our migrations, the events as
    the relay stores them; no Meilisearch), handed over so catch-up and backfill may run."""
    with db.connect(url) as conn:
        apply_product_schema(conn)
        migrate(url)
        writer = ProductWriter(conn)
        conn.execute("SET synchronous_commit = off")
        for item in demo_corpus.corpus(posts, topics, 7, namespace):
            writer.publish(item.event, now=item.now)
        conn.execute("RESET synchronous_commit")
        conn.execute("INSERT INTO cn_relay.consumer_offsets (consumer, last_seq) "
                     "SELECT 'index-v1', coalesce(max(seq), 0) FROM cn_relay.events_outbox")
        handover.adopt(conn, from_consumer=contract.PRODUCT_INDEXER, by="test", reason="source-only corpus")


def seed_indexed(url: str, meili, namespace: str, *, posts: int, topics: int, seed: int) -> None:
    """The demo corpus in the product's Meilisearch indexes, handed over, and every searchable
    (post, topic) in PostgreSQL's documents too."""
    demo_seed.seed(url, meili, posts=posts, topics=topics, seed=seed, namespace=namespace)
    with db.connect(url) as conn:
        handover.adopt(conn, from_consumer=contract.PRODUCT_INDEXER, by="test", reason="indexed corpus")
        rows = conn.execute(SEARCHABLE_ROWS_SQL, {"now": contract.now_unix()}).fetchall()
        apply(conn, [DocWrite(1, e, t, False, c, ts, kind=k, expires_at=x) for e, t, c, ts, k, x in rows])


def note(tag: str, i: int, topics: list[str], *, created_at: int | None = None, content: str | None = None) -> dict:
    """A kind 1 note, signed (as far as tests care) by a persona of the tag."""
    return build_event(pubkey=pubkey_of(f"test:{tag}"), topics=topics, created_at=created_at or NOW + i,
                       content=content if content is not None else f"新しい投稿 {tag} number {i} ラーメン")


def new_posts(conn: psycopg.Connection, n: int, tag: str, topic_id: str | None = None) -> list[tuple[str, int]]:
    """`n` notes in one topic (the corpus's first by default), each published as the product publishes;
    returns (event id, outbox seq) per post."""
    topic_id = topic_id or topic(conn)
    writer, out = ProductWriter(conn), []
    for i in range(n):
        event = note(tag, i, [topic_id])
        seqs = writer.publish(event, now=NOW + i)
        out.append((event["id"], seqs[0]))
    return out


def meili_ids(client, topic_id: str) -> set[str]:
    """Every event id in the topic's index."""
    try:
        docs = client.index(meili_index.index_uid(topic_id)).get_documents({"fields": ["event_id"], "limit": 1_000_000}).results
    except Exception as exc:  # a topic never written has no index
        if getattr(exc, "code", None) == "index_not_found":
            return set()
        raise
    return {d.event_id for d in docs}


def _live(conn: psycopg.Connection, topics: list[str], window, versioned: bool) -> list[tuple]:
    """Searchable events of `topics` (created in `window`), versioned ones only when asked."""
    rows = conn.execute(
        f"SELECT DISTINCT e.event_id, e.pubkey, e.kind, e.created_at, e.raw_json FROM cn_relay.events e "
        f"JOIN cn_relay.event_topics et ON et.event_id = e.event_id "
        f"WHERE {contract.SEARCHABLE} AND et.topic_id = ANY(%(topics)s) AND e.created_at >= %(start)s "
        f"AND e.created_at < %(end)s AND e.kind <> 5 "
        + ("AND (e.replaceable_key IS NOT NULL OR e.addressable_key IS NOT NULL) " if versioned else "")
        + "ORDER BY 1", {"now": contract.now_unix(), "topics": topics, "start": window.start if window else -2**62,
                         "end": window.end if window else 2**62}).fetchall()
    return rows


def product_writes(conn: psycopg.Connection, tag: str, *, inserts: int = 0, edits: int = 0, deletes: int = 0,
                   removals: int = 0, topic: str | None = None, window=None, seed: int = 0) -> dict[str, list[str]]:
    """The product's kinds of change, each published as the relay publishes it: inserts (notes in one or
    two topics), edits (a newer version of a replaceable/addressable event), deletes (the author's NIP-09
    deletion) and removals (a newer version that leaves one of its topics). Edits and removals pick
    versioned events (of `topic`, created in `window`, when given), as many as there are. Returns the
    event ids per kind (for edits and removals, the superseded versions)."""
    rng = random.Random(f"{tag}:{seed}")
    topics = [topic] if topic else contract.topic_ids(conn)
    writer = ProductWriter(conn)
    done: dict[str, list[str]] = {"insert": [], "edit": [], "delete": [], "removal": []}
    clock = max(NOW, int(time.time()) - 3600)
    for i in range(inserts):
        chosen = rng.sample(topics, min(len(topics), rng.choice((1, 1, 2))))
        event = note(f"drill:{tag}", i, chosen, created_at=clock + i, content=f"ドリル {tag} {i} 新しい投稿")
        writer.publish(event, now=clock + i)
        done["insert"].append(event["id"])
    versioned = _live(conn, topics, window, versioned=True)
    rng.shuffle(versioned)
    for kind_name, rows in (("edit", versioned[:edits]), ("removal", versioned[edits:edits + removals])):
        for event_id, pubkey, kind, created_at, raw in rows:
            raw = raw if isinstance(raw, dict) else json.loads(raw)
            own = [tg for tg in raw["tags"] if tg and tg[0] == "t"]
            keep = own[:-1] if kind_name == "removal" and len(own) > 1 else own
            if kind_name == "removal" and len(own) == 1:  # the one topic is swapped for another
                others = [t for t in contract.topic_ids(conn) if t != own[0][1]]
                keep = [["t", others[0]]] if others else own
            tags = keep + [tg for tg in raw["tags"] if tg and tg[0] != "t"]
            event = build_event(pubkey=pubkey, kind=kind, created_at=created_at + 1,
                                content=raw["content"] + f" 編集 {tag}", tags=tags)
            writer.publish(event, now=clock)
            done[kind_name].append(event_id)
    plain = [r for r in _live(conn, topics, window, versioned=False) if r[0] not in done["edit"] + done["removal"]]
    rng.shuffle(plain)
    for event_id, pubkey, _, _, raw in plain[:deletes]:  # the author's NIP-09 deletion, posted in one of its topics
        raw = raw if isinstance(raw, dict) else json.loads(raw)
        own = [tg[1] for tg in raw["tags"] if tg and tg[0] == "t"][:1]
        writer.publish(build_event(pubkey=pubkey, kind=5, created_at=clock, content="", topics=own,
                                   tags=[["e", event_id]]), now=clock)
        done["delete"].append(event_id)
    return done
