"""Text normalization for stored documents and shadow-log query hashes, and the index format's version.

Bump NORMALIZER_VERSION whenever what a document indexes changes (`normalize`, or Meilisearch's words in
segment.py / milli.py): documents carry the version they were built with and search filters on the
current one, so a change is a re-backfill, never a silent mix of two tokenizations.
"""

from __future__ import annotations

import unicodedata

NORMALIZER_VERSION = 4  # v4: Chinese-detected ideographs folded by kVariants as charabia does; v3: Meilisearch 1.21 words (segment.py) of the five attributes, milli.py; v2: Vietnamese Latin folded, marks only on letters, CJK #tags/@mentions kept whole
KEEP = {"#", "@", "_"}


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
