"""The words Meilisearch indexes, with the positions it gives them, so PostgreSQL can index the same.

Meilisearch 1.21 tokenizes with charabia 0.9.7; this module follows its pipeline step by step:
1. cut the text into *script groups* (a new group starts where the script changes; digits, spaces
   and punctuation stay in the current group; fullwidth forms U+FF00-FFEF count as Hangul there);
2. detect each group's language as whatlang does: a CJK group is Japanese when its main script is
   kana, or when kana make more than 5 % of its kana + kanji, else Chinese. So a kanji-only post
   or a kanji-only run between Latin words is Chinese to Meilisearch (the product's indexes have no
   `localizedAttributes`, and queries are detected the same way);
3. split each group on charabia's separators; a piece that is all digits/ASCII punctuation is one
   word, a Japanese piece goes to lindera UniDic in decompose mode, a Chinese one to jieba (no HMM)
   plus charabia's dictionary bigram/trigram re-split, any other piece is one word;
4. normalize: NFKD, control characters out, separators classified (`. `, `, `, `!`, `?`, `;`,
   `、`, `。` ... are hard), lowercase and marks removed for Latin, katakana to hiragana (wana_kana
   rules, long vowel mark included) for Japanese;
5. positions: +1 after a soft separator, +8 after a hard one, +8 between values of an array field.

Measured against Meilisearch 1.21.0 (word spans recovered with `_matchesPosition` probes, see
test_segment.py) on 90 real Debian Reference sentences: F1 1.000 for 30 mixed ja/en, 30 kanji-only
runs, 10 Japanese and 10 English sentences; lemmas agree too. About 2,400 posts/s of 300 characters
on one core. Positions follow milli's `process_tokens` (Meilisearch's proximity scores agree).

Chinese kVariant folding as charabia's ChineseNormalizer does it (Meilisearch stores and queries 状 as
狀 in text it detects as Chinese, so a kanji-only query such as 状態 misses the 状態 of Japanese text):
the IRG kVariants table charabia embeds, shipped as kvariants.txt.
Not reproduced: Korean/Thai/Khmer/German segmenters (pieces stay whole);
Greek final sigma; the hard separators of rarer scripts (counted soft).
"""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from importlib import resources

SEGMENTER_VERSION = "charabia-0.9.7+lindera-unidic-decompose+jieba-0.42.1+kvariants/2"
# Meilisearch versions whose tokenizer this was verified against (token agreement on real text).
# v1.5.0 (the product's compose file) embeds charabia 0.8.x: no katakana->hiragana, pinyin for
# Chinese-detected text, an older lindera: words differ there.
VERIFIED_MEILISEARCH = ("1.21",)

MAX_DISTANCE = 8  # milli: hard separator gap and gap between array values
MAX_POSITION = 65536  # milli: positions per attribute
MAX_WORD_BYTES = 250  # milli MAX_WORD_LENGTH: longer words are not indexed
QUERY_WORDS_LIMIT = 10  # Meilisearch reads at most 10 query words


def matches_meilisearch(version: str) -> bool:
    """Whether `words` reproduces the tokenizer of the Meilisearch reporting `version` (`GET /version`)."""
    parts = version.strip().lstrip("v").split(".")
    return ".".join(parts[:2]) in VERIFIED_MEILISEARCH


