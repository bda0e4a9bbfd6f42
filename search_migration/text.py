"""Text normalization and index tokens, identical on the write path and at query time.

Bump NORMALIZER_VERSION whenever `normalize` or `index_tokens` changes output: documents carry the
version they were built with and search filters on the current one, so a change is a re-backfill,
never a silent mix of two tokenizations.
"""

from __future__ import annotations

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


def normalize(text: str) -> str:
    """NFKC, lowercase, Latin accent folding, symbols and emoji to spaces, `#` and `@` kept."""
    out = []
    for ch in unicodedata.normalize("NFKC", text).lower():
        cat = unicodedata.category(ch)
        if cat[0] in "LN" or ch in KEEP:
            out.append(_fold(ch))
        elif cat[0] == "M" and out and out[-1].isalpha() and not _is_latin(out[-1]):
            out.append(ch)  # a mark on a non-Latin letter is part of it (an emoji's selector is not)
        else:
            out.append(" ")
    return " ".join("".join(out).split())


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


def runs(normalized: str) -> list[tuple[bool, str]]:
    """Split normalized text into (is_cjk, run) pieces: CJK runs and Latin/digit words."""
    pieces: list[tuple[bool, str]] = []
    for word in normalized.split():
        current, kind = [], None
        for ch in word:
            cjk = is_cjk(ch)
            if kind is not None and cjk != kind:
                pieces.append((kind, "".join(current)))
                current = []
            current.append(ch)
            kind = cjk
        if current:
            pieces.append((kind, "".join(current)))
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
        positions.setdefault(token, []).append(min(pos, MAX_POSITION))
    parts = []
    for token, ps in positions.items():
        escaped = token.replace("\\", "\\\\").replace("'", "''")
        parts.append(f"'{escaped}':{','.join(str(p) for p in sorted(set(ps))[:256])}")
    return " ".join(parts)
