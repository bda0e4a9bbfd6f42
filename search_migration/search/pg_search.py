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

import functools
import re
import unicodedata
from dataclasses import dataclass

import psycopg

from search_migration.search.text import NORMALIZER_VERSION, _fold, is_cjk, normalize, runs

MAX_TOTAL_HITS = 10_000  # the legacy index's pagination.maxTotalHits: totals stop where Meilisearch's do
CANDIDATES = 120  # per words-bucket; enough for the best bucket of a frequent word to show up
SUGGEST_CANDIDATES = 60
MAX_DISTANCE = 8
UNMATCHED = 9  # rank_key's first element for a row whose words do not all match
HARD_SEPARATORS = set(".!?;。、！？；\n\r…")


@dataclass(frozen=True)
class Term:
    """One query word as the index holds it; `prefix` only for the query's last word."""

    text: str
    cjk: bool
    prefix: bool

    @property
    def bare(self) -> str:
        return self.text.lstrip("#@")

    def tsquery(self) -> str:
        def lit(token: str) -> str:
            return "'" + token.replace("\\", "\\\\").replace("'", "''") + "'"

        if not self.cjk or self.text[0] in "#@":
            return lit(self.text) + (":*" if self.prefix else "")
        if len(self.text) == 1:  # a single character: the start of a bigram or a run's final unigram
            return lit(self.text) + ":*"
        grams = [self.text[i:i + 2] for i in range(len(self.text) - 1)]
        return "(" + " <-> ".join(lit(g) for g in grams) + ")" if len(grams) > 1 else lit(grams[0])


def parse_query(q: str) -> list[Term]:
    """Query words in order: Latin/digit words and CJK runs. A `#tag` or `@mention` is searched as its
    word, as Meilisearch does (its tokenizer separates on `#` and `@`): `#nostr` finds `nostr`."""
    words: list[tuple[str, bool]] = []
    for word in normalize(q).split():
        for cjk, run in runs(word):
            bare = run.lstrip("#@")
            if bare.strip("_"):
                words.append((bare, cjk))
    return [Term(text, cjk, i == len(words) - 1) for i, (text, cjk) in enumerate(words)]


def phrase_tsquery(terms: list[Term]) -> str | None:
    """The words next to each other in query order (two CJK words with or without a space between);
    None for one word, or where a tag or a one-character word makes positions ambiguous."""
    if len(terms) < 2 or any(t.text[0] in "#@" or (t.cjk and len(t.text) < 2) for t in terms):
        return None
    expr = terms[0].tsquery()
    for prev, term in zip(terms, terms[1:]):
        word = term.tsquery()
        # in one CJK run the next word's first bigram sits two past this word's last (a bigram spans
        # the join); across a space, one past
        expr = f"(({expr}) <-> {word} | ({expr}) <2> {word})" if prev.cjk and term.cjk else f"({expr}) <-> {word}"
    return expr


def bucket_tsquery(terms: list[Term]) -> str:
    return " & ".join(t.tsquery() for t in terms)


# --------------------------------------------------------------------------- Meilisearch-like positions


def _script(ch: str) -> str:
    o = ord(ch)
    if 0x3040 <= o <= 0x309F:
        return "hira"
    if 0x30A0 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF:
        return "kata"
    if is_cjk(ch):
        return "han"
    return "latin"


@dataclass
class Words:
    """A document's words with Meilisearch-style positions, and its CJK runs for substring matching."""

    pieces: list[tuple[str, int]]  # (word, position)
    cjk_runs: list[tuple[str, list[tuple[int, int, int]]]]  # run text, [(start, end, position)] per piece

    @property
    def stream(self) -> str:
        return " ".join(w for w, _ in self.pieces)


# Meilisearch keeps these apart from their NFKC forms: half-width katakana, full-width capitals.
LEGACY_DISTINCT = re.compile("[\uff21-\uff3a\uff61-\uff9f]+")
# letters, digits and `_` make words; so does each emoji (Meilisearch counts it as a word), other marks
# and symbols separate
WORD = re.compile("[^\\W]+|[\u2600-\u27bf\U0001f000-\U0001faff]")
SCRIPT_RUN = re.compile(
    "[\u3040-\u309f]+"  # hiragana
    "|[\u30a0-\u30ff\u31f0-\u31ff]+"  # katakana
    "|[\u3005-\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\U00020000-\U0002fa1f]+"  # han, hangul
    "|[^\u3005-\u3007\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
    "\U00020000-\U0002fa1f]+")
PARTICLES = set("がのをにではとへや")
HARD = re.compile("[" + re.escape("".join(sorted(HARD_SEPARATORS))) + "]")


def legacy_view(text: str) -> str:
    """The text as Meilisearch normalizes it: NFKC and lowercase, except half-width katakana and
    full-width capitals, which it leaves as they are.

    Our normalizer folds ｶﾒﾗ into カメラ and ＲＵＳＴ into rust (a user typing either should find both);
    Meilisearch does not, so a match that exists only through that folding ranks like a typo: found,
    after the literal ones.
    """
    if not LEGACY_DISTINCT.search(text):
        return unicodedata.normalize("NFKC", text).lower()
    out, last = [], 0
    for m in LEGACY_DISTINCT.finditer(text):
        out.append(unicodedata.normalize("NFKC", text[last:m.start()]).lower())
        out.append(m.group())
        last = m.end()
    out.append(unicodedata.normalize("NFKC", text[last:]).lower())
    return "".join(out)


ACCENTED = re.compile("[\u00c0-\u024f\u1e00-\u1eff]")


def _fold_word(word: str) -> str:
    return "".join(_fold(ch) for ch in word) if ACCENTED.search(word) else word


