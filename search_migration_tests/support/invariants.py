"""The migration's invariant, checked exhaustively (not sampled) after a drill or before a cutover.

Once the consumer has caught up to `upto`: every (post, topic) the outbox names is in PostgreSQL
exactly once, at the version of its newest outbox row, with the source's content when live; no
deleted or removed post is live; and, when asked, Meilisearch holds exactly the live set. A pair
whose newest row sits in an open dead letter is quarantined (accounted for, replayable), not lost.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass, field

import meilisearch
import psycopg

# One row per (post, topic) the outbox names up to `upto`, both sides side by side.
PAIRS_SQL = """
WITH latest AS (
    SELECT event_id, topic_id, max(seq) AS seq
    FROM cn_relay.events_outbox
    WHERE op IN ('upsert', 'delete') AND seq <= %(upto)s
    GROUP BY event_id, topic_id
), expected AS (
    SELECT l.event_id, l.topic_id, l.seq,
           (e.event_id IS NOT NULL AND NOT e.is_deleted AND et.event_id IS NOT NULL) AS live,
           CASE WHEN e.is_deleted THEN NULL ELSE md5(e.content) END AS content_md5
    FROM latest l
    LEFT JOIN cn_relay.events e ON e.event_id = l.event_id
    LEFT JOIN cn_relay.event_topics et ON et.event_id = l.event_id AND et.topic_id = l.topic_id
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
    checked: int = 0                 # (post, topic) pairs the outbox names
    live: int = 0                    # of which live in the source
    lost: int = 0                    # live in the source, not live in PostgreSQL
    duplicated: int = 0              # more than one document for a pair (either engine)
    resurrected: int = 0             # live in PostgreSQL although deleted or removed in the source
    wrong_version: int = 0           # PostgreSQL's version or content differs from the newest outbox row
    unexplained: int = 0             # a PostgreSQL document for a pair the outbox never named
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


def meili_documents(meili: meilisearch.Client, index_uid: str, page: int = 10_000) -> list[dict]:
    """Every document of the index (event_id, topic_id, content), paged."""
    index, docs, offset = meili.index(index_uid), [], 0
    while True:
        batch = index.get_documents({"fields": ["event_id", "topic_id", "content"], "limit": page,
                                     "offset": offset}).results
        docs.extend(dict(d) for d in batch)
        if len(batch) < page:
            return docs
        offset += page


def check(conn: psycopg.Connection, upto: int, meili: meilisearch.Client | None = None,
          index_uid: str | None = None) -> Invariant:
    """Compare both engines with the source at `upto` (the outbox seq every engine has applied)."""
    inv = Invariant(upto)
    expected_live: dict[tuple[str, str], str | None] = {}
    meili_quarantine: set[tuple[str, str]] = set()
    for (post, topic, seq, live, src_md5, has_doc, doc_seq, doc_deleted, doc_md5,
         pg_dead, meili_dead) in conn.execute(PAIRS_SQL, {"upto": upto}):
        if seq is None:  # a document the outbox never named
            if has_doc and not doc_deleted:
                inv._bad("unexplained", post, topic)
            continue
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
        elif has_doc and (doc_seq != seq or (live and doc_md5 != src_md5)):
            inv._bad("wrong_version", post, topic)
    if meili is not None:
        inv.meili_checked = True
        docs = meili_documents(meili, index_uid)
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
