"""PostgreSQL search that ranks like the legacy Meilisearch index, so the two agree on the top results.

Documents hold Meilisearch 1.21's own words of the product's five searchable attributes (segment.py,
milli.py: a tsvector whose positions carry attribute and position), so matching is word for word as
Meilisearch matches: the query's words from the same tokenizer, the last one a prefix, typo derivations
from the vocabulary of indexed words (cn_search.search_vocabulary, fuzzystrmatch as a prefilter, the
exact Damerau rule in milli.py). Candidates per words-bucket (matchingStrategy `last`: all words, then
fewer from the right) come through the GIN index; each candidate's positions of the query's words are
read back (unnest of its tsvector, filtered in SQL) and ranked by milli.rank_key: typo, proximity,
attribute (fid, then word position), exactness, then insertion order. Insertion order is the order the
product's indexer wrote the documents: the outbox order, which is (created_at, event_id) for posts that
arrive in time order; that is the tie-break here.

Suggest: the same ranking across every topic, one per post, ties by topic index uid then insertion
order (a federated multi-search merges equal scores in query order).

Fast path (_tiered, migration 0016): a query of one word (or one ngram, or for suggest its first word;
or, typed with a typo no document holds, the words one typo away)
reads cn_search.post_title_words, the title words of every document with their best position cost, tier
by tier in tie order, so that at 1,000,000 posts a frequent word costs a few index range reads instead of
ranking thousands of GIN matches; it stops once no unread document could rank among the first `want`,
and otherwise hands over to the words-bucket scan. The scan's fallback for suggest still reads the
posts whose title starts with the prefix (`lead_word`, a btree, migration 0013).

Known gap of the tiers: milli's position rule takes a word's best place in any attribute, and the tags
attribute is the post's topic ids, so a post whose title holds `travel` late (attribute 0) but whose
first topic is `kukuri:travel` ranks at position 1; the tiers place it by its title words. Where a
prefix starts a word of many topics' ids, suggest then disagrees on such posts (at 1,000,000 synthetic
posts whose topics are named after their words: overlap@10 0.87 en / 0.83 ja prefixes; 0.98 on the
real-text bench). Bounding the tiers by the topics' words made every such prefix fall back to the
capped scan (250-650 ms, no better answer), so it is not done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from search_migration.search import milli
from search_migration.search.text import NORMALIZER_VERSION
from search_migration.write_path.legacy_documents import index_uid

MAX_TOTAL_HITS = 10_000  # the legacy index's pagination.maxTotalHits: totals stop where Meilisearch's do
CANDIDATES = 3_000  # rows ranked per words-bucket
SUGGEST_CANDIDATES = 1_500

LIVE = "NOT is_deleted AND visibility = 'public' AND normalizer_version = %(version)s"

FOUND = """(SELECT string_agg(u.lexeme || chr(1) || array_to_string(u.positions, ','), chr(2))
            FROM unnest(d.search_tokens) AS u
            WHERE u.lexeme = ANY(%(words)s) OR u.lexeme ^@ ANY(%(prefix)s::text[]))"""
BUCKET_SQL = {scope: f"""
SELECT d.post_id, d.topic_id, d.created_at, {FOUND}
FROM cn_search.post_search_documents AS d
WHERE {cond} {LIVE} AND d.search_tokens @@ %(match)s::tsquery AND NOT (d.search_tokens @@ %(better)s::tsquery)
ORDER BY d.created_at, d.post_id LIMIT %(cap)s
""" for scope, cond in (("topic", "d.topic_id = %(topic)s AND"), ("all", ""))}
# Suggest's targeted candidates: documents whose title starts with the typed word (a btree on lead_word,
# migration 0013), the exact word first, then in insertion order: the posts Meilisearch ranks first for a
# prefix (attribute 0, position 0) without scanning every document the prefix matches.
LEAD_SQL = f"""
(SELECT d.post_id, d.topic_id, d.created_at, {FOUND}
 FROM cn_search.post_search_documents AS d
 WHERE d.lead_word = %(lead)s AND {LIVE}
 ORDER BY d.created_at, d.post_id LIMIT %(cap)s)