# --- scripts (charabia detection::chars, first match wins) -------------------------------------
LATIN, CJ, HANGUL, CYRILLIC, GREEK, GEORGIAN = "Latin", "Cj", "Hangul", "Cyrillic", "Greek", "Georgian"
_SCRIPT_RANGES = sorted([
    *[(a, b, LATIN) for a, b in ((0x41, 0x5A), (0x61, 0x7A), (0x80, 0x24F), (0x250, 0x2AF), (0x1D00, 0x1DBF),
                                 (0x1E00, 0x1EFF), (0x2100, 0x214F), (0x2C60, 0x2C7F), (0xA720, 0xA7FF),
                                 (0xAB30, 0xAB6F))],
    *[(a, b, CYRILLIC) for a, b in ((0x400, 0x484), (0x487, 0x52F), (0x2DE0, 0x2DFF), (0xA640, 0xA69D),
                                    (0x1D2B, 0x1D2B), (0x1D78, 0x1D78), (0xA69F, 0xA69F))],
    *[(a, b, "Arabic") for a, b in ((0x600, 0x6FF), (0x750, 0x7FF), (0x8A0, 0x8FF), (0xFB50, 0xFDFF),
                                    (0xFE70, 0xFEFF), (0x10E60, 0x10E7F), (0x1EE00, 0x1EEFF))],
    *[(a, b, "Devanagari") for a, b in ((0x900, 0x97F), (0xA8E0, 0xA8FF), (0x1CD0, 0x1CFF))],
    (0x590, 0x5FF, "Hebrew"), (0x10A0, 0x10FF, GEORGIAN), (0x980, 0x9FF, "Bengali"),
    *[(a, b, "Ethiopic") for a, b in ((0x1200, 0x139F), (0x2D80, 0x2DDF), (0xAB00, 0xAB2F))],
    *[(a, b, HANGUL) for a, b in ((0xAC00, 0xD7AF), (0x1100, 0x11FF), (0x3130, 0x318F), (0x3200, 0x32FF),
                                  (0xA960, 0xA97F), (0xD7B0, 0xD7FF), (0xFF00, 0xFFEF))],
    (0x3040, 0x309F, "Hiragana"), (0x30A0, 0x30FF, "Katakana"),
    *[(a, b, "Mandarin") for a, b in ((0x2E80, 0x2E99), (0x2E9B, 0x2EF3), (0x2F00, 0x2FD5), (0x3005, 0x3005),
                                      (0x3007, 0x3007), (0x3021, 0x3029), (0x3038, 0x303B), (0x3400, 0x4DB5),
                                      (0x4E00, 0x9FCC), (0xF900, 0xFA6D), (0xFA70, 0xFAD9))],
    (0x370, 0x3FF, GREEK), (0xC80, 0xCFF, "Kannada"), (0xB80, 0xBFF, "Tamil"), (0xE00, 0xE7F, "Thai"),
    (0xA80, 0xAFF, "Gujarati"), (0xA00, 0xA7F, "Gurmukhi"), (0xC00, 0xC7F, "Telugu"), (0xD00, 0xD7F, "Malayalam"),
    (0xB00, 0xB7F, "Oriya"), (0x1000, 0x109F, "Myanmar"), (0xD80, 0xDFF, "Sinhala"), (0x1780, 0x17FF, "Khmer"),
    (0x19E0, 0x19FF, "Khmer"),
])
_STARTS = [r[0] for r in _SCRIPT_RANGES]
_KANA = ("Hiragana", "Katakana")


@functools.lru_cache(maxsize=8192)
def _fine_script(c: str) -> str | None:
    """whatlang's script of one character (kana and kanji apart), None for digits/punctuation/others."""
    o = ord(c)
    i = bisect.bisect_right(_STARTS, o) - 1
    if i >= 0 and _SCRIPT_RANGES[i][0] <= o <= _SCRIPT_RANGES[i][1]:
        return _SCRIPT_RANGES[i][2]
    return None


def _script(c: str) -> str | None:
    s = _fine_script(c)
    return CJ if s in _KANA or s == "Mandarin" else s


def _groups(text: str):
    """charabia's script groups: a script change starts a group; script-less characters stay put."""
    for m in _GROUP_RE.finditer(text.translate(_COARSE)):
        yield text[m.start():m.end()]


def _detect(group: str) -> tuple[str | None, str | None]:
    """(script, language) of a group as charabia asks whatlang: main script by count; CJK language."""
    fine = group.translate(_FINE)
    return _detect_fine(fine, 0, len(fine))


# Each character's script as one letter (str.translate tables filled on first sight of a character), so
# groups and detection run in C instead of a Python loop per character.
_SCRIPT_NAMES = sorted({r[2] for r in _SCRIPT_RANGES})
_LETTER = {name: chr(0x41 + i) for i, name in enumerate(_SCRIPT_NAMES)}
_NAME = {v: k for k, v in _LETTER.items()}
_CJ_LETTER = "#"
_NAME[_CJ_LETTER] = CJ
_KANA_LETTERS = (_LETTER["Hiragana"], _LETTER["Katakana"])
_HAN_LETTER = _LETTER["Mandarin"]


