"""Meilisearch 1.21's matching and ranking rules (milli), applied to words indexed the way it indexes them.

Index side: the product's five searchable attributes in order (title, summary, content, author, tags:
field ids 0-4, legacy_documents.INDEX_SETTINGS) are cut into words by segment.py (charabia's rules) and
stored in one tsvector: each word's position is `fid * SLOT + position-in-attribute + 1`, labelled with
the attribute's weight (A title, B summary, C content, D author and tags), so the GIN index finds a word
and ranking reads back which attribute and where.

Query side (milli search/new): the query's words come from the same tokenizer; the last word is a prefix
unless the query ends with a separator; each word derives
- its exact form and, as the last word, every indexed word it starts (0 typos, not exact);
- typo words from the index's vocabulary: none under 5 characters, 1 typo from 5, 2 from 9 (characters
  of the normalized word, kana decomposed: デ is two), Damerau (OSA) distance, the last word matched as a
  prefix with typos; with 1 typo the first character must agree; with 2, a different first character
  costs both typos; at most 150 one-typo and 50 two-typo words, in byte order (milli `limits`).
Ranking (default rules: words, typo, proximity, attribute, sort, exactness; ties in insertion order):
words with matchingStrategy `last` (all words, then drop from the right), typo (sum of each word's
fewest typos), proximity (sum over adjacent query words of their closest distance in one attribute,
d = p2 - p1 forward or p1 - p2 + 1 backward, 8 beyond 7), attribute = fid (sum of each word's best
attribute) then word position (sum of milli's cost_from_distance over the bucketed position against the
word's place in the query; an ngram from the i-th word at p costs cost(|p - i| + k) for its k-th word),
exactness (an attribute that is exactly the query's words, then one starting with them, then how many
words match exactly).

Ngrams (2 or 3 adjacent query words concatenated, as one indexed word) match, at a typo cost of n words.
Not reproduced: split words (`tables` found as `tab les`, needs pair frequencies), typos inside ngrams, the 50-word cap on prefix derivations outside milli's prefix database.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from search_migration.search import segment

FIELDS = ("title", "summary", "content", "author", "tags")
SLOT = 3000  # positions per attribute in the tsvector (5 x 3000 < 16383, PostgreSQL's limit)
WEIGHTS = "ABCDD"
MIN_ONE_TYPO, MIN_TWO_TYPOS = 5, 9  # typoTolerance.minWordSizeForTypos defaults
MAX_ONE_TYPO_COUNT, MAX_TWO_TYPOS_COUNT = 150, 50  # milli search/new/limits.rs
FAR = 8  # proximity cost of two words farther apart than 7 (or in different attributes)


# ------------------------------------------------------------------ index side
def document_words(fields: list) -> dict[str, list[int]]:
    """Every word of the document with its encoded positions (fid * SLOT + position + 1), reading order."""
    out: dict[str, list[int]] = {}
    seen: dict[str, list] = {}  # a value repeated in another attribute (summary = content, title = content)
    for fid, value in enumerate(fields):
        if value is None or value == "" or value == []:
            continue
        base = fid * SLOT + 1
        if isinstance(value, str):
            got = seen.get(value)
            if got is None:
                got = seen[value] = segment.field_words(value)
        else:
            got = segment.field_words(value)
        for word, pos in got:
            p = base + (pos if pos < SLOT - 1 else SLOT - 1)
            found = out.get(word)
            if found is None:
                out[word] = [p]
            elif found[-1] != p and len(found) < 256:
                found.append(p)
    return out


_LABELLED = tuple(f"{p}{WEIGHTS[(p - 1) // SLOT]}" if p else "" for p in range(len(FIELDS) * SLOT + 1))


def tsvector_literal(words: dict[str, list[int]]) -> str:
    parts = []
    labelled = _LABELLED
    for word, ps in words.items():
        if "'" in word or "\\" in word:
            word = word.replace("\\", "\\\\").replace("'", "''")
        parts.append("'" + word + "':" + (labelled[ps[0]] if len(ps) == 1 else ",".join([labelled[p] for p in ps])))
    return " ".join(parts)


def decode(position: int) -> tuple[int, int]:
    """(fid, position in the attribute) of an encoded tsvector position."""
    return (position - 1) // SLOT, (position - 1) % SLOT


# ------------------------------------------------------------------ query side
@dataclass
class QueryWord:
    word: str
    index: int  # its place in the query (milli's term position)
    prefix: bool
    derivations: dict[str, int] = field(default_factory=dict)  # word -> typos (prefix matches: 0)
    ngrams: list[tuple[str, int, bool]] = field(default_factory=list)  # (word, words covered, prefix) from here
    # indexed words a prefix (its own, or an ngram's from here) starts, when few; None: many (pg_search.py)
    completions: dict[str, list[str] | None] = field(default_factory=dict)

    @property
    def max_typos(self) -> int:
        return max_typos(self.word)


def parse(q: str) -> list[QueryWord]:
    words = segment.query_words(q)
    if not words:
        return []
    ends_open = not segment._is_separator_char(q[-1])  # "foo " asks for the whole word foo
    terms = [QueryWord(w, i, ends_open and i == len(words) - 1) for i, w in enumerate(words)]
    for i, t in enumerate(terms):  # milli's ngrams: 2 and 3 adjacent query words as one indexed word
        for n in (2, 3):
            if i + n <= len(terms):
                joined = "".join(x.word for x in terms[i:i + n])
                if len(joined.encode()) <= segment.MAX_WORD_BYTES:
                    t.ngrams.append((joined, n, terms[i + n - 1].prefix))
    return terms


def max_typos(word: str) -> int:
    n = len(word)
    return 0 if n < MIN_ONE_TYPO else 1 if n < MIN_TWO_TYPOS else 2


def osa(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment (Damerau) distance, or limit + 1 when larger."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2, prev = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        best = cur[0]
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            v = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                v = min(v, prev2[j - 2] + 1)
            cur[j] = v
            best = min(best, v)
        if best > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1] if prev[-1] <= limit else limit + 1


def distance(query: str, word: str, limit: int, prefix: bool) -> int:
    """Typos between a query word and an indexed word; as a prefix, against the word's best prefix."""
    if not prefix:
        return osa(query, word, limit)
    best = limit + 1
    for m in range(max(0, len(query) - limit), min(len(word), len(query) + limit) + 1):
        best = min(best, osa(query, word[:m], limit))
        if best == 0:
            break
    return best


