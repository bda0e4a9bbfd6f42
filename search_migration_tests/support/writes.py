"""The product's writes (an event, its topic rows and outbox rows in one transaction), write modes, and
the seeded corpora tests start from."""

from __future__ import annotations

import hashlib
import random

import psycopg

from search_migration import db
from search_migration.backfill import Window
from search_migration.cutover import flags
from search_migration.local import demo_seed
from search_migration.source import contract
from search_migration.write_path.consumer import Retry
from search_migration.write_path.pg_documents import DocWrite, apply

FAST = Retry(attempts=2, initial_s=0.01, max_s=0.05)  # retries that fail fast: a stall shows at once
TOPIC = "t0000-ramen"  # the demo corpus's first topic: where new_posts writes
TECH_TOPIC = "t0001-tech"  # its second


def set_mode(conn: psycopg.Connection, mode: str, *, by: str = "test", reason: str = "test sets the write mode") -> None:
    flags.set_flags(conn, {"search_write_mode": mode}, by=by, reason=reason)


def seed_source(url: str, posts: int = 2000, topics: int = 4) -> None:
    """The demo corpus in the source tables only (no Meilisearch, consumer not advanced)."""
    with db.connect(url) as conn:
        demo_seed.write_source(conn, posts, topics, 7)


def seed_indexed(url: str, meili, uid: str, *, posts: int, topics: int, seed: int) -> None:
    """The demo corpus in Meilisearch and every live (post, topic) in PostgreSQL's documents too."""
    with db.connect(url) as conn:
        demo_seed.seed(conn, meili, uid, posts=posts, topics=topics, seed=seed)
        rows = conn.execute(demo_seed.LIVE_ROWS_SQL).fetchall()
        apply(conn, [DocWrite(1, e, t, False, c, ts) for e, t, c, ts in rows])


def new_posts(conn: psycopg.Connection, n: int, tag: str, topic: str = TOPIC) -> list[tuple[str, int]]:
    """Write posts the way the product does: event, topic row and outbox row in one transaction."""
    ids = [hashlib.sha256(f"{tag}:{i}".encode()).hexdigest() for i in range(n)]
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy("COPY cn_relay.events (event_id, pubkey, kind, content, created_at) FROM STDIN") as cp:
            for i, event_id in enumerate(ids):
                cp.write_row((event_id, "p" * 64, 1, f"新しい投稿 {tag} number {i} ラーメン", 1_780_000_000 + i))
        with cur.copy("COPY cn_relay.event_topics (event_id, topic_id) FROM STDIN") as cp:
            for event_id in ids:
                cp.write_row((event_id, topic))
        with cur.copy("COPY cn_relay.events_outbox (op, event_id, topic_id, reason) FROM STDIN") as cp:
            for event_id in ids:
                cp.write_row(("upsert", event_id, topic, "created"))
    seqs = dict(conn.execute("SELECT event_id, seq FROM cn_relay.events_outbox WHERE event_id = ANY(%s)", (ids,)))
    return [(event_id, seqs[event_id]) for event_id in ids]


def meili_ids(client, uid: str) -> set[str]:
    """Every document id in the index."""
    docs = client.index(uid).get_documents({"fields": ["id"], "limit": 1_000_000}).results
    return {d.id for d in docs}


def product_writes(conn: psycopg.Connection, tag: str, *, inserts: int = 0, edits: int = 0, deletes: int = 0,
                   removals: int = 0, topic: str | None = None, window: Window | None = None,
                   seed: int = 0) -> dict[str, list[str]]:
    """Inserts, edits, deletes and topic removals the way the product writes them (event + outbox in one
    transaction each); edits/deletes/removals pick live posts (of `topic`, created in `window`, when given).
    Returns the event ids per kind."""
    rng = random.Random(f"{tag}:{seed}")
    topics = [topic] if topic else contract.topic_ids(conn)
    done: dict[str, list[str]] = {"insert": [], "edit": [], "delete": [], "removal": []}
    for i in range(inserts):
        event_id = hashlib.sha256(f"drill:{tag}:{i}".encode()).hexdigest()
        chosen = rng.sample(topics, min(len(topics), rng.choice((1, 1, 2))))
        created = conn.execute("SELECT created_at FROM cn_relay.events ORDER BY random() LIMIT 1").fetchone()[0]
        with conn.transaction():
            conn.execute("INSERT INTO cn_relay.events (event_id, pubkey, kind, content, created_at) "
                         "VALUES (%s, %s, 1, %s, %s)", (event_id, "d" * 64, f"ドリル {tag} {i} 新しい投稿", created))
            for t in chosen:
                conn.execute("INSERT INTO cn_relay.event_topics VALUES (%s, %s)", (event_id, t))
                conn.execute("INSERT INTO cn_relay.events_outbox (op, event_id, topic_id, reason) "
                             "VALUES ('upsert', %s, %s, 'created')", (event_id, t))
        done["insert"].append(event_id)
    live = [r[0] for r in conn.execute(
        "SELECT DISTINCT e.event_id FROM cn_relay.events e JOIN cn_relay.event_topics et USING (event_id) "
        "WHERE NOT e.is_deleted AND et.topic_id = ANY(%s) AND e.created_at >= %s AND e.created_at < %s ORDER BY 1",
        (topics, window.start if window else 0, window.end if window else 2**62))]
    rng.shuffle(live)
    for event_id in live[:edits]:
        with conn.transaction():
            conn.execute("UPDATE cn_relay.events SET content = content || %s WHERE event_id = %s",
                         (f" 編集 {tag}", event_id))
            conn.execute("INSERT INTO cn_relay.events_outbox (op, event_id, topic_id, reason) "
                         "SELECT 'upsert', event_id, topic_id, 'edited' FROM cn_relay.event_topics "
                         "WHERE event_id = %s", (event_id,))
        done["edit"].append(event_id)
    for event_id in live[edits:edits + deletes]:
        with conn.transaction():
            conn.execute("UPDATE cn_relay.events SET is_deleted = true WHERE event_id = %s", (event_id,))
            conn.execute("INSERT INTO cn_relay.events_outbox (op, event_id, topic_id, reason) "
                         "SELECT 'delete', event_id, topic_id, 'deleted' FROM cn_relay.event_topics "
                         "WHERE event_id = %s", (event_id,))
        done["delete"].append(event_id)
    for event_id in live[edits + deletes:edits + deletes + removals]:
        with conn.transaction():
            t = conn.execute("DELETE FROM cn_relay.event_topics WHERE ctid = (SELECT ctid FROM cn_relay.event_topics "
                             "WHERE event_id = %s AND topic_id = ANY(%s) LIMIT 1) RETURNING topic_id",
                             (event_id, topics)).fetchone()[0]
            conn.execute("INSERT INTO cn_relay.events_outbox (op, event_id, topic_id, reason) "
                         "VALUES ('delete', %s, %s, 'topic_removed')", (event_id, t))
        done["removal"].append(event_id)
    return done
