"""PostgreSQL search that ranks like the legacy Meilisearch index, so the two agree on the top results.

Matching uses the normalizer's tokens (CJK bigrams, Latin words) through the GIN index; ranking
follows Meilisearch's default bucket sort on a bounded candidate set:

1. words      matching strategy `last`: all query words, then drop words from the right;
2. typo       the last word matches as a prefix (a prefix is a zero-typo match in Meilisearch); a
              match only through half-width kana folding, which Meilisearch lacks, counts as a typo;
3. proximity  sum over adjacent query words of their closest distance in word positions (max 8);
4. attribute  one searchable attribute, so only word position: how far each word sits from its place
              in the query, bucketed like Meilisearch (0, 1, 2-4, 5-7, 8-11, ...);
5. exactness  content equals the query > content starts with it > more words matched exactly;
6. tie-break  Meilisearch returns equal documents in internal-id order; the legacy index was built
              in event-id order, so ascending post id mirrors it.

Candidates are read in tie-break order and capped, so a very frequent word ranks a bounded set: the
first documents of the best bucket in post-id order are exactly Meilisearch's as long as that bucket
shows up among the candidates. Word positions are computed the way Meilisearch counts them (a hard
separator such as `。` moves 8 positions), with CJK runs split where the script changes — a cheap
stand-in for Meilisearch's dictionary segmentation.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import psycopg

from .text import NORMALIZER_VERSION, _fold, is_cjk, normalize, runs

MAX_TOTAL_HITS = 10_000  # the legacy index's pagination.maxTotalHits: totals stop where Meilisearch's do
CANDIDATES = 600  # per words-bucket; enough for the best bucket of a frequent word to show up
SUGGEST_CANDIDATES = 150
MAX_DISTANCE = 8
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
    """Query words in order: Latin/digit words and CJK runs, `#`/`@` tags kept whole."""
    words: list[tuple[str, bool]] = []
    for word in normalize(q).split():
        tag = ""
        for cjk, run in runs(word):
            if not cjk and not run.strip("#@_"):
                tag = run[-1] if run[-1] in "#@" else ""
                continue
            words.append(((tag + run) if cjk and tag else run, cjk))
            tag = ""
    return [Term(text, cjk, i == len(words) - 1) for i, (text, cjk) in enumerate(words)]


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


def legacy_view(text: str) -> str:
    """The text as Meilisearch normalizes it: NFKC and lowercase, but half-width katakana left as is.

    Our normalizer folds ｶﾒﾗ into カメラ (a user typing either should find both); Meilisearch does not,
    so a match that exists only after that folding ranks like a typo: found, after the literal ones.
    """
    parts = []
    for half, chunk in _width_chunks(text):
        parts.append(chunk if half else unicodedata.normalize("NFKC", chunk))
    return "".join(parts).lower()


def _width_chunks(text: str):
    start = 0
    for i in range(1, len(text) + 1):
        if i == len(text) or _half_kana(text[i]) != _half_kana(text[start]):
            yield _half_kana(text[start]), text[start:i]
            start = i


def _half_kana(ch: str) -> bool:
    return "\uff61" <= ch <= "\uff9f"


def words_of(text: str, terms: list[Term] = (), literal: bool = False) -> Words:
    """Split like Meilisearch counts positions: +1 per word, +8 across a hard separator.

    CJK runs split where the script changes and where a query word starts (and ends, unless it is a
    short kana prefix): Meilisearch's dictionary segmentation has a boundary there whenever the query word is
    a dictionary word, which is what users type.
    """
    s = legacy_view(text) if literal and text else unicodedata.normalize("NFKC", text).lower()
    pieces: list[tuple[str, int]] = []
    cjk_runs: list[tuple[str, list[tuple[int, int, int]]]] = []
    # a typed prefix like ラー is part of a longer word; three or more kana, or kanji, are a whole word
    cjk_terms = [(t.bare, t.prefix and len(t.bare) < 3 and any(_script(c) != "han" for c in t.bare))
                 for t in terms if t.cjk and t.bare]
    pos = -1
    hard = False
    current: list[str] = []

    def flush() -> None:
        nonlocal pos, hard
        if not current:
            return
        word = "".join(current)
        current.clear()
        cuts = {0, len(word)}
        cuts.update(i for i in range(1, len(word)) if _script(word[i]) != _script(word[i - 1]))
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
            if _script(piece[0]) != "latin":
                run_pieces.append((len(run_text), len(run_text) + len(piece), pos))
                run_text += piece
            elif run_text:
                cjk_runs.append((run_text, run_pieces))
                run_text, run_pieces = "", []
        if run_text:
            cjk_runs.append((run_text, run_pieces))
        hard = False

    for ch in s:
        cat = unicodedata.category(ch)
        if cat[0] in "LN" or ch == "_":
            current.append(_fold(ch))
        elif cat[0] == "M" and current and current[-1].isalpha() and not current[-1].isascii():
            current.append(ch)
        else:
            flush()
            if ch in HARD_SEPARATORS:
                hard = True
    flush()
    return Words(pieces, cjk_runs)


def _occurrences(term: Term, words: Words) -> list[tuple[int, bool]]:
    """(position, exact) for every place the term matches the document."""
    found = []
    bare = term.bare
    if not term.cjk:
        for word, pos in words.pieces:
            if word == bare:
                found.append((pos, True))
            elif term.prefix and word.startswith(bare):
                found.append((pos, False))
        return found
    for run_text, run_pieces in words.cjk_runs:
        start = run_text.find(bare)
        while start >= 0:
            end = start + len(bare)
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


def rank_key(terms: list[Term], content: str) -> tuple[int, int, int, int]:
    """(typo, proximity, word position, exactness) within a words-bucket; lower ranks first."""
    words = words_of(content, terms, literal=True)
    occ = [_occurrences(t, words) for t in terms]
    typo = 0
    if any(not o for o in occ):  # found only through width folding (ｶﾒﾗ for カメラ): Meilisearch would not
        typo = 1
        words = words_of(content, terms)
        occ = [_occurrences(t, words) for t in terms]
        if any(not o for o in occ):  # matched by the index but not by word: last in its bucket
            return (2, MAX_DISTANCE * len(terms), 10 * len(terms), 2 + len(terms))
    proximity = sum(min(_distance(a, b) for a, _ in occ[i] for b, _ in occ[i + 1]) for i in range(len(terms) - 1))
    # Meilisearch's word-position cost: how far each word sits from where it stands in the query
    position = sum(min(_position_cost(abs(p - i)) for p, _ in o) for i, o in enumerate(occ))
    query_stream = " ".join(w for w, _ in words_of(" ".join(t.bare for t in terms), terms).pieces)
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

CANDIDATES_SQL = f"""
SELECT post_id, topic_id, content FROM cn_search.post_search_documents
WHERE topic_id = %(topic)s AND {LIVE} AND search_tokens @@ %(match)s::tsquery
  AND NOT (search_tokens @@ %(better)s::tsquery)
