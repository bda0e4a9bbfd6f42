"""Meilisearch's bucket order emulated on a candidate's text: words, typo, proximity, attribute, exactness.

Word positions are counted the way Meilisearch counts them (a hard separator such as `。` moves 8
positions, an emoji is a word), with CJK runs split where the script changes or a query word begins —
a cheap stand-in for Meilisearch's dictionary segmentation — and a katakana query word must not sit
inside a longer katakana word.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

from search_migration.search.query import Term
from search_migration.search.text import _fold, is_cjk

MAX_DISTANCE = 8
UNMATCHED = 9  # rank_key's first element for a row whose words do not all match
HARD_SEPARATORS = set(".!?;。、！？；\n\r…")


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

