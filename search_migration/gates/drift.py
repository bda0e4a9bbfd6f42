"""Do both engines hold what the source says is searchable? Per topic index: counts, sampled ids, content.

The referee is the source: the product's own definition of searchable over cn_relay
(source.contract.SEARCHABLE). Each engine is compared with it, not only with the other, so a row both
engines lost is drift too. Per topic index (uid `topic_<sanitized topic id>`):

- counts, exact: searchable (post, topic) rows of the source, live PostgreSQL documents, documents in
  the topic's Meilisearch index (a missing index holds 0);
- ids and content on a bounded, deterministic sample drawn from all three sides (the source's and
  PostgreSQL's by hash order, a window of the Meilisearch index), each sampled id looked up on every
  side: missing from an engine, extra in an engine (present though the source says not searchable),
  and content differing from the source's (sha256 of `content`, the one text field both engines hold).

Not drift, reported as their own findings:
- uid collisions: distinct topics whose ids sanitize to one uid share one index in the product
  (legacy_documents.uid_collisions). Such a group is compared as one unit, on distinct event ids.
- the product indexer's known defect (PRODUCT.md): an older replaceable/addressable version stays in a
  topic its newer version left. Such documents, left by `index-v1` before the handover, are listed as
  `legacy_defects` and not counted as drift (PostgreSQL correctly lacks them).

Pairs with outbox rows beyond the consumer offset are in flight, not drift, and are left out of every
side; so are events whose expiry is less than EXPIRY_GRACE_S away either side of the report's clock: one
that passed may not have been swept yet (the sweep runs periodically), and one that passes while the
report reads can be swept from Meilisearch (read live) but not from the snapshot. Only indexes of topics
the source or PostgreSQL knows are examined.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import meilisearch
import psycopg
from meilisearch.errors import MeilisearchApiError

from search_migration.source import contract
from search_migration.write_path import legacy_documents

MAX_PENDING = 10_000  # beyond this backlog, drift cannot be told from lag: the report says so
EXPIRY_GRACE_S = 120  # an expiry this close to the report's clock is in flight, not drift
LOOKUP_CHUNK = 500

SOURCE_COUNTS_SQL = contract.LIVE_COUNTS_SQL
SOURCE_GROUP_COUNT_SQL = f"""
SELECT count(DISTINCT e.event_id) FROM cn_relay.event_topics et JOIN cn_relay.events e ON e.event_id = et.event_id
WHERE et.topic_id = ANY(%(topics)s) AND {contract.SEARCHABLE}
"""
SOURCE_SAMPLE_SQL = f"""
SELECT event_id FROM (
    SELECT DISTINCT e.event_id FROM cn_relay.event_topics et JOIN cn_relay.events e ON e.event_id = et.event_id
    WHERE et.topic_id = ANY(%(topics)s) AND {contract.SEARCHABLE}) AS s
ORDER BY md5(event_id || %(salt)s) LIMIT %(n)s
"""
SOURCE_LOOKUP_SQL = f"""
SELECT DISTINCT e.event_id, e.content FROM cn_relay.event_topics et JOIN cn_relay.events e ON e.event_id = et.event_id
WHERE et.topic_id = ANY(%(topics)s) AND e.event_id = ANY(%(ids)s) AND {contract.SEARCHABLE}
"""
# The product's defect signature: not current, otherwise searchable, keyed, and no other version of the
# key in the same topic at least as new (whose upsert there would have removed it).
LEGACY_DEFECT_SQL = """
WITH keyed AS MATERIALIZED (
    SELECT et.topic_id, e.event_id, e.created_at, coalesce(e.replaceable_key, e.addressable_key) AS key,
           e.is_current, e.is_deleted, e.is_ephemeral, e.expires_at
    FROM cn_relay.event_topics et JOIN cn_relay.events e ON e.event_id = et.event_id
    WHERE et.topic_id = ANY(%(topics)s) AND coalesce(e.replaceable_key, e.addressable_key) IS NOT NULL)
SELECT DISTINCT s.event_id FROM keyed s
WHERE NOT s.is_current AND NOT s.is_deleted AND NOT s.is_ephemeral
  AND (s.expires_at IS NULL OR s.expires_at > %(now)s)
  AND NOT EXISTS (SELECT 1 FROM keyed n WHERE n.topic_id = s.topic_id AND n.key = s.key
                  AND n.event_id <> s.event_id AND n.created_at >= s.created_at)
