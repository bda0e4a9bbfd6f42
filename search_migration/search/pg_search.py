"""PostgreSQL search that ranks like the legacy Meilisearch index, so the two agree on the top results.

Matching uses the normalizer's tokens (CJK bigrams, Latin words) through the GIN index; ranking
follows Meilisearch's default bucket sort on a bounded candidate set:

1. words      matching strategy `last`: all query words, then drop words from the right;
2. typo       the last word matches as a prefix (a prefix is a zero-typo match in Meilisearch); a
              match only through folding Meilisearch lacks (ｶﾒﾗ, ＲＵＳＴ) counts as a typo;
3. proximity  sum over adjacent query words of their closest distance in word positions (max 8);
4. attribute  one searchable attribute, so only word position: how far each word sits from its place
              in the query, bucketed like Meilisearch (0, 1, 2-4, 5-7, 8-11, ...);
5. exactness  content equals the query > content starts with it > more words matched exactly;
6. tie-break  ascending post id: the index's last ranking rule is `event_id:asc` (meili_index), set
              when the migration enters `dual`; Meilisearch's own order (arrival) is unknowable here.

Candidates are bounded so a very frequent word stays fast: the first matches in tie-break order (a
walk of the topic in post-id order for frequent words, the GIN index for rare ones — chosen by the
frequency the walk measured), plus the posts whose text is or starts with the query and those that
hold its words side by side (rare, and first in Meilisearch's order). The first documents of the best bucket in post-id order are then exactly
Meilisearch's whenever that bucket shows up among the candidates. Word positions are counted the way
Meilisearch counts them (a hard separator such as `。` moves 8 positions, an emoji is a word), with
CJK runs split where the script changes or a query word begins — a cheap stand-in for Meilisearch's
dictionary segmentation — and a katakana query word must not sit inside a longer katakana word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg

from search_migration.search.query import Term, bucket_tsquery, parse_query, phrase_tsquery
from search_migration.search.ranking import UNMATCHED, rank_key
from search_migration.search.text import NORMALIZER_VERSION, normalize

MAX_TOTAL_HITS = 10_000  # the legacy index's pagination.maxTotalHits: totals stop where Meilisearch's do
CANDIDATES = 120  # per words-bucket; enough for the best bucket of a frequent word to show up
SUGGEST_CANDIDATES = 60


LIVE = "NOT is_deleted AND visibility = 'public' AND normalizer_version = %(version)s"
MATCH = "search_tokens @@ %(match)s::tsquery AND NOT (search_tokens @@ %(better)s::tsquery)"
SCOPE = {"topic": "topic_id = %(topic)s AND ", "all": ""}

# Candidates are the first matches in post-id order. A frequent word is found by walking the scope in
# post-id order (btree) and stopping early; the walk also measures how frequent the word is, which
# decides the next step: a longer walk, or — for a rare word — the GIN index collecting every match.
# Observed frequency, not the planner's estimate: estimates for phrase and prefix tsqueries are rough.
WALK_SQL = {scope: f"""
WITH head AS MATERIALIZED (
    SELECT post_id, topic_id, content, search_tokens FROM cn_search.post_search_documents
    WHERE {cond}{LIVE}
    ORDER BY post_id LIMIT %(scan)s),
stats AS (SELECT count(*) AS scanned, max(post_id) AS reach,
                 (SELECT array_agg((SELECT count(*) FROM head WHERE search_tokens @@ w.q::tsquery) ORDER BY w.i)
                  FROM unnest(%(words)s::text[]) WITH ORDINALITY AS w(q, i)) AS per_word
          FROM head)
SELECT m.post_id, m.topic_id, m.content, stats.scanned, stats.reach, stats.per_word
FROM stats LEFT JOIN LATERAL (
    SELECT post_id, topic_id, content FROM head WHERE {MATCH} ORDER BY post_id LIMIT %(limit)s) AS m ON true
""" for scope, cond in SCOPE.items()}
# The first walk serves every words-bucket at once: each row of the head that matches the first word
# gets its level (how many leading query words it matches), and each level keeps its first `limit`.
LEVEL_WALK_SQL = {scope: f"""
WITH head AS MATERIALIZED (
    SELECT post_id, topic_id, content, search_tokens FROM cn_search.post_search_documents
    WHERE {cond}{LIVE}
    ORDER BY post_id LIMIT %(scan)s),
