"""The one writer of `cn_search.post_search_documents`, shared by catch-up, backfill and replay.

Every write carries the outbox sequence it reflects and lands only if it is newer than what the
row holds, so replays, retries and a concurrent backfill can never regress a document or resurrect
a tombstone. Applying the same writes twice leaves identical state.
"""

from __future__ import annotations

import weakref
from collections import Counter
from typing import NamedTuple

import psycopg

from search_migration.search import milli
from search_migration.search.text import NORMALIZER_VERSION, normalize
from search_migration.write_path import legacy_documents


# A post larger than this is dead-lettered (`content_too_large`) by catch-up and backfill alike, for both
# engines: relays cap events near 64 KiB, and a tsvector (up to ~4 bytes of lexemes per byte of CJK
# text) must stay under PostgreSQL's 1 MB.
MAX_CONTENT_BYTES = 65_536


class DocWrite(NamedTuple):  # a tuple: built once per document, a frozen dataclass cost 3x more
    seq: int
    post_id: str
    topic_id: str
    deleted: bool
    content: str = ""
    created_at: int = 0
    visibility: str = "public"
    kind: int | None = None
    expires_at: int | None = None  # the expiry sweep tombstones the document once it passes
    delete_reason: str | None = None  # a tombstone's why: the outbox reason (nip09, dsar, expiration), or ours
    # The product's other searchable attributes (legacy_documents.document): None derives them as cn-index
    # does for a post without `title`/`subject` tags (the content's first line) in this topic alone.
    title: str | None = None
    author: str = ""
    tags: tuple[str, ...] | None = None

    def attributes(self) -> list:
        """title, summary, content, author, tags: Meilisearch's searchableAttributes, in its order."""
        title = self.title if self.title is not None else legacy_documents.title({"content": self.content, "tags": []})
        tags = list(self.tags) if self.tags is not None else [self.topic_id]
        return [title, legacy_documents.summary(self.content), self.content, self.author, tags]


UPSERT_SQL = """
INSERT INTO cn_search.post_search_documents AS d
    (post_id, topic_id, content, normalized_text, search_tokens, created_at, visibility,
     source_seq, is_deleted, normalizer_version, kind, expires_at, delete_reason, lead_word, updated_at)
SELECT w.post_id, w.topic_id, w.content, w.normalized_text, w.search_tokens::tsvector, w.created_at,
       w.visibility, w.source_seq, w.is_deleted, w.normalizer_version, w.kind, w.expires_at, w.delete_reason,
       w.lead_word, now()
FROM unnest(%(post_id)s::text[], %(topic_id)s::text[], %(content)s::text[], %(normalized)s::text[],
            %(tokens)s::text[], %(created_at)s::bigint[], %(visibility)s::text[], %(seq)s::bigint[],
            %(deleted)s::boolean[], %(version)s::integer[], %(kind)s::integer[], %(expires_at)s::bigint[],
            %(delete_reason)s::text[], %(lead_word)s::text[])
     AS w(post_id, topic_id, content, normalized_text, search_tokens, created_at, visibility,
          source_seq, is_deleted, normalizer_version, kind, expires_at, delete_reason, lead_word)
ON CONFLICT (post_id, topic_id) DO UPDATE SET
    content = EXCLUDED.content,
    normalized_text = EXCLUDED.normalized_text,
    search_tokens = EXCLUDED.search_tokens,
    created_at = CASE WHEN EXCLUDED.is_deleted THEN d.created_at ELSE EXCLUDED.created_at END,
    visibility = EXCLUDED.visibility,
    source_seq = EXCLUDED.source_seq,
    is_deleted = EXCLUDED.is_deleted,
    normalizer_version = EXCLUDED.normalizer_version,
    kind = coalesce(EXCLUDED.kind, d.kind),
    expires_at = EXCLUDED.expires_at,
    delete_reason = EXCLUDED.delete_reason,
    lead_word = EXCLUDED.lead_word,
    updated_at = now()
WHERE d.source_seq < EXCLUDED.source_seq
   -- the same version under a newer normalizer: a rebuild after a normalizer change refreshes it
   OR (d.source_seq = EXCLUDED.source_seq AND d.normalizer_version < EXCLUDED.normalizer_version)
"""


INDEX_FORMAT = 3  # what a document row indexes (bench/parity.py reindexes when it changes)


def doc_write_for_event(seq: int, raw: dict, topic_id: str, *, post_id: str | None = None,
                        expires_at: int | None = None) -> DocWrite:
    """The document write for one signed event in one topic (what catch-up and the backfill write for a
    searchable event), with the attributes cn-index gives Meilisearch: title from the `title`/`subject`
    tags or the content's first line, author, the distinct `t` tags. `raw` needs `content`, `pubkey`,
    `tags`, `created_at`, `kind` (and `id` unless `post_id` is given)."""
    return DocWrite(seq, post_id if post_id is not None else raw["id"], topic_id, False, raw["content"],
                    raw["created_at"], kind=raw["kind"], expires_at=expires_at,
                    title=legacy_documents.title(raw), author=raw.get("pubkey") or "",
                    tags=tuple(legacy_documents.tags(raw)))


def latest_per_document(writes: list[DocWrite]) -> list[DocWrite]:
    """One write per (post, topic), the newest: a statement may touch each row only once."""
    newest: dict[tuple[str, str], DocWrite] = {}
    for w in writes:
        key = (w.post_id, w.topic_id)
        if key not in newest or newest[key].seq < w.seq:
            newest[key] = w
    return sorted(newest.values(), key=lambda w: w.seq)


