#!/usr/bin/env python3
"""Draw a deterministic query set, by class, from the real-text corpus (``corpus.py``'s posts.jsonl).

Every query is taken from one post's text, so it occurs in that post's topic, which the query names as
its target. Classes (issue 15):

- ``ja_1w`` / ``ja_2w`` / ``ja_3w``: 1-3 Japanese nouns of one post, near each other, chosen at word
  boundaries given by a real tokenizer (lindera, UniDic, decompose mode: the dictionary and mode of
  Meilisearch 1.21's charabia), joined by a space as a user types them.
- ``en_1w`` / ``en_2w`` / ``en_3w``: 1-3 English words of one post, near each other, lowercased,
  stop words left out.
- ``identifier``: an identifier the text contains - ``snake_case``, ``--option``, a version
  (``v1.2``, ``2.6.32``), a file path, a file name with an extension, a hyphenated command or a
  CamelCase name marked as code in the source (``apt-get``, ``NonMusicalPaperColumnGrob``).
- ``en_typo1``: 1-2 English words whose last word (>= 5 letters, also after the typo) has one typo;
  ``en_typo2``: 1 word (>= 9 letters, also after the typos) with two typos. Typos are QWERTY-neighbour
  substitutions and insertions, deletions and transpositions, never on the first letter; the typo'd
  word is no word of the corpus, and its Damerau distance to the intended word is exactly 1 or 2.
- ``suggest_ja`` / ``suggest_en``: a 1-4 character prefix of a word (ja: of a noun run as written).

Usage: ``.venv/bin/python bench/realtext/queries.py [--corpus DIR] [--out FILE] [--seed S]
[--per-class N | --count CLASS=N ...]``. Needs ``bench/realtext/requirements.txt``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = ROOT / ".local" / "realtext"

DEFAULT_COUNTS = {
    "ja_1w": 100, "ja_2w": 80, "ja_3w": 60,
    "en_1w": 80, "en_2w": 60, "en_3w": 40,
    "identifier": 100,
    "en_typo1": 100, "en_typo2": 60,
    "suggest_ja": 80, "suggest_en": 80,
}
WINDOW_JA = 12   # tokens: words of a 2-3 word query come from this close together
WINDOW_EN = 8
ATTEMPTS = 200   # per wanted query, before a class gives up

EN_STOP = set("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each either else etc even ever every few
for from further had has have having he her here hers herself him himself his how however i if in into
is it its itself just let like may me might more most much must my myself neither no nor not now of off
often on once one only or other our ours ourselves out over own per rather same shall she should since
so some such than that the their theirs them themselves then there these they this those though through
thus to too under until up upon us use used uses using very via was we were what when where whether
which while who whom whose why will with within without would yet you your yours yourself yourselves
""".split())
JA_STOP = {"こと", "もの", "ため", "よう", "これ", "それ", "あれ", "どれ", "ここ", "そこ", "とき", "時",
           "場合", "方", "等", "など", "ところ", "ほう", "うち", "中", "上", "下", "前", "後", "他",
           "以下", "以上", "次", "際", "毎", "全て", "すべて"}

_CJK_RE = re.compile(r"^[\u3041-\u309f\u30a0-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff々〆ヵヶー]+$")
_HIRAGANA_ONLY = re.compile(r"^[\u3041-\u309fー]+$")
_EN_WORD = re.compile(r"(?<![\w'-])[A-Za-z]+(?![\w'])")

QWERTY = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
# keys next to each key (same row +-1, the rows above and below at -1..+1): fat-finger typos
NEIGHBOURS: dict[str, str] = {
    ch: "".join(sorted({QWERTY[rr][cc] for rr in (r - 1, r, r + 1) if 0 <= rr < 3
                        for cc in (c - 1, c, c + 1) if 0 <= cc < len(QWERTY[rr])} - {ch}))
    for r, row in enumerate(QWERTY) for c, ch in enumerate(row)
}