class _ScriptTable(dict):
    def __init__(self, coarse: bool):
        super().__init__()
        self.coarse = coarse

    def __missing__(self, code: int) -> str:
        s = _fine_script(chr(code))
        if s is None:
            letter = "."
        elif self.coarse and (s in _KANA or s == "Mandarin"):
            letter = _CJ_LETTER
        else:
            letter = _LETTER[s]
        self[code] = letter
        return letter


_FINE, _COARSE = _ScriptTable(False), _ScriptTable(True)
_GROUP_RE = re.compile(r"\.*([^.])(?:\1|\.)*|\.+")


def _detect_fine(fine: str, a: int, b: int) -> tuple[str | None, str | None]:
    """_detect on the fine script letters fine[a:b] of a group."""
    kana = fine.count(_KANA_LETTERS[0], a, b) + fine.count(_KANA_LETTERS[1], a, b)
    han = fine.count(_HAN_LETTER, a, b)
    if kana or han:  # a group holds one coarse script: CJK here
        return CJ, ("jpn" if not han or kana / (kana + han) > 0.05 else "cmn")
    for i in range(a, b):
        if fine[i] != ".":
            return _NAME[fine[i]], None
    return None, None


def _analyzed_groups(text: str):
    """(group, script, language) of each of charabia's script groups of `text`, in order."""
    fine = text.translate(_FINE)
    for m in _GROUP_RE.finditer(fine.translate(_FINE_TO_COARSE)):
        a, b = m.span()
        letter = m.group(1)
        if letter is None:
            yield text[a:b], None, None
        elif letter == _CJ_LETTER:
            yield (text[a:b], *_detect_fine(fine, a, b))
        else:
            yield text[a:b], _NAME[letter], None


_FINE_TO_COARSE = str.maketrans({_LETTER["Hiragana"]: _CJ_LETTER, _LETTER["Katakana"]: _CJ_LETTER,
                                 _LETTER["Mandarin"]: _CJ_LETTER})


def cjk_language(text: str) -> str:
    """The language Meilisearch gives a CJK run indexed on its own ("jpn" or "cmn")."""
    return _detect(text)[1] or "cmn"


# --- separators (charabia DEFAULT_SEPARATORS, CONTEXT_SEPARATORS) ------------------------------
# Punctuation and spaces separate, minus these; of the math symbols only + ± × ÷ and U+2212-22FF
# do, so `$ < = > ^ | ~` stay inside words (`--color=never` -> `color=never`).
_NOT_SEPARATORS = set("\u00a0\u037e\u0387\u061d\u066b\u066c\u0f0c\u1b7d\u1b7e\u2000\u2001\u2011\u2028\u202f"
                      "\u205f\u2329\u232a\U00010f86\U00010f87\U00010f88\U00010f89\U000116b9\U00012ff1\U00012ff2"
                      + "".join(map(chr, range(0x2E53, 0x2E5E))))
_EXTRA_SEPARATORS = set("\0\t\n\r`\u200c+\u00b1\u00d7\u00f7")
_MULTI_SEPARATORS = (". ", ", ", "\u17d4\u179b\u17d4")
# hard separators (after NFKD): Latin, CJK and the common other-script sentence marks (rarer scripts'
# marks count as soft here: a position gap of 1 instead of 8)
_HARD = set("\0!;?\u00a1\u00a7\u00b6\u00bf\u3001\u3002\u055c\u055d\u055e\u0589\u05c3\u060c\u061b\u061f\u06d4"
            "\u0964\u0965\u0e5a\u0e5b\u104a\u104b\u1362\u1363\u1364\u1365\u1366\u1367\u1368\u17d4\u17d5\u17d6"
            "\u17da\u203c\u203d\u2047\u2048\u2049\u203b\u204f\u2056\u205a\u2e18\u2e2e\u2e41\ufe45"
            "\u2cf9\u2cfa\u2cfb\u2cfc\u2cfe") | {". ", ", "}