UNION ALL
(SELECT d.post_id, d.topic_id, d.created_at, {FOUND}
 FROM cn_search.post_search_documents AS d
 WHERE d.lead_word LIKE %(lead_like)s AND d.lead_word <> %(lead)s AND {LIVE}
 ORDER BY d.created_at, d.post_id LIMIT %(cap)s)
"""
# One-word queries: the documents holding the word (or, as a prefix, a word it starts) in their title,
# one position tier at a time (cn_search.post_title_words, migration 0016), in tie order (index uid, then
# insertion order). Every statement returns (post_id, topic_id, tier) keys; FOUND_SQL then reads the
# positions of the query's words for the keys not seen yet.
SCOPE = {"topic": "AND t.uid = %(uid)s AND t.topic_id = %(topic)s", "all": ""}
# the exact word: an index range on (tier, word, uid, created_at) is already in tie order
TIER_EXACT_SQL = {scope: f"""
SELECT t.post_id, t.topic_id, t.tier FROM cn_search.post_title_words AS t
WHERE t.tier = %(tier)s AND t.word = %(word)s {cond}
ORDER BY t.uid, t.created_at, t.post_id LIMIT %(n)s
""" for scope, cond in SCOPE.items()}
# a one-word query no document holds as typed: the words one typo (or two) away, together in tie order
TIER_WORDS_SQL = {scope: f"""
SELECT t.post_id, t.topic_id, t.tier FROM cn_search.post_title_words AS t
WHERE t.tier = %(tier)s AND t.word = ANY(%(lead_words)s) {cond}
ORDER BY t.uid, t.created_at, t.post_id LIMIT %(n)s
""" for scope, cond in SCOPE.items()}
TYPO_WORDS = 64  # at most this many derived words are read from the tiers (else: the bucket scan)
# the words it starts: where they are few in the tier (at most PROBE rows, all topics), sort them; else
# walk the tier in tie order and keep the rows whose word starts with it (they are frequent: a short walk)
PROBE = 2_000
# ... and, among them, those of documents that also hold the exact word anywhere (`check_exact`): they rank
# first among the words-it-starts rows (exactness), whatever their place in tie order
TIER_PREFIX_SQL = {scope: f"""
WITH r AS MATERIALIZED (
    SELECT t.post_id, t.topic_id, t.tier, t.uid, t.created_at FROM cn_search.post_title_words AS t
    WHERE t.tier = %(tier)s AND t.word LIKE %(like)s AND t.word <> %(word)s LIMIT {PROBE + 1}),
c AS (SELECT count(*) AS n FROM r)
(SELECT t.post_id, t.topic_id, t.tier, c.n FROM r AS t, c WHERE c.n <= {PROBE} {cond}
 ORDER BY t.uid, t.created_at, t.post_id LIMIT %(n)s)
UNION ALL
(SELECT t.post_id, t.topic_id, t.tier, c.n FROM (SELECT * FROM c WHERE %(check_exact)s AND c.n <= {PROBE}) AS c,
     r AS t, LATERAL (  -- one probe per row: an EXISTS here was planned as a scan of every document with the word
        SELECT 1 FROM cn_search.post_search_documents AS e WHERE e.post_id = t.post_id AND e.topic_id = t.topic_id
        AND e.search_tokens @@ %(exact)s::tsquery OFFSET 0) AS holds
 WHERE true {cond}
 ORDER BY t.uid, t.created_at, t.post_id LIMIT %(n)s)