leveled AS MATERIALIZED (
    SELECT post_id, topic_id, content,
           (SELECT max(b.i) FROM unnest(%(buckets)s::text[]) WITH ORDINALITY AS b(q, i)
            WHERE head.search_tokens @@ b.q::tsquery) AS level
    FROM head WHERE search_tokens @@ %(first)s::tsquery),
numbered AS (SELECT *, row_number() OVER (PARTITION BY level ORDER BY post_id) AS n FROM leveled),
stats AS (
    SELECT count(*) AS scanned, max(post_id) AS reach,
           (SELECT array_agg((SELECT count(*) FROM head h WHERE h.search_tokens @@ w.q::tsquery) ORDER BY w.i)
            FROM unnest(%(words)s::text[]) WITH ORDINALITY AS w(q, i)) AS per_word,
           (SELECT array_agg((SELECT count(*) FROM leveled l WHERE l.level = b.i) ORDER BY b.i)
            FROM unnest(%(buckets)s::text[]) WITH ORDINALITY AS b(q, i)) AS per_level
    FROM head)
SELECT m.post_id, m.topic_id, m.content, m.level, stats.scanned, stats.reach, stats.per_word, stats.per_level
FROM stats LEFT JOIN numbered AS m ON m.n <= %(limit)s
""" for scope, cond in SCOPE.items()}
# The GIN index is asked for the rarest word only (rarest in the walk); the others are checked on the
# rows it returns — intersecting several frequent words' posting lists costs more than that check.
GATHER_SQL = {scope: f"""
WITH matched AS MATERIALIZED (
    SELECT post_id, topic_id, content FROM cn_search.post_search_documents
    WHERE {cond}{LIVE} AND search_tokens @@ %(rarest)s::tsquery
      AND coalesce(search_tokens, ''::tsvector) @@ %(match)s::tsquery
      AND NOT (search_tokens @@ %(better)s::tsquery))
SELECT post_id, topic_id, content FROM matched ORDER BY post_id LIMIT %(limit)s
""" for scope, cond in SCOPE.items()}
EXACT_SQL = {
    "topic": f"""
SELECT post_id, topic_id, content FROM cn_search.post_search_documents
WHERE md5(normalized_text) = md5(%(text)s) AND normalized_text = %(text)s AND topic_id = %(topic)s
  AND {LIVE} AND {MATCH}
ORDER BY post_id LIMIT %(limit)s
""",
    "all": f"""
WITH exact AS MATERIALIZED (
    SELECT post_id, topic_id, content, search_tokens FROM cn_search.post_search_documents
    WHERE md5(normalized_text) = md5(%(text)s) AND normalized_text = %(text)s AND {LIVE})
SELECT post_id, topic_id, content FROM exact WHERE {MATCH}
ORDER BY post_id LIMIT %(limit)s
""",
}
START_SQL = f"""
SELECT post_id, topic_id, content FROM cn_search.post_search_documents
WHERE topic_id = %(topic)s AND cn_search.search_lead(normalized_text) = cn_search.search_lead(%(text)s)
  AND replace(translate(normalized_text, '#@', ''), ' ', '') LIKE %(start)s AND {LIVE} AND {MATCH}
ORDER BY post_id LIMIT %(limit)s
"""
COUNT_SQL = f"""
SELECT count(*) FROM (
    SELECT 1 FROM cn_search.post_search_documents
    WHERE topic_id = %(topic)s AND {LIVE} AND {MATCH}
    LIMIT %(cap)s) AS capped
"""

NOTHING = "'no such token'"  # tokens never hold a space: "nothing better" for the top bucket
HEAD_SCAN = 1_000  # rows walked in post-id order before judging how frequent the words are
MAX_WALK = 6_000  # a longer walk than this costs more than collecting the matches through GIN
HEX_ID = re.compile(r"[0-9a-f]{64}")


@dataclass
class Page:
    items: list[dict]
    total: int
    next_offset: int | None


def _phrase(q: str, terms: list[Term], bucket_terms: list[Term]) -> str:
    """The normalized text a post must have to match this bucket's words exactly and nothing else."""
    return normalize(q) if len(bucket_terms) == len(terms) else " ".join(t.text for t in bucket_terms)