def words_of(text: str, terms: list[Term] = (), literal: bool = False) -> Words:
    """Split like Meilisearch counts positions: +1 per word, +8 across a hard separator.

    CJK runs split where the script changes and where a query word starts (and ends, unless it is a
    short kana prefix): Meilisearch's dictionary segmentation has a boundary there whenever the query
    word is a dictionary word, which is what users type.
    """
    s = legacy_view(text) if literal else unicodedata.normalize("NFKC", text).lower()
    pieces: list[tuple[str, int]] = []
    cjk_runs: list[tuple[str, list[tuple[int, int, int]]]] = []
    # a typed prefix like ラー is part of a longer word; three or more kana, or kanji, are a whole word
    cjk_terms = [(t.bare, t.prefix and len(t.bare) < 3 and any(_script(c) != "han" for c in t.bare))
                 for t in terms if t.cjk and t.bare]
    pos = -1
    prev_end = 0
    for m in WORD.finditer(s):
        word = _fold_word(m.group())
        hard = pos >= 0 and HARD.search(s, prev_end, m.start()) is not None
        prev_end = m.end()
        if word.isascii():
            pos = 0 if pos < 0 else pos + (8 if hard else 1)
            pieces.append((word, pos))
            continue
        cuts = {0, len(word)}
        for r in SCRIPT_RUN.finditer(word):
            cuts.add(r.start())
            if r.end() - r.start() > 1 and word[r.start()] in PARTICLES:
                cuts.add(r.start() + 1)  # が|きれい: a particle opening a hiragana run is a word
        for bare, prefix in cjk_terms:
            start = word.find(bare)
            while start >= 0:
                cuts.add(start)
                if not prefix:
                    cuts.add(start + len(bare))
                start = word.find(bare, start + 1)
        bounds = sorted(cuts)
        first = True
        run_text, run_pieces = "", []
        for start, end in zip(bounds, bounds[1:]):
            piece = word[start:end]
            pos = 0 if pos < 0 else pos + (8 if first and hard else 1)
            first = False
            pieces.append((piece, pos))
            if is_cjk(piece[0]):
                run_pieces.append((len(run_text), len(run_text) + len(piece), pos))
                run_text += piece
            elif run_text:
                cjk_runs.append((run_text, run_pieces))
                run_text, run_pieces = "", []
        if run_text:
            cjk_runs.append((run_text, run_pieces))
    return Words(pieces, cjk_runs)


def _occurrences(term: Term, words: Words, others: tuple[str, ...] = ()) -> list[tuple[int, bool]]:
    """(position, exact) for every place the term matches the document; `others` are the other CJK
    query words (コーヒーライブ holds コーヒー when ライブ is asked for too)."""
    found = []
    bare = term.bare
    if not term.cjk:
        for word, pos in words.pieces:
            if word == bare:
                found.append((pos, True))
            elif term.prefix and word.startswith(bare):
                found.append((pos, False))
        return found
    katakana = all(_script(c) == "kata" for c in bare)
    for run_text, run_pieces in words.cjk_runs:
        start = run_text.find(bare)
        while start >= 0:
            end = start + len(bare)
            if katakana and ((start > 0 and _script(run_text[start - 1]) == "kata"
                              and not any(run_text.endswith(o, 0, start) for o in others)) or
                             (not term.prefix and end < len(run_text) and _script(run_text[end]) == "kata"
                              and not any(run_text.startswith(o, end) for o in others))):
                # データ inside データベース: a dictionary segmenter sees one longer word, not this one
                start = run_text.find(bare, start + 1)
                continue
            pos = next((p for s, e, p in run_pieces if s <= start < e), run_pieces[-1][2])
            exact = any(e == end for _, e, _ in run_pieces)
            found.append((pos, exact))
            start = run_text.find(bare, start + 1)
    return found


def _distance(a: int, b: int) -> int:
    return min(b - a if a < b else a - b + 1, MAX_DISTANCE)


def _position_cost(position: int) -> int:
    for bound, cost in ((0, 0), (1, 1), (4, 2), (7, 3), (11, 4), (16, 5), (24, 6), (64, 7), (256, 8), (1024, 9)):
        if position <= bound:
            return cost
    return 10


@functools.lru_cache(maxsize=256)
def _query_stream(terms: tuple[Term, ...]) -> str:
    return " ".join(w for w, _ in words_of(" ".join(t.bare for t in terms), terms).pieces)


def rank_key(terms: list[Term], content: str) -> tuple[int, int, int, int]:
    """(typo, proximity, word position, exactness) within a words-bucket; lower ranks first."""
    words = words_of(content, terms, literal=True)
    cjk = tuple(t.bare for t in terms if t.cjk)
    occ = [_occurrences(t, words, cjk) for t in terms]
    typo = 0
    if any(not o for o in occ):  # found only through width folding (ｶﾒﾗ for カメラ): Meilisearch would not
        typo = 1
        words = words_of(content, terms)
        occ = [_occurrences(t, words, cjk) for t in terms]
        if any(not o for o in occ):  # matched by the index but not word for word: a lower words-bucket
            return (UNMATCHED, 0, 0, 0)
    proximity = sum(min(_distance(a, b) for a, _ in occ[i] for b, _ in occ[i + 1]) for i in range(len(terms) - 1))
    # Meilisearch's word-position cost: how far each word sits from where it stands in the query
    position = sum(min(_position_cost(abs(p - i)) for p, _ in o) for i, o in enumerate(occ))
    query_stream = _query_stream(tuple(terms))
    stream = words.stream
    if stream == query_stream:
        exactness = 0
    elif stream.startswith(query_stream + " "):  # whole words only: a prefix match is not a start
        exactness = 1
    else:
        exactness = 2 + sum(1 for o in occ if not any(e for _, e in o))
    return (typo, proximity, position, exactness)


# --------------------------------------------------------------------------- queries

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