@functools.lru_cache(maxsize=4096)
def _is_separator_char(c: str) -> bool:
    if c in _EXTRA_SEPARATORS:
        return True
    if c in _NOT_SEPARATORS:
        return False
    cat = unicodedata.category(c)
    if cat == "Sm":
        return 0x2212 <= ord(c) <= 0x22FF and c not in "\u2226\u228e"
    return cat[0] == "P" or cat in ("Zs", "Zl", "Zp")


def _is_separator(lemma: str) -> bool:
    return (len(lemma) == 1 and _is_separator_char(lemma)) or lemma in _MULTI_SEPARATORS


@functools.cache
def _separator_re() -> re.Pattern:
    """One regex for every separator (built once from the rule above: ~0.3 s)."""
    chars = "".join(chr(o) for o in range(0x110000) if not 0xD800 <= o <= 0xDFFF and _is_separator_char(chr(o)))
    alternatives = "|".join(map(re.escape, _MULTI_SEPARATORS))
    return re.compile(f"({alternatives}|[{re.escape(chars)}])")


@functools.cache
def _ascii_separator_re() -> re.Pattern:
    """_separator_re for ASCII text: the same rule, a small character class (most groups are ASCII)."""
    chars = "".join(chr(o) for o in range(128) if _is_separator_char(chr(o)))
    alternatives = "|".join(map(re.escape, [m for m in _MULTI_SEPARATORS if m.isascii()]))
    return re.compile(f"({alternatives}|[{re.escape(chars)}])")


def _split(group: str) -> list[str]:
    """Pieces and separators alternating (odd items are separators), as `_separator_re().split`."""
    return (_ascii_separator_re() if group.isascii() else _separator_re()).split(group)


def _split_separators(group: str):
    """(piece, is_separator_match) in order, like charabia's leftmost-longest Aho-Corasick pass."""
    for i, piece in enumerate(_separator_re().split(group)):
        if piece:
            yield piece, i % 2 == 1


_ASCII_NOT_NUMBER = re.compile(r"[A-Za-z\s\x00-\x1f\x7f]")


@functools.lru_cache(maxsize=4096)
def _numeric_char(c: str) -> bool:
    return unicodedata.category(c) in ("Nd", "Nl", "No") or (c.isascii() and not _ASCII_NOT_NUMBER.match(c))


def _is_number(piece: str) -> bool:
    """charabia keeps a piece whole when every character is numeric or ASCII punctuation."""
    if piece.isascii():
        return not _ASCII_NOT_NUMBER.search(piece)
    return all(map(_numeric_char, piece))


# --- segmenters --------------------------------------------------------------------------------
def warm() -> None:
    """Load the dictionaries now (about a second): a read path calls this at start, so its first query,
    not its users, pays for it."""
    _lindera()
    _jieba()
    _kvariants()
    _separator_re()  # the non-ASCII separators' character class: ~0.3 s to build, in the first thread that needs it
    _ascii_separator_re()


@functools.cache
def _lindera():
    import lindera

    builder = lindera.TokenizerBuilder()
    builder.set_mode("decompose")
    builder.set_dictionary("embedded://unidic")
    return builder.build()


def _japanese(piece: str) -> list[str]:
    return [t.surface for t in _lindera().tokenize(piece)]


@functools.cache
def _jieba():
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.dt.initialize()
    return jieba.dt


# jieba-rs (what charabia embeds) splits on a wider Han range than Python jieba's default
_JIEBA_HAN = re.compile("([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002ebef"
                        "\U0002f800-\U0002fa1fa-zA-Z0-9+#&._%\\-]+)")
_JIEBA_SKIP = re.compile(r"(\r\n|\s)")


def _has_word(dt, w: str) -> bool:
    return dt.FREQ.get(w, 0) > 0  # Python jieba keeps prefixes in FREQ with frequency 0