def _reach(post_id: str | None) -> float:
    """How far into the id space an id lies (0-1); 0 for ids that are not hashes."""
    return int(post_id[:15], 16) / 16 ** 15 if post_id and HEX_ID.fullmatch(post_id) else 0.0


def _no_seqscan(conn: psycopg.Connection, sql: str, params: dict) -> list[tuple]:
    """Run a rare-word query through its indexes: a misestimated tsquery must not become a table scan."""
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        return conn.execute(sql, params).fetchall()


class Candidates:
    """Candidate rows per words-bucket for one query, read in tie-break order and bounded.

    One walk of the scope's first rows in post-id order serves every bucket and measures how frequent
    each word is. A bucket the walk could not fill gets a longer walk when its rows are frequent enough,
    or else the GIN index through its rarest word. Buckets that fill up also get the posts whose text is
    or starts with the query's words, and those holding the words side by side (rare, and first in
    Meilisearch's order: exactness and proximity outrank the tie-break).
    """

    def __init__(self, conn: psycopg.Connection, topic: str | None, q: str, terms: list[Term], limit: int):
        self.conn, self.topic, self.q, self.terms, self.limit = conn, topic, q, terms, limit
        self.scope = "all" if topic is None else "topic"
        self.words = [t.tsquery() for t in terms]
        buckets = [bucket_tsquery(terms[:k]) for k in range(1, len(terms) + 1)]
        self.base = {"topic": topic, "version": NORMALIZER_VERSION, "limit": limit, "scan": HEAD_SCAN}
        walked = conn.execute(LEVEL_WALK_SQL[self.scope], {**self.base, "buckets": buckets, "first": buckets[0],
                                                           "words": self.words}).fetchall()
        self.by_level: dict[int, list[tuple]] = {}
        for r in walked:
            if r[0] is not None:
                self.by_level.setdefault(r[3], []).append(r[:3])
        _, _, _, _, self.scanned, self.reach_id, per_word, per_level = walked[0]
        self.per_word = per_word or [0] * len(terms)
        self.per_level = per_level or [0] * len(terms)
        self.complete = self.scanned < HEAD_SCAN  # the walk saw the whole scope

    def bucket(self, k: int) -> tuple[list[tuple], list[tuple]]:
        """(first rows of bucket k in post-id order, extra rows whose text is or starts with its words)."""
        rows = sorted(self.by_level.get(k, []))
        words = self.words[:k]
        params = {**self.base, "match": " & ".join(words), "better": bucket_tsquery(self.terms[:k + 1])
                  if k < len(self.terms) else NOTHING, "words": words,
                  "text": _phrase(self.q, self.terms, self.terms[:k])}
        if len(rows) < self.limit and not self.complete:
            rows = self._more(k, params)
        extra: list[tuple] = []
        if len(rows) >= self.limit:  # otherwise every match, exact and leading ones included, is here
            seen = {(r[0], r[1]) for r in rows}
            found = self.conn.execute(EXACT_SQL[self.scope], params).fetchall()
            phrase = phrase_tsquery(self.terms[:k])
            if phrase:  # the words side by side, anywhere: proximity ranks them before everything else
                params["rarest"] = self._rarest(params["words"])
                found += _no_seqscan(self.conn, GATHER_SQL[self.scope], {**params, "match": phrase})
            if self.scope == "topic":
                text = params["text"].replace("#", "").replace("@", "").replace(" ", "")
                start = re.sub(r"([\\%_])", r"\\\1", text) + "%"  # LIKE-escaped
                found += self.conn.execute(START_SQL, {**params, "start": start}).fetchall()
            for r in found:
                if (r[0], r[1]) not in seen:
                    seen.add((r[0], r[1]))
                    extra.append(r)
        return rows, extra

    def _rarest(self, words: list[str]) -> str:
        """The word the walk saw least often (the longest among equals): the GIN index's best way in."""
        return min(zip(self.per_word[:len(words)], [-len(w) for w in words], words))[2]

    def _more(self, k: int, params: dict) -> list[tuple]:
        """Bucket k's first `limit` rows when the first walk had too few: walk on, or ask GIN."""
        params["rarest"] = self._rarest(params["words"])
        found, scan = self.per_level[k - 1], HEAD_SCAN
        for _ in range(3):
            # a longer walk reads about limit/frequency rows; collecting through GIN reads every match
            # (frequency x scope size, the scope measured by how far into the id space the walk got)
            reach = _reach(self.reach_id)
            matches = found / reach if reach > 1e-9 else float("inf")
            needed = int(scan * self.limit / found * 1.5) if found else None
            if needed is None or (needed > MAX_WALK and needed > 1.5 * matches):
                break
            scan = max(needed, 2 * scan)
            walked = self.conn.execute(WALK_SQL[self.scope], {**params, "scan": scan}).fetchall()
            rows = [r[:3] for r in walked if r[0] is not None]
            if len(rows) >= self.limit or walked[0][3] < scan:
                return rows
            found, self.reach_id = len(rows), walked[0][4]
        return _no_seqscan(self.conn, GATHER_SQL[self.scope], params)

    def total(self) -> int:
        """Documents matching the first query word, capped like Meilisearch's estimatedTotalHits.

        Exact when the walk saw them all or they are few; otherwise estimated from the walk: event ids
        are hashes, so the walk's share of the id space is its share of the matches.
        """
        matched = self.per_word[0]
        if self.complete:
            return matched
        reach = _reach(self.reach_id)
        if matched >= 3 and reach > 1e-9:  # rough for few matches, as Meilisearch's estimate is
            return min(MAX_TOTAL_HITS, round(matched / reach))
        params = {**self.base, "match": bucket_tsquery(self.terms[:1]), "better": NOTHING, "cap": MAX_TOTAL_HITS}
        return _no_seqscan(self.conn, COUNT_SQL, params)[0][0]