def typo_derivations(qw: QueryWord, vocabulary: list[str]) -> dict[str, int]:
    """The vocabulary words qw matches with typos, and how many (milli's one/two-typo derivations)."""
    k = qw.max_typos
    if k == 0:
        return {}
    first = qw.word[0]
    one, two = [], []
    for w in sorted(set(vocabulary)):
        if w == qw.word or (qw.prefix and w.startswith(qw.word)):
            continue
        if w[0] != first:
            if k == 2 and distance(qw.word, w, 1, qw.prefix) == 1:
                two.append(w)  # a typo on the first letter counts as two
            continue
        d = distance(qw.word, w, k, qw.prefix)
        if d == 1:
            one.append(w)
        elif d == 2 and k == 2:
            two.append(w)
    out = {w: 1 for w in one[:MAX_ONE_TYPO_COUNT]}
    out.update({w: 2 for w in two[:MAX_TWO_TYPOS_COUNT]})
    return out


# ------------------------------------------------------------------ ranking
def cost_from_distance(d: int) -> int:
    for bound, cost in ((0, 0), (1, 1), (4, 2), (7, 3), (11, 4), (16, 5), (24, 6), (64, 7), (256, 8), (1024, 9)):
        if d <= bound:
            return cost
    return 10


@functools.lru_cache(maxsize=4096)
def bucketed_position(p: int) -> int:
    """milli's word_position_docids key: positions under 16 kept, 16-23 -> 24, then powers of two."""
    if p < 16:
        return p
    if p < 24:
        return 24
    b = 1
    while b < p:
        b <<= 1
    return b


def _proximity(a: list[int], b: list[int]) -> int:
    best = FAR
    for p1 in a:
        f1 = (p1 - 1) // SLOT
        for p2 in b:
            if (p2 - 1) // SLOT != f1:
                continue
            d = p2 - p1 if p2 > p1 else p1 - p2 + 1
            if d < best:
                best = d
                if d == 1:
                    return 1
    return best


def cheapest_cover(single: list[int], spans: set[tuple[int, int]]) -> tuple[int, list[int], list[int]]:
    """milli's typo rule: the cheapest cover of the query words by single words (their typos) and the
    ngrams the document holds, an n-gram costing n (milli typo.rs: "Ngrams have a base typo cost",
    `base_cost = term_ids.len()`), so a document holding 東 and 京 ranks before one holding 東京.
    Returns (cost, cost of covering the words before i, cost of covering the words from i): a choice at
    word i lies on a cheapest cover when before[i] + its cost + from[after it] == cost."""
    infinite = 99 * (len(single) + 1)
    before = [0] + [infinite] * len(single)
    for j in range(1, len(single) + 1):
        before[j] = before[j - 1] + single[j - 1]
        for n in (2, 3):
            if j >= n and (j - n, n) in spans:
                before[j] = min(before[j], before[j - n] + n)
    after = [infinite] * len(single) + [0]
    for j in range(len(single) - 1, -1, -1):
        after[j] = single[j] + after[j + 1]
        for n in (2, 3):
            if (j, n) in spans:
                after[j] = min(after[j], n + after[j + n])
    return before[-1], before, after