def _chinese(piece: str) -> list[str]:
    """jieba without HMM, then charabia's cut_for_search: dictionary bigrams, trigrams, else single chars."""
    dt = _jieba()
    words: list[str] = []
    for block in _JIEBA_HAN.split(piece):
        if not block:
            continue
        if _JIEBA_HAN.fullmatch(block):
            words.extend(dt._Tokenizer__cut_DAG_NO_HMM(block))
        else:
            for part in _JIEBA_SKIP.split(block):
                words.extend([part] if _JIEBA_SKIP.fullmatch(part) else list(part))
    out: list[str] = []
    for w in words:
        if len(w) <= 2:
            out.append(w)
            continue
        i = 0
        while i < len(w):
            n = next((k for k in (2, 3) if i + k <= len(w) and _has_word(dt, w[i:i + k])), 1)
            out.append(w[i:i + n])
            i += n
    return out


# --- normalizers -------------------------------------------------------------------------------
_VOWEL = {}
for _v, _row in (("a", "あぁかがさざただなはばぱまやゃらわゎ"), ("i", "いぃきぎしじちぢにひびぴみりゐ"),
                 ("u", "うぅくぐすずつづぬふぶぷむゆゅるゔ"), ("e", "えぇけげせぜてでねへべぺめれゑ"),
                 ("o", "おぉこごそぞとどのほぼぽもよょろを")):
    _VOWEL.update(dict.fromkeys(_row, "あいうえう"["aiueo".index(_v)]))


def _to_hiragana(s: str) -> str:
    """wana_kana's katakana->hiragana: ー after a converted kana becomes its vowel (ト-ト -> とうと)."""
    out, prev = [], None
    for i, c in enumerate(s):
        o = ord(c)
        if c == "・" or (c == "ー" and i == 0) or c in "ヶヵ":
            out.append(c)
        elif c == "ー" and prev is not None:
            if prev in _VOWEL:
                out.append(_VOWEL[prev])
        elif c != "ー" and 0x30A1 <= o <= 0x30FC:
            prev = chr(o - 0x60)
            out.append(prev)
        else:
            out.append(c)
            prev = None
    return "".join(out)


def _nfkd(s: str) -> str:
    return s if s.isascii() else "".join(unicodedata.normalize("NFKD", c) for c in s)


@functools.lru_cache(maxsize=65_536)
def _normalize(piece: str, script: str | None, language: str | None) -> tuple[str, str]:
    """(lemma, kind) where kind is "word", "soft" or "hard", as charabia's normalizers leave it."""
    if piece.isascii() and piece.isalnum():  # the common case: a plain ASCII word
        return (piece.lower() if script == LATIN else piece), "word"
    lemma = _nfkd(piece)
    if any(unicodedata.category(c) == "Cc" and not c.isspace() for c in lemma):
        lemma = "".join(c for c in lemma if not (unicodedata.category(c) == "Cc" and not c.isspace()))
    if _is_separator(lemma):
        return lemma, "hard" if lemma in _HARD else "soft"
    if script in (LATIN, CYRILLIC, GREEK, GEORGIAN):
        lemma = "".join(c.lower() for c in lemma)
    if script == LATIN:
        lemma = lemma.replace("œ", "oe").replace("æ", "ae")
    if script in (LATIN, GREEK, "Hebrew", "Thai", "Arabic"):
        lemma = "".join(c for c in lemma if unicodedata.category(c) != "Mn")
    if script == CJ and language == "jpn":
        lemma = _to_hiragana(lemma)
    elif script == CJ:  # charabia's ChineseNormalizer (Cj, language cmn or none): kVariants, no pinyin in 0.9.7
        lemma = lemma.translate(_kvariants())
    return lemma, "word"


@functools.cache
def _kvariants() -> dict[int, str]:
    """The IRG kVariants table charabia folds Chinese-detected ideographs with (検 -> 檢, 写 -> 寫, 強 -> 强):
    a kanji-only query such as 検索 is Chinese to Meilisearch and misses the 検索 of Japanese text."""
    table: dict[int, str] = {}
    text = resources.files("search_migration.search").joinpath("kvariants.txt").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line and not line.startswith("#"):
            source, target = line.split("\t")
            table[ord(source)] = target
    return table