UNION ALL
SELECT NULL, NULL, NULL, c.n FROM c
""" for scope, cond in SCOPE.items()}
TIER_WALK_SQL = {scope: f"""
SELECT t.post_id, t.topic_id, t.tier FROM cn_search.post_title_words AS t
WHERE t.tier = %(tier)s AND left(t.word, %(chars)s) = %(word)s AND t.word <> %(word)s {cond}
ORDER BY t.uid, t.created_at, t.post_id LIMIT %(n)s
""" for scope, cond in SCOPE.items()}
# Documents holding the exact word anywhere rank first among those matching by a word it starts
# (exactness), whatever their place in tie order: their title keys, when they are few (one statement for
# every tier). Where the words it starts are frequent in a tier and the exact word is common too, they
# are not looked for (a bound: such a document beyond the tier's first rows in tie order is missed).
EXACT_DOCS = 500  # at most this many documents holding the exact word are read (else: not looked for)
ALSO_EXACT_SQL = {scope: f"""
WITH e AS MATERIALIZED (
    SELECT d.post_id, d.topic_id FROM cn_search.post_search_documents AS d
    WHERE {'d.topic_id = %(topic)s AND' if scope == 'topic' else ''} {LIVE} AND d.search_tokens @@ %(exact)s::tsquery
    LIMIT {EXACT_DOCS + 1})