def _rank_buckets(source: Candidates, terms: list[Term], want: int) -> list[tuple]:
    """Bucket sort over words-buckets (strategy `last`): all words first, then fewer.

    A row the index matched but whose words do not match the way Meilisearch's do (データ inside データベース)
    moves down to the next bucket.
    """
    ranked: list[tuple] = []
    demoted: list[tuple] = []
    for k in range(len(terms), 0, -1):
        rows, extra = source.bucket(k)
        keyed = [(rank_key(terms[:k], r[2]), r) for r in rows + extra + demoted]
        fits = sorted((key, r[0], r[1], r) for key, r in keyed if key[0] < UNMATCHED)
        ranked.extend(r for *_, r in fits)
        demoted = [r for key, r in keyed if key[0] >= UNMATCHED]
        if len(ranked) >= want:
            return ranked
    return ranked + sorted(demoted)


def search(conn: psycopg.Connection, topic: str, q: str, limit: int = 20, offset: int = 0) -> Page:
    """One page of a topic's results in Meilisearch's order, and the total (capped like Meilisearch's)."""
    terms = parse_query(q)
    if not terms or limit <= 0:
        return Page([], 0, None)
    want = offset + limit
    source = Candidates(conn, topic, q, terms, max(CANDIDATES, want + CANDIDATES // 2))
    ranked = _rank_buckets(source, terms, want)
    total = max(source.total(), min(len(ranked), MAX_TOTAL_HITS))
    page = ranked[offset:want]
    items = [{"event_id": r[0], "topic_id": r[1]} for r in page]
    return Page(items, total, want if want < min(total, MAX_TOTAL_HITS) else None)


def suggest(conn: psycopg.Connection, q: str, limit: int = 5) -> list[dict]:
    """Prefix autocomplete across topics: the best posts for what has been typed so far, one per post.

    Its own fast path: a small candidate set, no total, and a second bucket only when the first is short.
    """
    terms = parse_query(q)
    if not terms or limit <= 0:
        return []
    ranked = _rank_buckets(Candidates(conn, None, q, terms, SUGGEST_CANDIDATES + 3 * limit), terms, 3 * limit)
    seen: set[str] = set()
    items: list[dict] = []
    for post_id, topic_id, content in ranked:
        if post_id not in seen:
            seen.add(post_id)
            items.append({"event_id": post_id, "topic_id": topic_id, "text": content})
    return items[:limit]