@functools.lru_cache(maxsize=65_536)
def _piece(piece: str, script: str | None, language: str | None, is_sep: bool) -> tuple:
    """(lemma, kind, start, end) of one piece between separators (or of one separator), offsets in the
    piece: segmenting and normalizing it depends on nothing else, so repeated pieces cost a lookup."""
    if is_sep or _is_number(piece):
        parts = [piece]
    elif script == CJ and language == "jpn":
        parts = _japanese(piece)
    elif script == CJ:
        parts = _chinese(piece)
    else:
        parts = [piece]
    out = []
    at = 0
    for part in parts:
        found = piece.find(part, at)
        at = found if found >= 0 else at
        out.append((*_normalize(part, script, language), at, at + len(part)))
        at += len(part)
    return tuple(out)


def tokens(text: str):
    """Every (lemma, kind, start, end) charabia yields for `text`, separators included; start/end are
    character offsets into `text` (for highlighting and for checking against Meilisearch's matches)."""
    offset = 0
    for group, script, language in _analyzed_groups(text):
        for i, piece in enumerate(_split(group)):
            if piece:
                for lemma, kind, a, b in _piece(piece, script, language, i % 2 == 1):
                    yield lemma, kind, offset + a, offset + b
                offset += len(piece)


_WORD, _SOFT, _HARD_KIND = 0, 1, 2


@functools.lru_cache(maxsize=65_536)
def _piece_words(piece: str, script: str | None, language: str | None, is_sep: bool) -> tuple:
    """_piece as `_words0` consumes it: (word, kind code), the word stripped and "" when milli drops
    it (too long); empty lemmas left out (they move nothing)."""
    out = []
    for lemma, kind, _, _ in _piece(piece, script, language, is_sep):
        if kind == "word":
            if lemma:
                word = lemma.strip()
                out.append((word if word and len(word.encode()) <= MAX_WORD_BYTES else "", _WORD))
        else:
            out.append(("", _HARD_KIND if kind == "hard" else _SOFT))
    return tuple(out)


def _words0(text: str) -> list[tuple[str, int]]:
    """words(text) from position 0 (the hot path of every document: no generator, cached pieces)."""
    out: list[tuple[str, int]] = []
    position, prev = 0, None
    for group, script, language in _analyzed_groups(text):
        for i, piece in enumerate(_split(group)):
            if not piece:
                continue
            for word, kind in _piece_words(piece, script, language, i % 2 == 1):
                if kind == _WORD:
                    if prev is not None:
                        position += MAX_DISTANCE if prev == _HARD_KIND else 1
                    prev = _WORD
                    if position >= MAX_POSITION:
                        return out
                    if word:
                        out.append((word, position))
                elif prev is not None and (kind == _HARD_KIND or prev != _HARD_KIND):
                    prev = kind
    return out


SHORT = 96  # values up to this many characters (authors, tags, short titles and posts) are cached: they repeat


@functools.lru_cache(maxsize=16_384)
def _words0_short(text: str) -> tuple[tuple[str, int], ...]:
    return tuple(_words0(text))


def words(text: str, start: int = 0) -> list[tuple[str, int]]:
    """(word, position) as Meilisearch indexes one string value: +1 per soft, +8 per hard separator."""
    got = _words0_short(text) if len(text) <= SHORT else _words0(text)
    if not start:
        return list(got)
    return [(w, p + start) for w, p in got if p + start < MAX_POSITION]


def field_words(value) -> list[tuple[str, int]]:
    """Words of one attribute; an array's values are MAX_DISTANCE apart, as milli counts them."""
    values = value if isinstance(value, list) else [value]
    out: list[tuple[str, int]] = []
    position = None
    for v in values:
        if v is None or isinstance(v, (dict, list)):
            continue
        position = 0 if position is None else position + MAX_DISTANCE
        if position >= MAX_POSITION:
            break
        text = str(v).lower() if isinstance(v, bool) else str(v)
        got = words(text, position)
        out.extend(got)
        if got:
            position = got[-1][1]
    return out


def query_words(q: str, limit: int = QUERY_WORDS_LIMIT) -> list[str]:
    """The words Meilisearch searches for `q`: the same tokenizer (and language detection), first 10."""
    return [word for word, _ in words(q)][:limit]  # the documents' own path: a query word is a document word