ORDER BY post_id LIMIT %(limit)s
"""

TOTAL_SQL = f"""
SELECT count(*) FROM (
    SELECT 1 FROM cn_search.post_search_documents
    WHERE topic_id = %(topic)s AND {LIVE} AND search_tokens @@ %(match)s::tsquery
    LIMIT %(cap)s) AS capped
"""

SUGGEST_SQL = f"""
SELECT post_id, topic_id, content FROM cn_search.post_search_documents
WHERE {LIVE} AND search_tokens @@ %(match)s::tsquery AND NOT (search_tokens @@ %(better)s::tsquery)
ORDER BY post_id LIMIT %(limit)s
"""

NOTHING = "'\\x01never'"  # a tsquery no document matches: "nothing better" for the top bucket


@dataclass
class Page:
    items: list[dict]
    total: int
    next_offset: int | None


def _ranked(rows, terms: list[Term]) -> list[tuple]:
    return sorted(rows, key=lambda r: (rank_key(terms, r[2]), r[0], r[1]))


def _buckets(terms: list[Term]):
    """(match, better) tsqueries for each words-bucket, all words first (strategy `last`)."""
    for k in range(len(terms), 0, -1):
        yield terms[:k], bucket_tsquery(terms[:k]), bucket_tsquery(terms[:k + 1]) if k < len(terms) else NOTHING


def search(conn: psycopg.Connection, topic: str, q: str, limit: int = 20, offset: int = 0) -> Page:
    """One page of a topic's results in Meilisearch's order, and the total (capped like Meilisearch's)."""
    terms = parse_query(q)
    if not terms or limit <= 0:
        return Page([], 0, None)
    want = offset + limit
    ranked: list[tuple] = []
    for bucket_terms, match, better in _buckets(terms):
        rows = conn.execute(CANDIDATES_SQL, {"topic": topic, "version": NORMALIZER_VERSION, "match": match,
                                             "better": better, "limit": CANDIDATES + want}).fetchall()
        ranked.extend(_ranked(rows, bucket_terms))
        if len(ranked) >= want:
            break
    total = conn.execute(TOTAL_SQL, {"topic": topic, "version": NORMALIZER_VERSION,
                                     "match": terms[0].tsquery() if len(terms) > 1 else bucket_tsquery(terms),
                                     "cap": MAX_TOTAL_HITS}).fetchone()[0]
    page = ranked[offset:want]
    items = [{"event_id": r[0], "topic_id": r[1]} for r in page]
    return Page(items, total, want if want < min(total, MAX_TOTAL_HITS) else None)


def suggest(conn: psycopg.Connection, q: str, limit: int = 5) -> list[dict]:
    """Prefix autocomplete across topics: the best posts for what has been typed so far, one per post.

    Its own fast path: a small candidate cap, no total, and a second bucket only when the first is short.
    """
    terms = parse_query(q)
    if not terms or limit <= 0:
        return []
    seen: set[str] = set()
    items: list[dict] = []
    for bucket_terms, match, better in _buckets(terms):
        rows = conn.execute(SUGGEST_SQL, {"version": NORMALIZER_VERSION, "match": match, "better": better,
                                          "limit": SUGGEST_CANDIDATES + 3 * limit}).fetchall()
        for post_id, topic_id, content in _ranked(rows, bucket_terms):
            if post_id not in seen:
                seen.add(post_id)
                items.append({"event_id": post_id, "topic_id": topic_id, "text": content})
        if len(items) >= limit:
            break
    return items[:limit]
