"""The migration's invariant, checked exhaustively (not sampled) after a drill or before a cutover.

Once the consumer has caught up to `upto`: every (post, topic) the product holds searchable (the
product's own rule: current, not deleted, not ephemeral, not expired, still in the topic) is live in
PostgreSQL exactly once, at the version of its newest outbox row (0 when retention pruned its history),
with the source's content; nothing else is live; and, when asked, each topic's Meilisearch index holds
exactly the topic's searchable set. A pair whose newest row sits in an open dead letter is quarantined
(accounted for, replayable), not lost.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import meilisearch
import psycopg

from search_migration.source import contract
from search_migration.write_path import meili_index

# One row per (post, topic) the source holds, the outbox names or PostgreSQL has, both sides side by side.
PAIRS_SQL = f"""
WITH latest AS (
    SELECT event_id, topic_id, max(seq) AS seq
    FROM cn_relay.events_outbox
    WHERE op IN ('upsert', 'delete') AND seq <= %(upto)s
    GROUP BY event_id, topic_id
), pairs AS (
    SELECT event_id, topic_id FROM latest
    UNION SELECT event_id, topic_id FROM cn_relay.event_topics
), expected AS (
    SELECT p.event_id, p.topic_id, coalesce(l.seq, 0) AS seq,
           coalesce(et.event_id IS NOT NULL AND {contract.SEARCHABLE}, false) AS live,
           CASE WHEN e.is_deleted THEN NULL ELSE md5(e.content) END AS content_md5
    FROM pairs p
    LEFT JOIN latest l ON l.event_id = p.event_id AND l.topic_id = p.topic_id
    LEFT JOIN cn_relay.events e ON e.event_id = p.event_id
    LEFT JOIN cn_relay.event_topics et ON et.event_id = p.event_id AND et.topic_id = p.topic_id
)
SELECT x.event_id, x.topic_id, x.seq, coalesce(x.live, false), x.content_md5,
       d.post_id IS NOT NULL, d.source_seq, d.is_deleted, md5(d.content),
       EXISTS (SELECT 1 FROM cn_search.dead_letters dl
               WHERE dl.seq = x.seq AND dl.backend IN ('pg', 'source') AND dl.resolved_at IS NULL),
       EXISTS (SELECT 1 FROM cn_search.dead_letters dl
               WHERE dl.seq = x.seq AND dl.backend IN ('meili', 'source') AND dl.resolved_at IS NULL)
FROM expected x
FULL JOIN cn_search.post_search_documents d ON d.post_id = x.event_id AND d.topic_id = x.topic_id
"""


@dataclass
class Invariant:
    upto: int
    checked: int = 0                 # (post, topic) pairs the source or the outbox names
    live: int = 0                    # of which searchable in the source
    lost: int = 0                    # live in the source, not live in PostgreSQL
    duplicated: int = 0              # more than one document for a pair (either engine)
    resurrected: int = 0             # live in PostgreSQL although deleted or removed in the source
    wrong_version: int = 0           # PostgreSQL's version or content differs from the newest outbox row
    unexplained: int = 0             # a live PostgreSQL document for a pair the source never held
    quarantined: int = 0             # newest row in an open dead letter: accounted for, not lost
    meili_checked: bool = False
    meili_missing: int = 0
    meili_extra: int = 0             # includes resurrected documents in Meilisearch
    meili_wrong_content: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)  # problem -> a few "post_id/topic" keys

    @property
    def violations(self) -> int:
        return (self.lost + self.duplicated + self.resurrected + self.wrong_version + self.unexplained
                + self.meili_missing + self.meili_extra + self.meili_wrong_content)

    @property
    def ok(self) -> bool:
        return self.violations == 0

    def as_dict(self) -> dict:
        return {**asdict(self), "violations": self.violations, "ok": self.ok}

    def _bad(self, problem: str, post_id: str, topic_id: str) -> None:
        setattr(self, problem, getattr(self, problem) + 1)
        sample = self.examples.setdefault(problem, [])
        if len(sample) < 5:
            sample.append(f"{post_id}/{topic_id}")


def _md5(text: str | None) -> str | None:
    return None if text is None else hashlib.md5(text.encode()).hexdigest()


def meili_documents(meili: meilisearch.Client, uid: str, page: int = 10_000) -> list[dict]:
    """Every document of one topic index (event_id, topic_id, content), paged; none when it is missing."""
    index, docs, offset = meili.index(uid), [], 0
    while True:
        try:
            batch = index.get_documents({"fields": ["event_id", "topic_id", "content"], "limit": page,
                                         "offset": offset}).results
        except meilisearch.errors.MeilisearchApiError as exc:
            if exc.code == "index_not_found":
                return docs
            raise
        docs.extend(dict(d) for d in batch)
        if len(batch) < page:
            return docs
        offset += page


def check(conn: psycopg.Connection, upto: int, meili: meilisearch.Client | None = None,
          now: int | None = None) -> Invariant:
    """Compare both engines with the source at `upto` (the outbox seq every engine has applied)."""
    now = int(time.time()) if now is None else now
    inv = Invariant(upto)
    expected_live: dict[tuple[str, str], str | None] = {}
    meili_quarantine: set[tuple[str, str]] = set()
    topics: set[str] = set()
    for (post, topic, seq, live, src_md5, has_doc, doc_seq, doc_deleted, doc_md5,
         pg_dead, meili_dead) in conn.execute(PAIRS_SQL, {"upto": upto, "now": now}):
        if seq is None:  # a document for a pair the source never held
            if has_doc and not doc_deleted:
                inv._bad("unexplained", post, topic)
            continue
        topics.add(topic)
        inv.checked += 1
        inv.live += live
        if meili_dead:
            meili_quarantine.add((post, topic))
        if live:
            expected_live[(post, topic)] = src_md5
        if pg_dead:
            inv.quarantined += 1
            continue
        if live and (not has_doc or doc_deleted):
            inv._bad("lost", post, topic)
        elif not live and has_doc and not doc_deleted:
            inv._bad("resurrected", post, topic)
        elif live and (doc_seq != seq or doc_md5 != src_md5):
            inv._bad("wrong_version", post, topic)
    if meili is not None:
        inv.meili_checked = True
        docs = [d for uid in sorted({meili_index.index_uid(t) for t in topics}) for d in meili_documents(meili, uid)]
        counts = Counter((d["event_id"], d["topic_id"]) for d in docs)
        for (post, topic), n in counts.items():
            if n > 1:
                inv._bad("duplicated", post, topic)
        for d in docs:
            key = (d["event_id"], d["topic_id"])
            if key in meili_quarantine:
                continue
            if key not in expected_live:
                inv._bad("meili_extra", *key)
            elif _md5(d.get("content")) != expected_live[key]:
                inv._bad("meili_wrong_content", *key)
        for key in expected_live.keys() - counts.keys() - meili_quarantine:
            inv._bad("meili_missing", *key)
    return inv