def ngram_position_cost(position: int, first: int, n: int) -> int:
    """milli's position cost of n query words from the first-th, held as one word (n = 1: a word alone)
    at `position` in its attribute: the distance is counted from the first word's place, plus one per
    word after it (milli position/mod.rs)."""
    d = abs(bucketed_position(position) - first)
    return sum(cost_from_distance(d + k) for k in range(n))


def _position(terms: list[QueryWord], matches: list[list[tuple[int, list[int]]]],
              spans: dict[tuple[int, int], list[int]]) -> int:
    """The position rule's cost: the cheapest cover by (typos, position), each word alone or ngram at its
    best position in any attribute."""
    best: list[tuple[int, int] | None] = [(0, 0)] + [None] * len(terms)
    for j in range(1, len(terms) + 1):
        options = []
        if best[j - 1] is not None:
            for d, ps in matches[j - 1]:
                cost = min(ngram_position_cost((p - 1) % SLOT, j - 1, 1) for p in ps)
                options.append((best[j - 1][0] + d, best[j - 1][1] + cost))
        for n in (2, 3):
            ps = spans.get((j - n, n))
            if ps and best[j - n] is not None:
                cost = min(ngram_position_cost((p - 1) % SLOT, j - n, n) for p in ps)
                options.append((best[j - n][0] + n, best[j - n][1] + cost))
        best[j] = min(options, default=None)
    return best[-1][1]


def longer_fields(found: dict[str, list[int]], n: int) -> set[int]:
    """The attributes holding a word at position n or later (more words than an n-word query), from every
    word of a document."""
    return {(p - 1) // SLOT for ps in found.values() for p in ps if (p - 1) % SLOT >= n}


def rank_key(terms: list[QueryWord], found: dict[str, list[int]], longer: set[int] | None = None) -> tuple | None:
    """(typo, proximity, fid, position, exactness) of a document for these query words, from the
    positions of the words it holds (`found`: indexed word -> encoded positions); None if a word is missing.
    `longer`: the attributes with more words than the query (longer_fields; by default from `found`, which
    then must hold every word of the document): an attribute that is exactly the query ranks first."""
    exact_words = 0
    exact_positions: list[list[int]] = []
    spans: dict[tuple[int, int], list[int]] = {}  # (first word, words) of the ngrams the document holds
    for i, t in enumerate(terms):
        for word, n, prefix in t.ngrams:
            if i + n > len(terms):
                continue
            for w, ps in found.items():
                if w == word or (prefix and i + n == len(terms) and w.startswith(word)):
                    spans.setdefault((i, n), []).extend(ps)
    matches: list[list[tuple[int, list[int]]]] = []  # each word's (typos, positions) alone
    for t in terms:
        held, exact = [], []
        for w, ps in found.items():
            d = t.derivations.get(w)
            if d is None and t.prefix and w.startswith(t.word):
                d = 0
            if d is None:
                continue
            held.append((d, ps))
            if w == t.word:
                exact = ps
        exact_words += bool(exact)
        exact_positions.append(exact)
        matches.append(held)
    single = [min((d for d, _ in held), default=99) for held in matches]
    typos, before, after = cheapest_cover(single, set(spans))
    if typos >= 99:
        return None
    position = _position(terms, matches, spans)
    # the later rules see only the words of the typo bucket's covers (milli hands its query graph on):
    # 東京 held at position 0 does not place a document that holds 東 and 京 apart
    per_term: list[list[int]] = [[] for _ in terms]
    for i, held in enumerate(matches):
        for d, ps in held:
            if before[i] + d + after[i + 1] == typos:
                per_term[i].extend(ps)
    for (i, n), ps in spans.items():
        if before[i] + n + after[i + n] == typos:
            for j in range(i, i + n):
                per_term[j].extend(ps)
    proximity = sum(_proximity(per_term[i], per_term[i + 1]) for i in range(len(terms) - 1))
    fid = sum(min((p - 1) // SLOT for p in ps) for ps in per_term)
    starting = [f for f in range(len(FIELDS)) if all(f * SLOT + 1 + i in exact_positions[i] for i in range(len(terms)))]
    if longer is None and starting:
        longer = longer_fields(found, len(terms))
    # milli's exactness: an attribute equal to the query, then one starting with it, then exact words
    level = 2 if not starting else 0 if any(f not in longer for f in starting) else 1
    exactness = (level, len(terms) - exact_words)
    return (typos, proximity, fid, position, exactness)