_COLUMNS = ("post_id", "topic_id", "content", "normalized", "tokens", "created_at", "visibility", "seq", "deleted",
            "version", "kind", "expires_at", "delete_reason", "lead_word")


def rows(writes: list[DocWrite], vocabulary: set[str] | None = None) -> list[tuple]:
    """One row per write in `_COLUMNS` order; tombstones carry no text (a deleted post's words are gone).
    Every indexed word is added to `vocabulary` when one is given."""
    out = []
    for w in writes:
        text = "" if w.deleted else w.content
        normalized = normalize(text)
        lead = None
        if w.deleted:
            tokens = ""
        else:
            found = milli.document_words(w.attributes())
            if vocabulary is not None:
                vocabulary.update(found)
            tokens = milli.tsvector_literal(found)
            if found:  # the title's first word (suggest's targeted candidates): the first word at position 1
                first = next(iter(found))
                lead = first if found[first][0] == 1 else None
        out.append((w.post_id, w.topic_id, text, normalized, tokens,
                    w.created_at, w.visibility, w.seq, w.deleted, NORMALIZER_VERSION, w.kind,
                    None if w.deleted else w.expires_at, w.delete_reason if w.deleted else None, lead))
    return out


def columns(writes: list[DocWrite], vocabulary: set[str] | None = None) -> dict[str, list]:
    """Column arrays for UPSERT_SQL."""
    return dict(zip(_COLUMNS, map(list, zip(*rows(writes, vocabulary))))) if writes else {k: [] for k in _COLUMNS}


def _by_topic(sql: str) -> str:
    """The statement, answering with how many rows it wrote per topic (what a backfill page reports)."""
    return f"WITH written AS ({sql} RETURNING d.topic_id) SELECT topic_id, count(*) FROM written GROUP BY topic_id"


UPSERT_BY_TOPIC_SQL = _by_topic(UPSERT_SQL)


# Every word ever indexed, for typo expansion at query time (milli's words FST). Never pruned: a word
# no document holds any more only costs a derivation that finds nothing. The batch's distinct words come
# from Python (the documents' words are at hand there: no tsvector parsing in SQL), sorted, so two
# writers take the rows' locks in one order.
VOCABULARY_SQL = """
INSERT INTO cn_search.search_vocabulary (word)
SELECT unnest(%(words)s::text[]) ON CONFLICT DO NOTHING
"""


def add_vocabulary(cur, words: set[str]) -> None:
    if words:
        cur.execute(VOCABULARY_SQL, {"words": sorted(words)})


def apply_by_topic(conn: psycopg.Connection, writes: list[DocWrite]) -> Counter[str]:
    """Apply versioned writes in one statement; return how many rows changed, per topic."""
    if not writes:
        return Counter()
    with conn.cursor() as cur:
        vocabulary: set[str] = set()
        cols = columns(latest_per_document(writes), vocabulary)
        written = Counter(dict(cur.execute(UPSERT_BY_TOPIC_SQL, cols).fetchall()))
        add_vocabulary(cur, vocabulary)
        return written


def apply(conn: psycopg.Connection, writes: list[DocWrite]) -> int:
    """Apply versioned writes in one statement; return how many rows changed."""
    return sum(apply_by_topic(conn, writes).values())


# COPY into a staging table, then one INSERT .. SELECT with the same versioning rule as UPSERT_SQL.
# Measured faster than the unnest upsert for backfill pages (bench/backfill_1m.py --writer unnest).
STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS pg_documents_stage (
    post_id text, topic_id text, content text, normalized_text text, search_tokens text, created_at bigint,
    visibility text, source_seq bigint, is_deleted boolean, normalizer_version integer, kind integer,
    expires_at bigint, delete_reason text, lead_word text
) ON COMMIT DELETE ROWS
"""
_SELECT, _REST = UPSERT_SQL.split("FROM unnest(", 1)
STAGED_UPSERT_BY_TOPIC_SQL = _by_topic(_SELECT + "FROM pg_documents_stage AS w\n" + _REST[_REST.index("ON CONFLICT"):])


_STAGED: "weakref.WeakSet[psycopg.Connection]" = weakref.WeakSet()  # sessions whose stage surely exists


def create_stage(conn: psycopg.Connection) -> None:
    """Create the session's staging table once, outside any transaction (so no rollback can drop it):
    a per-page CREATE .. IF NOT EXISTS cost about as much as the page's COPY."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise ValueError("create_stage runs outside a transaction")
    conn.execute(STAGE_DDL)
    _STAGED.add(conn)


def apply_staged(conn: psycopg.Connection, writes: list[DocWrite]) -> Counter[str]:
    """`apply_by_topic` for big batches: COPY into a temp table, then upsert from it. Needs a transaction."""
    if not writes:
        return Counter()
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        raise ValueError("apply_staged runs inside a transaction (its staging rows vanish at commit)")
    with conn.cursor() as cur:
        if conn not in _STAGED:
            cur.execute(STAGE_DDL)
        vocabulary: set[str] = set()
        staged = rows(latest_per_document(writes), vocabulary)
        with cur.copy("COPY pg_documents_stage FROM STDIN") as cp:
            for row in staged:
                cp.write_row(row)
        written = Counter(dict(cur.execute(STAGED_UPSERT_BY_TOPIC_SQL).fetchall()))
        add_vocabulary(cur, vocabulary)
        return written