"""
EXPIRING_SQL = """
SELECT et.event_id, et.topic_id FROM cn_relay.events e JOIN cn_relay.event_topics et ON et.event_id = e.event_id
WHERE e.expires_at > %(since)s AND e.expires_at <= %(until)s
"""
PG_COUNTS_SQL = """
SELECT topic_id, count(*) FROM cn_search.post_search_documents WHERE NOT is_deleted GROUP BY topic_id
"""
PG_GROUP_COUNT_SQL = """
SELECT count(DISTINCT post_id) FROM cn_search.post_search_documents WHERE topic_id = ANY(%(topics)s) AND NOT is_deleted
"""
PG_SAMPLE_SQL = """
SELECT post_id FROM (
    SELECT DISTINCT post_id FROM cn_search.post_search_documents WHERE topic_id = ANY(%(topics)s) AND NOT is_deleted
) AS s
ORDER BY md5(post_id || %(salt)s) LIMIT %(n)s
"""
PG_LOOKUP_SQL = """
SELECT DISTINCT ON (post_id) post_id, content FROM cn_search.post_search_documents
WHERE topic_id = ANY(%(topics)s) AND NOT is_deleted AND post_id = ANY(%(ids)s)
ORDER BY post_id, topic_id
"""
# Rows the consumer has not applied yet, and the older versions an in-flight upsert will remove (from
# every topic they are in): both engines may legitimately disagree with the source on them for now.
PENDING_SQL = """
WITH p AS (SELECT event_id, topic_id, effective_key FROM cn_relay.events_outbox WHERE seq > %s LIMIT %s)
SELECT event_id, topic_id FROM p
UNION
SELECT et.event_id, et.topic_id FROM (SELECT DISTINCT effective_key FROM p WHERE effective_key IS NOT NULL) k
JOIN cn_relay.events e ON e.replaceable_key = k.effective_key OR e.addressable_key = k.effective_key
JOIN cn_relay.event_topics et ON et.event_id = e.event_id
"""


@dataclass
class TopicDrift:
    """One topic index: `topic_id` names its topic (the topics joined by ` | ` for a uid collision)."""

    topic_id: str
    pg_documents: int
    meili_documents: int
    source_documents: int = 0
    uid: str = ""
    topics: list[str] = field(default_factory=list)
    sampled: int = 0
    missing_in_pg: list[str] = field(default_factory=list)  # searchable in the source, not in PostgreSQL
    missing_in_meili: list[str] = field(default_factory=list)  # searchable in the source, not in Meilisearch
    extra_in_pg: list[str] = field(default_factory=list)  # live in PostgreSQL, not searchable in the source
    extra_in_meili: list[str] = field(default_factory=list)  # in Meilisearch, not searchable in the source
    content_mismatch: list[str] = field(default_factory=list)  # an engine's content differs from the source's
    legacy_defects: list[str] = field(default_factory=list)  # the product indexer's stale versions: not drift

    @property
    def collision(self) -> bool:
        return len(self.topics) > 1

    @property
    def drift(self) -> int:
        meili_expected = self.meili_documents - len(self.legacy_defects)
        return (abs(self.pg_documents - self.source_documents) + abs(meili_expected - self.source_documents)
                + len(self.missing_in_pg) + len(self.missing_in_meili) + len(self.extra_in_pg)
                + len(self.extra_in_meili) + len(self.content_mismatch))


@dataclass
class DriftReport:
    consumer_offset: int
    pending_excluded: int
    backlog_too_large: bool
    topics: list[TopicDrift]
    collisions: dict[str, list[str]] = field(default_factory=dict)  # uid -> its topics (not drift)
    now: int = 0

    @property
    def drift(self) -> int:
        return sum(t.drift for t in self.topics)

    @property
    def drifting_topics(self) -> list[TopicDrift]:
        return [t for t in self.topics if t.drift]

    @property
    def legacy_defects(self) -> int:
        return sum(len(t.legacy_defects) for t in self.topics)

    def as_dict(self) -> dict:
        return {**asdict(self), "drift": self.drift, "legacy_defects": self.legacy_defects}


def _digest(text: str | None) -> str:
    return hashlib.sha256((text or "").encode()).hexdigest()


def _chunks(ids: list[str]):
    for start in range(0, len(ids), LOOKUP_CHUNK):
        yield ids[start:start + LOOKUP_CHUNK]


def meili_lookup(meili: meilisearch.Client, uid: str, ids: list[str]) -> dict[str, dict]:
    """event_id -> document (event_id, topic_id, content) for those of `ids` the index holds.

    Looked up by primary key: the product's indexes filter on neither event_id nor topic_id. One
    `documents/fetch` with `ids` per chunk (Meilisearch >= 1.14), else one GET per id (older, like the
    product's pinned 1.5)."""
    found: dict[str, dict] = {}
    if not ids:
        return found
    index = meili.index(uid)
    fields = ["event_id", "topic_id", "content"]
    for chunk in _chunks(sorted(set(ids))):
        try:
            docs = index.get_documents({"ids": chunk, "fields": fields, "limit": len(chunk)}).results
            found.update({d.event_id: dict(d) for d in docs})
            continue
        except MeilisearchApiError as exc:
            if exc.code == "index_not_found":
                return {}
            if exc.code not in ("bad_request", "invalid_document_fields", "bad_request_body") \
                    and not str(exc.code).startswith("invalid_"):
                raise
        for event_id in chunk:  # a Meilisearch without `ids`
            try:
                found[event_id] = dict(index.get_document(event_id, {"fields": fields}))
            except MeilisearchApiError as exc:
                if exc.code == "index_not_found":
                    return {}
                if exc.code != "document_not_found":
                    raise
    return found


def meili_window(meili: meilisearch.Client, uid: str, n: int, start: int) -> list[str]:
    """Event ids of `n` documents from position `start` of the index (none when it does not exist)."""
    if n <= 0:
        return []
    try:
        return [d.event_id for d in meili.index(uid).get_documents(
            {"fields": ["event_id"], "limit": n, "offset": start}).results]
    except MeilisearchApiError as exc:
        if exc.code == "index_not_found":
            return []
        raise


def meili_counts(meili: meilisearch.Client) -> dict[str, int]:
    """Documents per `topic_*` index, from one `GET /stats`."""
    stats = meili.get_all_stats()["indexes"]
    return {uid: s["numberOfDocuments"] for uid, s in stats.items() if uid.startswith("topic_")}


def _in_flight(conn: psycopg.Connection, offset: int, now: int) -> tuple[dict[str, set[str]], int, bool]:
    pending_rows = conn.execute(PENDING_SQL, (offset, MAX_PENDING + 1)).fetchall()
    by_topic: dict[str, set[str]] = defaultdict(set)
    for event_id, topic_id in pending_rows:
        by_topic[topic_id].add(event_id)
    pending = sum(len(v) for v in by_topic.values())
    window = {"since": now - EXPIRY_GRACE_S, "until": now + EXPIRY_GRACE_S}
    for event_id, topic_id in conn.execute(EXPIRING_SQL, window):
        by_topic[topic_id].add(event_id)
    return by_topic, pending, len(pending_rows) > MAX_PENDING


SETTLE_ATTEMPTS = 5
FINISHED = {"statuses": ["succeeded", "failed", "canceled"], "limit": 1}


def _settled_counts(fresh: psycopg.Connection, meili: meilisearch.Client, offset: int, now: int
                    ) -> tuple[dict[str, int], dict[str, set[str]], dict[str, set[str]]]:
    """Meilisearch's documents per index, the rows in flight, and which in-flight documents it held
    when it counted them.

    Every row committed past the snapshot's offset by the time Meilisearch was counted is in flight (read
    after the counts); the tail applies them while the report reads, so the counts and the lookups of
    those documents are kept only when Meilisearch finished no task between them (its count of finished
    tasks, read before and after): a delete landing between the counts and a later lookup would otherwise
    leave one document too many."""
    for _ in range(SETTLE_ATTEMPTS):
        finished = meili.get_tasks(FINISHED).total
        counts = meili_counts(meili)
        flight, _, too_large = _in_flight(fresh, offset, now)
        by_uid: dict[str, set[str]] = defaultdict(set)
        for topic, ids in flight.items():
            by_uid[legacy_documents.index_uid(topic)] |= ids
        held = {} if too_large else {
            uid: set(meili_lookup(meili, uid, sorted(ids))) for uid, ids in by_uid.items()}
        if meili.get_tasks(FINISHED).total == finished:
            return counts, flight, held
    raise RuntimeError(f"Meilisearch finished a task every time it was counted ({SETTLE_ATTEMPTS} attempts)")


def report(conn: psycopg.Connection, meili: meilisearch.Client, *, sample_per_topic: int = 200,
           salt: str = "drift", now: int | None = None) -> DriftReport:
    """The source and PostgreSQL are read in one snapshot; Meilisearch, read meanwhile, may already
    hold rows committed after it: every row past the snapshot's offset (read on a second connection) is
    in flight, and left out of every side (_settled_counts)."""
    now = contract.now_unix() if now is None else now
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise ValueError("drift.report takes its own snapshot: call it outside a transaction")
    with psycopg.connect(**conn.info.get_parameters(), password=conn.info.password, autocommit=True) as fresh, \
            conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return _report(conn, fresh, meili, sample_per_topic, salt, now)


def _report(conn: psycopg.Connection, fresh: psycopg.Connection, meili: meilisearch.Client, sample_per_topic: int,
            salt: str, now: int) -> DriftReport:
    offset = contract.consumer_offset(conn, contract.CONSUMER)
    _, pending, too_large = _in_flight(conn, offset, now)
    source_counts = contract.live_rows_per_topic(conn, now)
    pg_counts = dict(conn.execute(PG_COUNTS_SQL).fetchall())
    known = set(contract.topic_ids(conn)) | set(source_counts) | set(pg_counts)
    collisions = legacy_documents.uid_collisions(known)
    groups: dict[str, list[str]] = defaultdict(list)
    for topic in sorted(known):
        groups[legacy_documents.index_uid(topic)].append(topic)
    index_counts, flight, held = _settled_counts(fresh, meili, offset, now)
    topics = []
    for uid, members in sorted(groups.items(), key=lambda kv: kv[1][0]):
        params = {"topics": members, "salt": salt, "n": sample_per_topic, "now": now}
        if len(members) == 1:
            source_n, pg_n = source_counts.get(members[0], 0), pg_counts.get(members[0], 0)
        else:  # one index for several topics: distinct events, as the index holds them
            source_n = conn.execute(SOURCE_GROUP_COUNT_SQL, params).fetchone()[0]
            pg_n = conn.execute(PG_GROUP_COUNT_SQL, params).fetchone()[0]
        t = TopicDrift(" | ".join(members), pg_n, index_counts.get(uid, 0), source_n, uid, list(members))

        in_flight = set().union(*(flight.get(m, set()) for m in members))
        if in_flight:  # remove in-flight documents from every count: the snapshot's, and Meilisearch's
            q = {**params, "ids": sorted(in_flight)}
            t.source_documents -= len(conn.execute(SOURCE_LOOKUP_SQL, q).fetchall())
            t.pg_documents -= len(conn.execute(PG_LOOKUP_SQL, q).fetchall())
            t.meili_documents -= len(held.get(uid, set()))
        # the product indexer's stale versions that Meilisearch still holds
        candidates = [r[0] for r in conn.execute(LEGACY_DEFECT_SQL, params)]
        defects = set(meili_lookup(meili, uid, candidates)) - in_flight
        t.legacy_defects = sorted(defects)
        # a sample from each side, looked up on every side
        window = max(0, index_counts.get(uid, 0) - sample_per_topic)
        start = int(hashlib.sha256(f"{salt}:{uid}".encode()).hexdigest(), 16) % (window + 1)
        sample = {r[0] for r in conn.execute(SOURCE_SAMPLE_SQL, params)}
        sample |= {r[0] for r in conn.execute(PG_SAMPLE_SQL, params)}
        sample |= set(meili_window(meili, uid, sample_per_topic, start))
        sample -= in_flight
        if sample:
            q = {**params, "ids": sorted(sample)}
            src = dict(conn.execute(SOURCE_LOOKUP_SQL, q).fetchall())
            pg = dict(conn.execute(PG_LOOKUP_SQL, q).fetchall())
            ml = meili_lookup(meili, uid, sorted(sample))
            t.missing_in_pg = sorted(set(src) - set(pg))
            t.missing_in_meili = sorted(set(src) - set(ml))
            t.extra_in_pg = sorted(set(pg) - set(src))
            t.extra_in_meili = sorted(set(ml) - set(src) - defects)
            t.content_mismatch = sorted(
                e for e in src if (e in pg and _digest(pg[e]) != _digest(src[e]))
                or (e in ml and _digest(ml[e].get("content")) != _digest(src[e])))
        t.sampled = len(sample)
        topics.append((t, in_flight))
    # committed after Meilisearch was counted: its later lookups may reflect them already (findings only)
    late_by_topic, _, _ = _in_flight(fresh, offset, now)
    for t, in_flight in topics:
        late = set().union(*(late_by_topic.get(m, set()) for m in t.topics)) - in_flight
        for name in ("missing_in_pg", "missing_in_meili", "extra_in_pg", "extra_in_meili", "content_mismatch"):
            setattr(t, name, [e for e in getattr(t, name) if e not in late])
    return DriftReport(offset, pending, too_large, [t for t, _ in topics], collisions, now)
