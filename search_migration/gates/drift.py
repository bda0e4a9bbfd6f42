"""Do the two indexes hold the same documents? Per topic: counts, and sampled ids and content.

Counts are exact (one facet query, one GROUP BY). Ids and content are compared on a bounded,
deterministic sample drawn from both sides, so a document missing from either engine can be found
in large topics without reading them whole. Pairs with outbox rows beyond the consumer offset are
in flight, not drift, and are left out of both sides.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import meilisearch
import psycopg

from search_migration.write_path import meili_index
from search_migration.write_path.meili_index import filter_string as quote
from search_migration.source import contract

MAX_PENDING = 10_000  # beyond this backlog, drift cannot be told from lag: the report says so

PG_COUNTS_SQL = """
SELECT topic_id, count(*) FROM cn_search.post_search_documents WHERE NOT is_deleted GROUP BY topic_id
"""
PG_SAMPLE_SQL = """
SELECT post_id, content FROM cn_search.post_search_documents
WHERE topic_id = %s AND NOT is_deleted
ORDER BY md5(post_id || %s)
LIMIT %s
"""
PG_LOOKUP_SQL = """
SELECT post_id, content FROM cn_search.post_search_documents
WHERE topic_id = %s AND NOT is_deleted AND post_id = ANY(%s)
"""
PENDING_SQL = """
SELECT DISTINCT event_id, topic_id FROM cn_relay.events_outbox WHERE seq > %s LIMIT %s
"""


@dataclass
class TopicDrift:
    topic_id: str
    pg_documents: int
    meili_documents: int
    sampled: int = 0
    missing_in_pg: list[str] = field(default_factory=list)
    missing_in_meili: list[str] = field(default_factory=list)
    content_mismatch: list[str] = field(default_factory=list)

    @property
    def drift(self) -> int:
        return (abs(self.pg_documents - self.meili_documents) + len(self.missing_in_pg)
                + len(self.missing_in_meili) + len(self.content_mismatch))


@dataclass
class DriftReport:
    consumer_offset: int
    pending_excluded: int
    backlog_too_large: bool
    topics: list[TopicDrift]

    @property
    def drift(self) -> int:
        return sum(t.drift for t in self.topics)

    @property
    def drifting_topics(self) -> list[TopicDrift]:
        return [t for t in self.topics if t.drift]

    def as_dict(self) -> dict:
        return {**asdict(self), "drift": self.drift}


def _meili_docs(index, filter_: str, limit: int, offset: int = 0) -> list[dict]:
    result = index.get_documents({"filter": filter_, "fields": ["event_id", "content"], "limit": limit,
                                  "offset": offset})
    return [dict(d) for d in result.results]


def _digest(text: str | None) -> str:
    return hashlib.sha256((text or "").encode()).hexdigest()


def report(conn: psycopg.Connection, meili: meilisearch.Client, index_uid: str, *,
           sample_per_topic: int = 200, salt: str = "drift") -> DriftReport:
    offset = contract.consumer_offset(conn, contract.CONSUMER)
    pending_rows = conn.execute(PENDING_SQL, (offset, MAX_PENDING + 1)).fetchall()
    too_large = len(pending_rows) > MAX_PENDING
    pending: dict[str, set[str]] = {}
    for event_id, topic_id in pending_rows:
        pending.setdefault(topic_id, set()).add(event_id)
    pg_counts = dict(conn.execute(PG_COUNTS_SQL).fetchall())
    meili_counts = meili_index.counts_per_topic(meili, index_uid)
    index = meili.index(index_uid)
    topics = []
    for topic in sorted(set(pg_counts) | set(meili_counts)):
        in_flight = pending.get(topic, set())
        t = TopicDrift(topic, pg_counts.get(topic, 0), meili_counts.get(topic, 0))
        if in_flight:  # remove in-flight documents from both counts
            ids = sorted(in_flight)
            t.pg_documents -= len(conn.execute(PG_LOOKUP_SQL, (topic, ids)).fetchall())
            t.meili_documents -= len(_meili_docs(
                index, f"topic_id = {quote(topic)} AND event_id IN [{', '.join(map(quote, ids))}]", len(ids)))
        # PostgreSQL's sample, looked up in Meilisearch
        pg_sample = {p: c for p, c in conn.execute(PG_SAMPLE_SQL, (topic, salt, sample_per_topic))
                     if p not in in_flight}
        if pg_sample:
            found = {d["event_id"]: d.get("content") for d in _meili_docs(
                index, f"topic_id = {quote(topic)} AND event_id IN [{', '.join(map(quote, pg_sample))}]",
                len(pg_sample))}
            t.missing_in_meili = sorted(set(pg_sample) - set(found))
            t.content_mismatch = sorted(p for p in set(pg_sample) & set(found)
                                        if _digest(pg_sample[p]) != _digest(found[p]))
        # Meilisearch's sample (a deterministic window), looked up in PostgreSQL
        window = max(0, meili_counts.get(topic, 0) - sample_per_topic)
        start = int(hashlib.sha256(f"{salt}:{topic}".encode()).hexdigest(), 16) % (window + 1)
        meili_sample = {d["event_id"]: d.get("content") for d in _meili_docs(
            index, f"topic_id = {quote(topic)}", sample_per_topic, start) if d["event_id"] not in in_flight}
        if meili_sample:
            found_pg = dict(conn.execute(PG_LOOKUP_SQL, (topic, list(meili_sample))).fetchall())
            t.missing_in_pg = sorted(set(meili_sample) - set(found_pg))
            t.content_mismatch = sorted(set(t.content_mismatch) | {
                p for p in set(meili_sample) & set(found_pg) if _digest(meili_sample[p]) != _digest(found_pg[p])})
        t.sampled = len(pg_sample) + len(meili_sample)
        topics.append(t)
    return DriftReport(offset, sum(len(v) for v in pending.values()), too_large, topics)