SELECT x.post_id, x.topic_id, x.tier, (SELECT count(*) FROM e)
FROM (SELECT 1) AS one LEFT JOIN LATERAL (
    SELECT t.post_id, t.topic_id, t.tier FROM e, LATERAL (  -- per document: its own title words
        SELECT t.post_id, t.topic_id, t.tier, t.uid FROM cn_search.post_title_words AS t
        WHERE t.post_id = e.post_id AND t.topic_id = e.topic_id AND left(t.word, %(chars)s) = %(word)s
          AND t.word <> %(word)s  -- left(), not LIKE: no word range to skip-scan (a frequent prefix's is long)
        OFFSET 0) AS t  -- OFFSET 0: kept a nested loop over e (not a join over every word with the prefix)
    WHERE true {cond}) AS x ON true
""" for scope, cond in SCOPE.items()}
# How many documents hold each of the most common words (the tsvector column's statistics): a word this
# frequent is not worth a GIN read of all its documents (ALSO_EXACT_SQL); a rarer one is.
COMMON_SQL = """
SELECT s.most_common_elems::text::text[], s.most_common_elem_freqs, c.reltuples
FROM pg_stats AS s JOIN pg_class AS c ON c.oid = 'cn_search.post_search_documents'::regclass
WHERE s.schemaname = 'cn_search' AND s.tablename = 'post_search_documents' AND s.attname = 'search_tokens'
"""
COMMON_TTL_S = 300
_common: dict[str, tuple[float, dict[str, float]]] = {}


def _documents_holding(conn: psycopg.Connection, word: str) -> float:
    """The statistics' estimate of how many documents hold `word` (0 when it is not among the common)."""
    key = conn.info.dsn
    cached = _common.get(key)
    if cached is None or time.monotonic() - cached[0] > COMMON_TTL_S:
        row = conn.execute(COMMON_SQL).fetchone()
        counts = {w: f * row[2] for w, f in zip(row[0] or [], row[1] or [])} if row else {}
        cached = _common[key] = (time.monotonic(), counts)
    return cached[1].get(word, 0.0)


FOUND_SQL = f"""
SELECT d.post_id, d.topic_id, d.created_at, {FOUND}
FROM unnest(%(post_ids)s::text[], %(topic_ids)s::text[]) AS k(post_id, topic_id)
JOIN cn_search.post_search_documents AS d ON d.post_id = k.post_id AND d.topic_id = k.topic_id
WHERE {LIVE}
"""
# The attributes of documents that hold a word at position n or later (milli.longer_fields): read only for
# documents with an attribute starting with the query's words, to tell the ones equal to it (exactness)
LONGER_SQL = f"""
SELECT k.post_id, k.topic_id,
       ARRAY(SELECT DISTINCT (p - 1) / {milli.SLOT} FROM unnest(d.search_tokens) AS u, unnest(u.positions) AS p
             WHERE (p - 1) %% {milli.SLOT} >= %(n)s)
FROM unnest(%(post_ids)s::text[], %(topic_ids)s::text[]) AS k(post_id, topic_id)
JOIN cn_search.post_search_documents AS d ON d.post_id = k.post_id AND d.topic_id = k.topic_id
"""
ALL_FIELDS = frozenset(range(len(milli.FIELDS)))
INDEXED_SQL = "SELECT EXISTS (SELECT 1 FROM cn_search.search_vocabulary WHERE word = %s)"
TIER_POSITIONS = ((0, 0), (1, 1), (2, 4), (5, 7), (8, 11))  # title positions of tiers 0-4 (migration 0016)
BEYOND = 12  # the first position no tier holds
COUNT_SQL = f"""
SELECT count(*) FROM (SELECT 1 FROM cn_search.post_search_documents AS d
    WHERE d.topic_id = %(topic)s AND {LIVE} AND d.search_tokens @@ %(match)s::tsquery LIMIT %(cap)s) AS capped
"""
NOTHING = "'\x01nothing'"

VOCAB_SQL = """
SELECT word FROM cn_search.search_vocabulary
WHERE left(word, 1) = %(first)s AND char_length(word) BETWEEN %(lo)s AND %(hi)s
  AND cn_search.levenshtein_less_equal(%(q)s, CASE WHEN %(prefix)s THEN left(word, %(n)s) ELSE word END, %(bound)s)
      <= %(bound)s
"""
FIRST_TYPO_SQL = """
SELECT word FROM cn_search.search_vocabulary
WHERE substr(word, 2) = %(rest)s OR word = %(rest)s OR substr(word, 2) = %(q)s OR word = %(swapped)s
   OR (%(prefix)s AND (substr(word, 2) LIKE %(rest_like)s OR word LIKE %(rest_like)s
                       OR substr(word, 2) LIKE %(q_like)s OR word LIKE %(swapped_like)s))
"""


@dataclass
class Page:
    items: list[dict]
    total: int
    next_offset: int | None


def _like(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _lit(word: str) -> str:
    return "'" + word.replace("\\", "\\\\").replace("'", "''") + "'"


COMPLETIONS = 64  # a prefix starting more indexed words than this is matched as a prefix (`:*`) in the GIN
COMPLETIONS_SQL = f"SELECT word FROM cn_search.search_vocabulary WHERE word LIKE %s LIMIT {COMPLETIONS + 1}"


def _complete(conn: psycopg.Connection, t: milli.QueryWord) -> None:
    """The indexed words each prefix of t starts, when few: exact GIN entries, which the index intersects
    with the topic's entry by skipping, where a prefix (`:*`) unions every matching entry's postings into
    a bitmap first (at 1,000,000 posts, ~80 ms for a frequent word's prefix)."""
    prefixes = [t.word] if t.prefix else []
    prefixes += [g for g, _, p in t.ngrams if p]
    for prefix in prefixes:
        words = [r[0] for r in conn.execute(COMPLETIONS_SQL, (_like(prefix),))]
        t.completions[prefix] = words if len(words) <= COMPLETIONS else None


def _prefix_query(t: milli.QueryWord, prefix: str) -> list[str]:
    """tsquery alternatives for the words `prefix` starts: those words, or the prefix itself."""
    words = t.completions.get(prefix)
    return [_lit(prefix) + ":*"] if words is None else [_lit(w) for w in words] or [NOTHING]


def expand(conn: psycopg.Connection, terms: list[milli.QueryWord]) -> None:
    """Fill each query word's typo derivations from the vocabulary (milli's rules in milli.py), and the
    words its prefixes start (_complete)."""
    for t in terms:
        _complete(conn, t)
        t.derivations = {t.word: 0}
        k = t.max_typos
        if k == 0:
            continue
        n = len(t.word)
        words = [r[0] for r in conn.execute(VOCAB_SQL, {
            "first": t.word[0], "lo": n - k, "hi": n + k if not t.prefix else 10_000, "q": t.word,
            "prefix": t.prefix, "n": n, "bound": 3 * k if t.prefix else 2 * k})]
        if k == 2:
            swapped = t.word[1] + t.word[0] + t.word[2:]
            words += [r[0] for r in conn.execute(FIRST_TYPO_SQL, {
                "rest": t.word[1:], "q": t.word, "swapped": swapped, "prefix": t.prefix,
                "rest_like": _like(t.word[1:]), "q_like": _like(t.word), "swapped_like": _like(swapped)})]
        t.derivations.update(milli.typo_derivations(t, words))


def _term_query(t: milli.QueryWord, prefix: bool) -> str:
    parts = [_lit(w) for w in t.derivations]
    if prefix:
        parts += [p for p in _prefix_query(t, t.word) if p not in parts]
    return "(" + " | ".join(parts) + ")"


def _bucket_query(terms: list[milli.QueryWord], k: int, ngrams: bool = True) -> str:
    """Documents holding the first k query words, each word alone or (`ngrams`) inside an ngram of
    adjacent words."""
    def from_(i: int) -> str:
        if i >= k:
            return ""
        rest = from_(i + 1)
        alternatives = [_term_query(terms[i], terms[i].prefix and i == len(terms) - 1) + (" & " + rest if rest else "")]
        for word, n, prefix in terms[i].ngrams if ngrams else ():
            if i + n <= k:
                tail = from_(i + n)
                lit = ("(" + " | ".join(_prefix_query(terms[i], word)) + ")" if prefix and i + n == len(terms)
                       else _lit(word))
                alternatives.append(lit + (" & " + tail if tail else ""))
        return alternatives[0] if len(alternatives) == 1 else "(" + " | ".join(f"({a})" for a in alternatives) + ")"
    return from_(0)


def _parse_found(found: str | None) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    if found:
        for item in found.split("\x02"):
            word, _, ps = item.partition("\x01")
            out[word] = [int(p) for p in ps.split(",")] if ps else []
    return out


def _keyed(conn, terms: list[milli.QueryWord], rows: list[tuple]) -> list[tuple[tuple, tuple]]:
    """(rank key, row) of the rows holding every query word. An attribute that starts with the query's
    words ranks first when it holds nothing else: those documents' longer attributes are read (LONGER_SQL)."""
    found = [(row, _parse_found(row[3])) for row in rows]
    keyed = [(milli.rank_key(terms, f, ALL_FIELDS), row, f) for row, f in found]
    keyed = [k for k in keyed if k[0] is not None]
    starting = [k for k in keyed if k[0][4][0] == 1]
    if starting:
        longer = {(r[0], r[1]): set(r[2]) for r in conn.execute(LONGER_SQL, {
            "n": len(terms), "post_ids": [k[1][0] for k in starting], "topic_ids": [k[1][1] for k in starting]})}
        keyed = [(milli.rank_key(terms, f, longer.get((row[0], row[1]), ALL_FIELDS)) if key[4][0] == 1 else key, row, f)
                 for key, row, f in keyed]
    return [(key, row) for key, row, _ in keyed]


def _lead(conn, terms: list[milli.QueryWord], first_word: bool) -> tuple[str, bool, int] | None:
    """The indexed word whose title tiers a query reads (word, as a prefix, how many query words it covers):
    its only word; or the longest ngram from its first word that documents hold as one word (a Japanese
    word the query tokenizer cut into characters: 鎌倉 -> 鎌 倉, 自転車 -> 自 転 車, indexed 自転 + 車);
    with `first_word`, else its first word. None: no such word (the bucket scan then)."""
    if len(terms) == 1:
        return terms[0].word, terms[0].prefix, 1
    for word, n, prefix in sorted(terms[0].ngrams, key=lambda g: -g[1]):
        if prefix and terms[0].completions.get(word, [word]):
            return word, True, n
        if not prefix and conn.execute(INDEXED_SQL, (word,)).fetchone()[0]:
            return word, False, n
    return (terms[0].word, False, 1) if first_word else None


def _indexed(conn, t: milli.QueryWord, ngram: tuple[str, int, bool]) -> bool:
    """Whether a document may hold this ngram: the word is indexed, or (a prefix) starts indexed words
    (expand() found them: None is many)."""
    word, _, prefix = ngram
    if prefix:
        return t.completions.get(word) != []
    return conn.execute(INDEXED_SQL, (word,)).fetchone()[0]


def _lower_bound(terms: list[milli.QueryWord], first_position: int, covered: int, typos: int) -> tuple:
    """The best key a document can have whose word read from the tiers (covering the first `covered`
    query words) sits at title position >= first_position, or in a later attribute: `typos`, adjacent
    words, attribute 0, the smallest position cost."""
    position = min(milli.ngram_position_cost(p, 0, covered)
                   for p in range(first_position, max(first_position, BEYOND) + 64))
    return (typos, len(terms) - 1, 0, position, (0, 0))


APART = 500  # documents holding every word of an ngram-led query apart: read them all when at most this many
APART_SQL = {scope: f"""
SELECT d.post_id, d.topic_id FROM cn_search.post_search_documents AS d
WHERE {cond} {LIVE} AND d.search_tokens @@ %(match)s::tsquery LIMIT {APART + 1}
""" for scope, cond in (("topic", "d.topic_id = %(topic)s AND"), ("all", ""))}


def _tiered(conn, scope: str, topic: str | None, terms: list[milli.QueryWord], want: int,
            tie, first_word: bool = False) -> list[tuple] | None:
    """The first `want` rows in Meilisearch's order for a query of one word (or one ngram, _lead),
    read from its title tiers; None when the tiers cannot tell (the word is rare in titles: the bucket scan
    is cheap then).

    A document with the word (0 typos) in its title ranks before any other (attribute), by the word's
    best position cost, then exactness, then ties. Each tier is read in tie order, `want` more keys than
    already held (those may come back), the exact word, the words it starts and the documents that also
    hold the exact word apart; the rows are ranked by milli.rank_key, and reading stops once the
    `want`-th best key is under what any document of a later tier could have.

    `first_word`: for a query of several words that no ngram covers, read the tiers of its first word
    (documents holding every word, adjacent and early in the title, come first: proximity, attribute).
    A tier is read in part there (its first rows in tie order), though the other words' places tell its
    documents apart: a bound on the first word alone. Reading whole tiers instead measured the same
    overlap at 1,000,000 posts (bench/search_bench.py) and a search P95 of 66 ms instead of 21."""
    lead = _lead(conn, terms, first_word)
    if lead is None:
        return None
    word, prefix, covered = lead
    params = {"topic": topic, "uid": index_uid(topic) if topic else None, "version": NORMALIZER_VERSION,
              "word": word, "like": _like(word), "chars": len(word), "exact": _lit(word),
              "words": sorted({w for t in terms for w in t.derivations} | {g for t in terms for g, _, _ in t.ngrams}),
              "prefix": ([terms[-1].word] if terms[-1].prefix else [])
              + [g for t in terms for g, n, p in t.ngrams if p and t.index + n == len(terms)]}
    held: dict[tuple[str, str], tuple] = {}  # (post, topic) -> (key, tie, row)

    def hold(keys: list[tuple]) -> None:
        new = list(dict.fromkeys((k[0], k[1]) for k in keys if (k[0], k[1]) not in held))
        if new:
            rows = conn.execute(FOUND_SQL, {**params, "post_ids": [k[0] for k in new],
                                            "topic_ids": [k[1] for k in new]}).fetchall()
            for key, row in _keyed(conn, terms, rows):
                held[(row[0], row[1])] = (key, tie(row), row)

    typos = 0  # the fewest typos of a document the tiers have not given
    if covered > 1:
        # an ngram costs as many typos as the words it covers (milli), so every document holding the
        # words apart ranks before those the ngram's tiers give: read them all first, when few (a kanji
        # query cut into characters: 東京 -> 東 京, 自転車 -> 自 転 車); an unread document then holds an
        # ngram: this one when no other is indexed (its typos at least), else any (2 typos or more; the
        # tiers can then tell only when this ngram covers the whole query)
        apart = conn.execute(APART_SQL[scope], {**params, "match": _bucket_query(terms, len(terms), ngrams=False)})
        apart = apart.fetchall()
        alone = not any(_indexed(conn, t, g) for t in terms for g in t.ngrams if (t.index, g[0]) != (0, word))
        if len(apart) <= APART and (alone or covered == len(terms)):
            hold(apart)
            typos = covered if alone else 2
        elif first_word:  # many: they come first, read the first word's tiers for them
            word, prefix, covered = terms[0].word, False, 1
            params.update(word=word, like=_like(word), chars=len(word), exact=_lit(word))
        else:
            return None
    tier_sql = TIER_EXACT_SQL
    indexed = len(terms) == 1 and (prefix or len(terms[0].derivations) > 1) \
        and conn.execute(INDEXED_SQL, (word,)).fetchone()[0]  # read once: the typo path and check_exact ask
    if len(terms) == 1 and len(terms[0].derivations) > 1 and not indexed \
            and not (prefix and terms[0].completions.get(word) != []):
        # no document holds it as typed (a typo): every match holds a derived word, the fewest typos first
        typos = min(d for d in terms[0].derivations.values() if d)
        lead_words = sorted(w for w, d in terms[0].derivations.items() if d == typos)
        if len(lead_words) > TYPO_WORDS:
            return None
        tier_sql, prefix, params["lead_words"] = TIER_WORDS_SQL, False, lead_words
    check_exact = bool(prefix and indexed)
    also_exact: list[tuple] | None = None  # title keys of all documents holding the exact word, when few
    tried = False
    for tier, (_, last) in enumerate(TIER_POSITIONS):
        n = want + len(held)
        p = {**params, "tier": tier, "n": n, "check_exact": check_exact}
        exact = conn.execute(tier_sql[scope], p).fetchall()
        keys = list(exact)
        if prefix:
            got = conn.execute(TIER_PREFIX_SQL[scope], p).fetchall()
            keys += [r[:3] for r in got if r[0] is not None]
            if got[-1][3] > PROBE:  # the words it starts are frequent in this tier: walk it in tie order
                keys += conn.execute(TIER_WALK_SQL[scope], p).fetchall()
                if check_exact and not tried and len(exact) < n and _documents_holding(conn, word) <= EXACT_DOCS:
                    # the exact word is rare in titles and not common: its documents may be few
                    tried = True
                    got = conn.execute(ALSO_EXACT_SQL[scope], params).fetchall()
                    if got[0][3] <= EXACT_DOCS:
                        also_exact = [r[:3] for r in got if r[0] is not None]
                if also_exact is not None:
                    keys += [k for k in also_exact if k[2] == tier]
        hold(keys)
        if len(held) >= want:
            ranked = sorted(held.values(), key=lambda v: (v[0], v[1]))
            if (ranked[want - 1][0], ranked[want - 1][1]) < (_lower_bound(terms, last + 1, covered, typos), ()):
                return [v[2] for v in ranked]
    return None


def _ranked(conn, scope: str, topic: str | None, terms: list[milli.QueryWord], want: int, cap: int,
            tie=lambda row: (row[2], row[0]), lead: bool = False) -> tuple[list[tuple], bool]:
    """Rows in Meilisearch's order, at least `want` when that many match; and whether every match was seen.
    `lead`: first the documents whose title starts with the first query word (LEAD_SQL), ranked with the
    rest of the all-words bucket."""
    words = sorted({w for t in terms for w in t.derivations} | {g for t in terms for g, _, _ in t.ngrams})
    prefix = terms[-1].word if terms[-1].prefix else None
    prefixes = [terms[-1].word] + [g for t in terms for g, n, p in t.ngrams if p and t.index + n == len(terms)]
    ranked: list[tuple] = []
    exhaustive = True
    for k in range(len(terms), 0, -1):
        params = {"topic": topic, "version": NORMALIZER_VERSION, "words": words, "prefix": prefixes if prefix else [],
                  "cap": cap,
                  "match": _bucket_query(terms, k),
                  "better": _bucket_query(terms, k + 1) if k < len(terms) else NOTHING}
        rows = conn.execute(BUCKET_SQL[scope], params).fetchall()
        exhaustive = exhaustive and len(rows) < cap
        if lead and k == len(terms):
            first = terms[0]
            leads = conn.execute(LEAD_SQL, {**params, "lead": first.word,
                                            "lead_like": _like(first.word) if first.prefix else first.word}).fetchall()
            held = {(r[0], r[1]) for r in rows}
            rows += [r for r in leads if (r[0], r[1]) not in held]
        keyed = [((key, tie(row)), row) for key, row in _keyed(conn, terms[:k], rows)]
        keyed.sort(key=lambda kr: kr[0])
        ranked.extend(r for _, r in keyed)
        if len(ranked) >= want:
            return ranked, exhaustive and k == 1
    return ranked, exhaustive


def search(conn: psycopg.Connection, topic: str, q: str, limit: int = 20, offset: int = 0) -> Page:
    """One page of a topic's results in Meilisearch's order, and the total (capped like Meilisearch's)."""
    terms = milli.parse(q)
    if not terms or limit <= 0:
        return Page([], 0, None)
    expand(conn, terms)
    want = offset + limit
    ranked = _tiered(conn, "topic", topic, terms, want, lambda row: (row[2], row[0]), first_word=True)
    exhaustive = False
    if ranked is None:
        ranked, exhaustive = _ranked(conn, "topic", topic, terms, want, max(CANDIDATES, want))
    if exhaustive:
        total = len(ranked)
    else:
        total = conn.execute(COUNT_SQL, {"topic": topic, "version": NORMALIZER_VERSION,
                                         "match": _bucket_query(terms, 1), "cap": MAX_TOTAL_HITS}).fetchone()[0]
    total = min(max(total, len(ranked)), MAX_TOTAL_HITS)
    page = ranked[offset:want]
    items = [{"event_id": r[0], "topic_id": r[1]} for r in page]
    return Page(items, total, want if want < total else None)


def suggest(conn: psycopg.Connection, q: str, limit: int = 5) -> list[dict]:
    """Prefix autocomplete across topics: the best posts for what has been typed so far, one per post."""
    terms = milli.parse(q)
    if not terms or limit <= 0:
        return []
    expand(conn, terms)
    tie = lambda row: (index_uid(row[1]), row[2], row[0])  # noqa: E731
    ranked = _tiered(conn, "all", None, terms, 3 * limit, tie, first_word=True)
    if ranked is None:
        ranked, _ = _ranked(conn, "all", None, terms, 3 * limit, SUGGEST_CANDIDATES, tie=tie, lead=True)
    seen: set[str] = set()
    items: list[dict] = []
    for post_id, topic_id, _, _ in ranked[:3 * limit]:
        if post_id not in seen:
            seen.add(post_id)
            items.append({"event_id": post_id, "topic_id": topic_id})
    return items[:limit]
