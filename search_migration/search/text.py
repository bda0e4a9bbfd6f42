"""Text normalization and index tokens, identical on the write path and at query time.

Bump NORMALIZER_VERSION whenever `normalize` or `index_tokens` changes output: documents carry the
version they were built with and search filters on the current one, so a change is a re-backfill,
never a silent mix of two tokenizations.
"""

from __future__ import annotations

import re
import unicodedata

NORMALIZER_VERSION = 3  # v3: Meilisearch 1.21 words (segment.py) of the five attributes, milli.py; v2: Vietnamese Latin folded, marks only on letters, CJK #tags/@mentions kept whole
KEEP = {"#", "@", "_"}
MAX_POSITION = 16383  # PostgreSQL's tsvector position limit


def _is_latin(ch: str) -> bool:
    return (ch < "\u0250" or "\u1e00" <= ch <= "\u1eff") and ch.isalpha()


def _fold(ch: str) -> str:
    """Strip accents from Latin letters only: é → e, but が stays が (its dakuten is meaning)."""
    if not _is_latin(ch) or ch.isascii():
        return ch
    return "".join(c for c in unicodedata.normalize("NFD", ch) if not unicodedata.combining(c))


class _CharMap(dict):
    """Per-character normalization decisions, computed once per distinct character (str.translate)."""

    def __missing__(self, code: int) -> str:
        ch = chr(code)
        cat = unicodedata.category(ch)
        if cat[0] in "LN" or ch in KEEP:
            value = _fold(ch)
        elif cat[0] == "M":
            value = _MARK + ch  # kept or dropped by its neighbour: see normalize
        else:
            value = " "
        self[code] = value
        return value


_MARK = "\x00"
_CHARS = _CharMap()


def normalize(text: str) -> str:
    """NFKC, lowercase, Latin accent folding, symbols and emoji to spaces, `#` and `@` kept."""
    mapped = unicodedata.normalize("NFKC", text).lower().translate(_CHARS)
    if _MARK in mapped:  # rare: a combining mark that NFKC could not compose
        out: list[str] = []
        for piece in mapped.split(_MARK):
            if out and piece:
                mark, piece = piece[0], piece[1:]
                prev = out[-1][-1:] if out[-1] else ""
                out.append(mark if prev.isalpha() and not _is_latin(prev) else " ")
            out.append(piece)
        mapped = "".join(out)
    return " ".join(mapped.split())


def is_cjk(ch: str) -> bool:
    o = ord(ch)
    return (
        0x3040 <= o <= 0x30FF  # hiragana, katakana (incl. ー)
        or 0x3400 <= o <= 0x4DBF  # CJK extension A
        or 0x4E00 <= o <= 0x9FFF  # CJK unified ideographs
        or 0xF900 <= o <= 0xFAFF  # compatibility ideographs
        or 0x3005 <= o <= 0x3007  # 々 〆 〇
        or 0x31F0 <= o <= 0x31FF  # katakana phonetic extensions
        or 0xAC00 <= o <= 0xD7AF  # hangul syllables
        or 0x20000 <= o <= 0x2FA1F  # CJK extensions B+
    )


_CJK_CLASS = ("\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3005-\u3007\u31f0-\u31ff"
              "\uac00-\ud7af\U00020000-\U0002fa1f")  # the ranges of is_cjk, for the regex engine
_CJK_SPLIT = re.compile(f"([{_CJK_CLASS}]+)")


def runs(normalized: str) -> list[tuple[bool, str]]:
    """Split normalized text into (is_cjk, run) pieces: CJK runs and Latin/digit words."""
    pieces: list[tuple[bool, str]] = []
    for word in normalized.split():
        for i, piece in enumerate(_CJK_SPLIT.split(word)):  # odd pieces are the CJK runs
            if piece:
                pieces.append((i % 2 == 1, piece))
    return pieces


def token_positions(normalized: str) -> dict[str, list[int]]:
    """Each index token with its positions (from 1, in reading order): what a tsvector holds.

    CJK runs are overlapping bigrams plus a final unigram at the last bigram's position (so a
    1-character query still finds the run's end); Latin/digit runs are words; `#tag` and `@name` are
    tokens of their own and plain words too. One CJK split of the whole text, straight into the
    map: the backfill tokenizes every post, and this was half of its Python time
    (bench/backfill_1m.py).
    """
    positions: dict[str, list[int]] = {}

    def add(token: str, position: int) -> None:
        found = positions.get(token)
        if found is None:
            positions[token] = [position]
        else:
            found.append(position)

    pos = 0
    pending_tag = ""  # `#ラーメン`: a tag mark right before a CJK run, in the same word
    for i, piece in enumerate(_CJK_SPLIT.split(normalized)):
        if i % 2:  # odd pieces are the CJK runs
            if pending_tag:  # the tag sits where its run starts
                add(pending_tag + piece, pos + 1)
                pending_tag = ""
            for j in range(len(piece) - 1):
                add(piece[j:j + 2], pos + j + 1)
            pos += max(1, len(piece) - 1)
            add(piece[-1], pos)
            continue
        word = ""
        for word in piece.split():  # Latin/digit words (the first and last may touch a CJK run)
            if word.strip("#@_"):  # a lone `#` or `@` is not a word
                pos += 1
                add(word, pos)
                bare = word.lstrip("#@")
                if bare != word:  # `#nostr` is also found by `nostr`
                    add(bare, pos)
        # a word of tag marks only, touching the next CJK run
        pending_tag = word[-1] if word and not word.strip("#@") and not piece[-1].isspace() else ""
    return positions


def index_tokens(normalized: str) -> list[tuple[str, int]]:
    """(token, position) pairs in reading order: `token_positions` as a list, for reading and tests."""
    pairs = [(token, p) for token, ps in token_positions(normalized).items() for p in ps]
    return sorted(pairs, key=lambda pair: pair[1])


_POSITION_TEXT = tuple(map(str, range(MAX_POSITION + 1)))  # int formatting was a tenth of the backfill's Python


def tsvector_literal(positions: dict[str, list[int]]) -> str:
    """A `tsvector` input literal with explicit positions (no parser, no stemming)."""
    parts = []
    for token, ps in positions.items():
        if "'" in token or "\\" in token:
            token = token.replace("\\", "\\\\").replace("'", "''")
        if len(ps) == 1:
            p = ps[0]
            parts.append("'" + token + "':" + _POSITION_TEXT[p if p < MAX_POSITION else MAX_POSITION])
        else:
            parts.append("'" + token + "':" + ",".join(map(str, sorted({min(p, MAX_POSITION) for p in ps})[:256])))
    return " ".join(parts)
