"""Text normalization and index tokens, identical on the write path and at query time.

Bump NORMALIZER_VERSION whenever `normalize` or `index_tokens` changes output: documents carry the
version they were built with and search filters on the current one, so a change is a re-backfill,
never a silent mix of two tokenizations.
"""

from __future__ import annotations

import re
import unicodedata

NORMALIZER_VERSION = 2  # v2: Vietnamese Latin folded, marks only on letters, CJK #tags/@mentions kept whole
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


def cjk_grams(run: str) -> list[str]:
    """Overlapping bigrams plus the final unigram, so a 1-character query still finds the run's end."""
    if len(run) == 1:
        return [run]
    return [run[i:i + 2] for i in range(len(run) - 1)] + [run[-1]]


def index_tokens(normalized: str) -> list[tuple[str, int]]:
    """(token, position) pairs, positions from 1 in reading order."""
    tokens: list[tuple[str, int]] = []
    pos = 0
    for word in normalized.split():
        pending_tag = ""
        for cjk, run in runs(word):
            if not cjk and run[-1] in "#@" and not run.strip("#@"):
                pending_tag = run[-1]  # `#ラーメン`: the tag mark before a CJK run
                continue
            if cjk:
                if pending_tag:  # the tag is a token of its own, besides the run's bigrams
                    tokens.append((pending_tag + run, pos + 1))
                grams = cjk_grams(run)
                for i, gram in enumerate(grams):
                    # the trailing unigram shares the last bigram's position
                    tokens.append((gram, pos + min(i, len(grams) - 2) + 1 if len(grams) > 1 else pos + 1))
                pos += max(1, len(grams) - 1)
            elif run.strip("#@_"):  # a lone `#` or `@` is not a word
                pos += 1
                tokens.append((run, pos))
                bare = run.lstrip("#@")
                if bare and bare != run:  # `#nostr` is also found by `nostr`
                    tokens.append((bare, pos))
            pending_tag = ""
    return tokens


def tsvector_literal(tokens: list[tuple[str, int]]) -> str:
    """A `tsvector` input literal with explicit positions (no parser, no stemming)."""
    positions: dict[str, list[int]] = {}
    for token, pos in tokens:
        found = positions.get(token)
        if found is None:
            positions[token] = [min(pos, MAX_POSITION)]
        else:
            found.append(min(pos, MAX_POSITION))
    parts = []
    for token, ps in positions.items():
        if "'" in token or "\\" in token:
            token = token.replace("\\", "\\\\").replace("'", "''")
        listed = str(ps[0]) if len(ps) == 1 else ",".join(map(str, sorted(set(ps))[:256]))
        parts.append(f"'{token}':{listed}")
    return " ".join(parts)