ID_PATTERNS: list[tuple[str, re.Pattern, bool]] = [
    # (kind, pattern, only when the source marked it as code)
    ("snake", re.compile(r"(?<![\w.$/-])[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+(?![\w-])"), False),
    ("option", re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?:=[\w.,/-]+)?(?![\w-])"), False),
    ("short_option", re.compile(r"(?<![\w-])-[A-Za-z]{1,3}(?![\w-])"), True),
    ("version", re.compile(r"(?<![\w.])(?:v\d+(?:\.\d+)+|\d+\.\d+\.\d+(?:\.\d+)?)(?:[a-z~+-][\w.~+-]*)?(?![\w.])"),
     False),
    ("path", re.compile(r"(?<![\w/~.-])(?:~|\.{1,2})?/(?:[\w.+-]+/)+[\w.+-]*"), False),
    ("filename", re.compile(
        r"(?<![\w/.-])[\w-]+\.(?:conf|list|html|txt|sh|py|pl|deb|dsc|changes|xcf|png|jpg|ly|ily|c|h|"
        r"kicad_pcb|kicad_sch|sch|cfg|gz|xz|tar|pdf|svg|ps|xml|json|rules|service|cnf)(?![\w-])"), False),
    ("hyphenated", re.compile(r"(?<![\w-])[a-z][a-z0-9]*(?:-[a-z0-9]+)+(?![\w-])"), True),
    ("camel", re.compile(r"(?<![\w-])[A-Za-z]*[a-z][A-Z][A-Za-z0-9]+(?![\w-])"), True),
]


def log(msg: str) -> None:
    print(f"[queries] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- typos

def damerau(a: str, b: str) -> int:
    """Optimal string alignment distance (Levenshtein with adjacent transpositions)."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


TYPO_OPS = ("substitution", "insertion", "deletion", "transposition")


def apply_typo(word: str, op: str, rng: random.Random) -> tuple[str, int] | None:
    """One typo of kind ``op`` anywhere but on the first letter; (new word, position) or None."""
    n = len(word)
    if op == "substitution":
        pos = rng.randrange(1, n)
        choices = NEIGHBOURS.get(word[pos], "") or "etaoinshrdlu"
        new = rng.choice([c for c in choices if c != word[pos]] or ["e"])
        return word[:pos] + new + word[pos + 1:], pos
    if op == "insertion":
        pos = rng.randrange(1, n + 1)  # before word[pos]; n = at the end
        near = NEIGHBOURS.get(word[pos - 1], "") + NEIGHBOURS.get(word[pos] if pos < n else "", "")
        return word[:pos] + rng.choice(near or "etaoin") + word[pos:], pos
    if op == "deletion":
        pos = rng.randrange(1, n)
        return word[:pos] + word[pos + 1:], pos
    if op == "transposition":
        cands = [i for i in range(1, n - 1) if word[i] != word[i + 1]]
        if not cands:
            return None
        pos = rng.choice(cands)
        return word[:pos] + word[pos + 1] + word[pos] + word[pos + 2:], pos
    raise ValueError(op)


def make_typos(word: str, k: int, rng: random.Random, vocabulary: set[str],
               min_len: int) -> tuple[str, list[dict]] | None:
    """``word`` with exactly ``k`` typos (Damerau distance k), at least ``min_len`` long, not a word
    of the corpus. None when this draw does not give one."""
    cur, done = word, []
    for _ in range(k):
        op = rng.choice(TYPO_OPS)
        r = apply_typo(cur, op, rng)
        if r is None:
            return None
        cur, pos = r
        done.append({"op": op, "pos": pos})
    if len(cur) < min_len or cur in vocabulary or damerau(word, cur) != k or cur[0] != word[0]:
        return None
    return cur, done


# --------------------------------------------------------------------------------------- tokenizer

class JaTokenizer:
    """lindera with its embedded UniDic, decompose mode (what Meilisearch 1.21's charabia uses)."""

    def __init__(self) -> None:
        try:
            import lindera  # noqa: PLC0415
        except ImportError:
            raise SystemExit("error: lindera is missing: .venv/bin/pip install -r "
                             "bench/realtext/requirements.txt") from None
        self.tokenizer = lindera.Tokenizer(lindera.load_dictionary("embedded://unidic"), mode="decompose")
        self.package = "lindera-python-unidic"
        self.version = metadata.version(self.package)

    def tokens(self, text: str) -> list[tuple[str, list[str], int, int]]:
        """(surface, details, char start, char end) of every token."""
        data = text.encode("utf-8")
        out = []
        for t in self.tokenizer.tokenize(text):
            start = len(data[:t.byte_start].decode("utf-8", errors="ignore"))
            out.append((t.surface, list(t.details), start, start + len(t.surface)))
        return out


def ja_nouns(toks) -> list[int]:
    """Indices of content nouns written in Japanese script (not in hiragana alone), 2+ characters."""
    out = []
    for i, (surface, det, _, _) in enumerate(toks):
        if (det and det[0] == "名詞" and len(det) > 1 and det[1] in ("普通名詞", "固有名詞")
                and len(surface) >= 2 and _CJK_RE.match(surface) and surface not in JA_STOP
                and not _HIRAGANA_ONLY.match(surface)
                and not re.fullmatch(r"[ー・]+", surface)):
            out.append(i)
    return out


def ja_noun_runs(toks) -> list[str]:
    """Runs of adjacent noun tokens as written (ファイル+システム -> ファイルシステム)."""
    runs, cur, end = [], "", -1
    for surface, det, s, e in toks:
        is_noun = det and det[0] == "名詞" and _CJK_RE.match(surface)
        if is_noun and cur and s == end:
            cur += surface
        else:
            if cur:
                runs.append(cur)
            cur = surface if is_noun else ""
        end = e
    if cur:
        runs.append(cur)
    return [r for r in runs if r not in JA_STOP and not _HIRAGANA_ONLY.match(r)]


def en_words(text: str) -> list[tuple[str, int]]:
    """(lowercased word, ordinal) of the content words of an English text."""
    out = []
    for i, m in enumerate(_EN_WORD.finditer(text)):
        w = m.group(0).lower()
        if len(w) >= 3 and w not in EN_STOP:
            out.append((w, i))
    return out


# ----------------------------------------------------------------------------------------- drawing

class Corpus:
    def __init__(self, path: Path):
        self.posts = [json.loads(line) for line in open(path, encoding="utf-8")]
        self.by_topic_lang: dict[tuple[str, str], list[int]] = {}
        for i, p in enumerate(self.posts):
            for t in p["topics"]:
                self.by_topic_lang.setdefault((t, p["lang"]), []).append(i)
        self.topics = sorted({t for t, _ in self.by_topic_lang})
        self.vocabulary: set[str] = set()
        for p in self.posts:
            if p["lang"] == "en":
                self.vocabulary.update(m.group(0).lower() for m in _EN_WORD.finditer(p["content"]))

    def draw_post(self, rng: random.Random, lang: str) -> tuple[str, dict]:
        """A topic (weighted by the square root of its size in ``lang``, so small topics are targeted
        too), then a post of that language in it."""
        cands = [(t, len(self.by_topic_lang.get((t, lang), []))) for t in self.topics]
        cands = [(t, n) for t, n in cands if n]
        weights = [math.sqrt(n) for _, n in cands]
        topic = rng.choices([t for t, _ in cands], weights)[0]
        return topic, self.posts[rng.choice(self.by_topic_lang[(topic, lang)])]


def _near(rng: random.Random, positions: list[int], n: int, window: int) -> list[int] | None:
    """n indices into ``positions`` (ascending) whose values lie within ``window`` of the first."""
    if len(positions) < n:
        return None
    start = rng.randrange(len(positions))
    following = [j for j in range(start + 1, len(positions)) if positions[j] - positions[start] <= window]
    if len(following) < n - 1:
        return None
    return [start] + sorted(rng.sample(following, n - 1))


def draw_ja_words(c: Corpus, tok: JaTokenizer, rng: random.Random, n: int) -> dict | None:
    topic, post = c.draw_post(rng, "ja")
    toks = tok.tokens(post["content"])
    nouns = ja_nouns(toks)
    pick = _near(rng, nouns, n, WINDOW_JA)
    if pick is None:
        return None
    words = [toks[nouns[j]][0] for j in pick]
    if len(set(words)) < n:
        return None
    return {"q": " ".join(words), "words": words, "topic": topic, "post": post, "lang": "ja"}


def draw_en_words(c: Corpus, rng: random.Random, n: int) -> dict | None:
    topic, post = c.draw_post(rng, "en")
    words = en_words(post["content"])
    pick = _near(rng, [i for _, i in words], n, WINDOW_EN)
    if pick is None:
        return None
    chosen = [words[j][0] for j in pick]
    if len(set(chosen)) < n:
        return None
    return {"q": " ".join(chosen), "words": chosen, "topic": topic, "post": post, "lang": "en"}


def draw_typo(c: Corpus, rng: random.Random, k: int) -> dict | None:
    min_len = 5 if k == 1 else 9
    topic, post = c.draw_post(rng, "en")
    words = en_words(post["content"])
    long_ = [j for j, (w, _) in enumerate(words) if len(w) >= min_len and w.isalpha()]
    if not long_:
        return None
    j = rng.choice(long_)
    target = words[j][0]
    made = make_typos(target, k, rng, c.vocabulary, min_len)
    if made is None:
        return None
    typo, ops = made
    intended = [target]
    if k == 1 and rng.random() < 0.5:  # a word before it, from close by
        before = [i for i in range(j) if words[j][1] - words[i][1] <= WINDOW_EN and words[i][0] != target]
        if before:
            intended.insert(0, words[rng.choice(before)][0])
    q = " ".join(intended[:-1] + [typo])
    return {"q": q, "words": intended[:-1] + [typo], "intended": " ".join(intended), "typos": ops,
            "topic": topic, "post": post, "lang": "en"}


def draw_suggest(c: Corpus, tok: JaTokenizer, rng: random.Random, lang: str) -> dict | None:
    topic, post = c.draw_post(rng, lang)
    length = rng.randint(1, 4)
    if lang == "ja":
        runs = [r for r in ja_noun_runs(tok.tokens(post["content"])) if len(r) >= max(2, length)]
    else:
        runs = [w for w, _ in en_words(post["content"]) if len(w) >= max(3, length) and w.isalpha()]
    if not runs:
        return None
    word = rng.choice(runs)
    return {"q": word[:length], "prefix_len": length, "word": word, "topic": topic, "post": post,
            "lang": lang}


def identifier_index(c: Corpus) -> dict[str, list[tuple[int, str]]]:
    """kind -> [(post index, identifier)], each identifier once per kind (its first post)."""
    index: dict[str, list[tuple[int, str]]] = {k: [] for k, _, _ in ID_PATTERNS}
    seen: set[str] = set()
    for i, p in enumerate(c.posts):
        text = p["content"]
        code = set(p.get("code_spans") or [])
        code_text = " ".join(code)
        for kind, pat, code_only in ID_PATTERNS:
            for m in pat.finditer(text):
                ident = m.group(0).rstrip(".,:;")
                if kind == "path":
                    ident = ident.rstrip("/") if ident.count("/") > 2 else ident
                    if ident.count("/") < 2 and not ident.startswith("~/"):
                        continue
                if len(ident) < 2 or ident in seen:
                    continue
                if code_only and not re.search(rf"(?<![\w-]){re.escape(ident)}(?![\w-])", code_text):
                    continue
                seen.add(ident)
                index[kind].append((i, ident))
    return index


def draw_identifier(c: Corpus, index, rng: random.Random) -> dict | None:
    kinds = [k for k, v in index.items() if v]
    kind = rng.choice(kinds)
    i, ident = rng.choice(index[kind])
    post = c.posts[i]
    return {"q": ident, "id_kind": kind, "topic": rng.choice(post["topics"]), "post": post,
            "lang": post["lang"]}


def generate(c: Corpus, counts: dict[str, int], seed: int) -> list[dict]:
    tok = JaTokenizer() if any(counts.get(k) for k in ("ja_1w", "ja_2w", "ja_3w", "suggest_ja")) else None
    id_index = identifier_index(c) if counts.get("identifier") else {}
    drawers = {
        "ja_1w": lambda r: draw_ja_words(c, tok, r, 1),
        "ja_2w": lambda r: draw_ja_words(c, tok, r, 2),
        "ja_3w": lambda r: draw_ja_words(c, tok, r, 3),
        "en_1w": lambda r: draw_en_words(c, r, 1),
        "en_2w": lambda r: draw_en_words(c, r, 2),
        "en_3w": lambda r: draw_en_words(c, r, 3),
        "identifier": lambda r: draw_identifier(c, id_index, r),
        "en_typo1": lambda r: draw_typo(c, r, 1),
        "en_typo2": lambda r: draw_typo(c, r, 2),
        "suggest_ja": lambda r: draw_suggest(c, tok, r, "ja"),
        "suggest_en": lambda r: draw_suggest(c, tok, r, "en"),
    }
    out: list[dict] = []
    for cls, want in counts.items():
        if cls not in drawers:
            raise SystemExit(f"error: unknown query class {cls!r} (known: {', '.join(drawers)})")
        rng = random.Random(f"realtext-queries:{seed}:{cls}")
        got: list[dict] = []
        seen: set[str] = set()
        attempts = 0
        while len(got) < want and attempts < want * ATTEMPTS:
            attempts += 1
            d = drawers[cls](rng)
            if d is None or d["q"] in seen:
                continue
            seen.add(d["q"])
            post = d.pop("post")
            rec = {"qid": f"{cls}-{len(got) + 1:04d}", "class": cls, "lang": d.pop("lang"), "q": d.pop("q"),
                   "topic": d.pop("topic"), "source_event_id": post["event_id"]}
            rec.update(d)
            got.append(rec)
        if len(got) < want:
            log(f"warning: {cls}: only {len(got)} of {want} after {attempts} draws")
        log(f"{cls}: {len(got)} queries ({attempts} draws)")
        out.extend(got)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_DIR,
                    help="folder with corpus.py's posts.jsonl and manifest.json (default .local/realtext)")
    ap.add_argument("--out", type=Path, default=None, help="output JSONL (default <corpus>/queries.jsonl)")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--per-class", type=int, default=None, help="this many queries in every class")
    ap.add_argument("--count", action="append", default=[], metavar="CLASS=N",
                    help="queries in one class (repeatable); 0 leaves the class out")
    args = ap.parse_args(argv)
    counts = dict(DEFAULT_COUNTS)
    if args.per_class is not None:
        counts = {k: args.per_class for k in counts}
    for spec in args.count:
        cls, _, n = spec.partition("=")
        if cls not in DEFAULT_COUNTS or not n.isdigit():
            print(f"error: --count wants CLASS=N with CLASS one of {', '.join(DEFAULT_COUNTS)}", file=sys.stderr)
            return 2
        counts[cls] = int(n)
    counts = {k: v for k, v in counts.items() if v > 0}
    posts_path = args.corpus / "posts.jsonl"
    if not posts_path.exists():
        print(f"error: {posts_path} not found: build it with bench/realtext/corpus.py", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    log(f"loading {posts_path}")
    c = Corpus(posts_path)
    qs = generate(c, counts, args.seed)
    out = args.out or args.corpus / "queries.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for q in qs:
            f.write(json.dumps(q, ensure_ascii=False, separators=(",", ":")) + "\n")
    per_class = {}
    for q in qs:
        per_class[q["class"]] = per_class.get(q["class"], 0) + 1
    corpus_manifest = {}
    mpath = args.corpus / "manifest.json"
    if mpath.exists():
        corpus_manifest = json.loads(mpath.read_text(encoding="utf-8"))
    try:
        tokenizer = {"package": "lindera-python-unidic", "version": metadata.version("lindera-python-unidic"),
                     "dictionary": "embedded://unidic", "mode": "decompose"}
    except metadata.PackageNotFoundError:
        tokenizer = None
    manifest = {
        "generator": "bench/realtext/queries.py", "seed": args.seed, "requested": counts, "counts": per_class,
        "total": len(qs), "corpus_posts_sha256": corpus_manifest.get("posts_sha256"),
        "corpus_seed": corpus_manifest.get("seed"), "tokenizer": tokenizer,
        "queries_file": out.name, "queries_sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
    }
    mout = out.with_name(out.stem + ".manifest.json")
    mout.write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    summary = " ".join(f"{k}={v}" for k, v in per_class.items())
    print(f"queries: {len(qs)} ({summary}) -> {out} sha256 {manifest['queries_sha256'][:16]} "
          f"({time.monotonic() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
