#!/usr/bin/env python3
"""Build a reproducible corpus of real, human-written Japanese and English posts from Debian docs.

The parity bench (issue 15) needs text that behaves like the product's posts: technical prose, Japanese
written without spaces between words, English with identifiers, commands and file paths inline. This
script takes it from Debian documentation packages, never from generated text:

1. ``apt-get download`` each package (pinned version, falling back to the release's candidate with a
   warning) into ``<cache>/debs/``; a .deb already there is reused, so a second run needs no network.
2. Read the package's HTML straight from ``dpkg-deb --fsys-tarfile`` and keep prose paragraphs
   (``p``/``li``/``dd`` text; inline ``code``/``literal`` kept; ``pre``, tables outside paragraphs,
   navigation, tables of contents, headings, scripts dropped), dedupe them across packages (the
   Japanese packages carry untranslated English paragraphs; some manuals ship twice), and tag each
   with its language by script (kana present -> ``ja``; ASCII letters only -> ``en``; else dropped).
3. Cut them into posts (seeded): one paragraph or a sentence run of a long one most of the time, a
   few paragraphs of the same section sometimes, rarely a long post of up to ~4,000 characters; give
   each a topic ``kukuri:<name>`` (sizes skewed, topics follow the source's subject, ~7 % in two
   topics), an author, a ``created_at`` and a NIP-01 event id computed from all of that.
4. Write ``posts.jsonl`` (sorted by created_at, event_id) and ``manifest.json`` (packages with
   versions and sha256 of each .deb, parameters, counts, sha256 of posts.jsonl): the manifest says
   exactly which text a bench run used. Same packages + same seed -> byte-identical output.

Usage: ``.venv/bin/python bench/realtext/corpus.py [--out DIR] [--posts N] [--seed S]``
"""
from __future__ import annotations

import argparse
import bisect
import hashlib
import html.parser
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / ".local" / "realtext"

# (package, version pinned for Debian 12 "bookworm", topic group, regex a member path must match or
# None). English originals first, so that the untranslated English paragraphs of a Japanese package
# dedupe against their original.
PACKAGES: list[tuple[str, str, str, str | None]] = [
    ("debian-reference-en", "2.100", "admin", None),
    ("debian-reference-ja", "2.100", "admin", None),
    ("developers-reference", "12.18", "devel", None),
    ("developers-reference-ja", "12.18", "devel", None),
    ("debian-edu-doc-en", "2.12.23~deb12u1", "edu", None),
    ("debian-edu-doc-ja", "2.12.23~deb12u1", "edu", None),
    ("gimp-help-en", "2.10.34-2", "gimp", None),
    ("gimp-help-ja", "2.10.34-2", "gimp", None),
    ("kicad-doc-en", "6.0.11+dfsg-1", "kicad", None),
    ("kicad-doc-ja", "6.0.11+dfsg-1", "kicad", None),
    # beyond issue 15's list: the same kind of prose, to reach a bench-sized corpus
    ("debian-handbook", "11.20220922", "admin", r"/html/en-US/"),
    ("debian-handbook", "11.20220922", "admin", r"/html/ja-JP/"),
    ("maint-guide", "1.2.53", "devel", None),
    ("maint-guide-ja", "1.2.53", "devel", None),
    ("debian-faq", "11.1", "admin", r"/FAQ/"),
    ("debian-faq-ja", "11.1", "admin", None),
    ("aptitude-doc-en", "0.8.13-5", "admin", None),
    ("aptitude-doc-ja", "0.8.13-5", "admin", None),
    # LilyPond's English manuals only where a Japanese translation exists (the English set is ~10x)
    ("lilypond-doc-html", "2.24.1-2", "music",
     r"/Documentation/(learning|usage|web|notation|snippets)/(?!news)[^/]*(?<!\.[a-z][a-z])(?<!_[a-z][a-z])\.html$"),
    ("lilypond-doc-html-ja", "2.24.1-2", "music", r"/(?!news)[^/]*\.ja\.html$"),
]
# Never these: an independent parity check keeps manpages(-ja) for itself.
FORBIDDEN = {"manpages", "manpages-ja", "manpages-dev", "manpages-ja-dev"}

# Topics (without the "kukuri:" prefix). A post's primary topic comes from its source's group most of
# the time (weights fall with rank, so sizes are skewed), else from all topics.
TOPIC_GROUPS: dict[str, list[str]] = {
    "admin": ["debian", "linux", "sysadmin", "network", "shell", "security", "server", "backup",
              "beginners", "tips"],
    "devel": ["debian", "packaging", "dev", "opensource", "release", "community", "git", "translation"],
    "edu": ["debian-edu", "school", "server", "network", "linux", "desktop", "ltsp", "beginners"],
    "gimp": ["gimp", "photo", "design", "art", "desktop", "tips", "beginners", "color"],
    "kicad": ["kicad", "electronics", "pcb", "cad", "hardware", "design", "maker"],
    "music": ["lilypond", "music", "notation", "composition", "art", "tips"],
}
GLOBAL_TOPICS = ["tech", "random", "help", "oss", "docs", "question", "japan-tech", "news", "howto",
                 "til"]
IN_GROUP_P = 0.78
SECOND_TOPIC_P = 0.07
ZIPF_S = 1.1
AUTHORS = 800
CREATED_FROM = 1_672_531_200  # 2023-01-01T00:00:00Z
CREATED_SPAN = 3 * 365 * 86_400

MIN_CHARS = {"ja": 15, "en": 30}
MIN_EN_WORDS = 5
# Template paragraphs ("You can access this command from the image menu through ...") are real but
# would flood the ties: at most this many paragraphs may share their first PREFIX_CHARS characters.
PREFIX_CHARS = 40
PREFIX_MAX = 5
MAX_POST_CHARS = 4_000
# How many paragraphs a post takes (cumulative draw); "split" cuts a long paragraph into sentence runs.
SPLIT_LONG_OVER = 500
SPLIT_P = 0.5

SKIP_TAGS = {"script", "style", "pre", "head", "title", "nav", "header", "footer", "noscript", "svg",
             "h1", "h2", "h3", "h4", "h5", "h6", "dt", "caption", "figcaption", "button", "select",
             "form", "textarea", "sup"}
SKIP_CLASSES = {"navheader", "navfooter", "toc", "toc2", "breadcrumbs", "sphinxsidebar", "related",
                "footer", "header", "headerlink", "programlisting", "screen", "synopsis", "literallayout",
                "highlight", "listingblock", "literalblock", "cmdsynopsis", "funcsynopsis", "indexterm",
                "titlepage", "footnotes", "footnote", "index", "searchbox", "language_switcher_placeholder",
                "section-number", "mediaobject", "figure-contents", "navigation", "docnav", "title"}
PARA_TAGS = {"p", "li", "dd", "blockquote"}
BLOCK_TAGS = PARA_TAGS | {"div", "table", "tr", "td", "th", "ul", "ol", "dl", "section", "article",
                          "body", "br", "hr", "tbody", "thead", "aside", "main", "figure", "img"}
VOID_TAGS = {"br", "hr", "img", "meta", "link", "input", "col", "area", "base", "wbr", "source",
             "embed", "param", "track"}
SECTION_TAGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
CODE_TAGS = {"code", "tt", "kbd", "samp", "var"}
CODE_CLASSES = {"literal", "command", "filename", "option", "function", "parameter", "varname",
                "envar", "userinput", "computeroutput", "systemitem", "application", "package",
                "pre", "code", "classname", "type", "structname", "constant", "replaceable"}


def log(msg: str) -> None:
    print(f"[corpus] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- text

_KANA = re.compile(r"[\u3041-\u309f\u30a0-\u30ff\uff66-\uff9f]")
_CJK = re.compile(r"[\u3041-\u309f\u30a0-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
                  r"\u3000-\u303f\uff01-\uff0f\uff1a-\uff20]")
_CJK_CHAR = r"[\u3000-\u303f\u3041-\u309f\u30a0-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]"
# A whitespace run that holds a line break, between two CJK characters, is a source line wrap, not a
# space the author typed: Japanese is written without spaces.
_CJK_WRAP = re.compile(rf"(?<={_CJK_CHAR})[ \t\r\f\v]*\n\s*(?={_CJK_CHAR})")
_WS = re.compile(r"\s+")


def clean_text(raw: str) -> str:
    text = raw.replace("\u00a0", " ").replace("\u200b", "").replace("\u00ad", "")
    text = _CJK_WRAP.sub("", text)
    return _WS.sub(" ", text).strip()


def detect_lang(text: str) -> str | None:
    """``ja`` when the text has kana and CJK makes up a real share of its letters; ``en`` when every
    letter is ASCII; otherwise None (another script, or a mix we do not want to guess)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return None
    kana = len(_KANA.findall(text))
    cjk = sum(1 for c in letters if _CJK.match(c))
    if kana >= 2 and cjk / len(letters) >= 0.3:
        return "ja"
    if cjk == 0 and all(c.isascii() for c in letters):
        return "en"
    return None


def keep_paragraph(text: str, lang: str) -> bool:
    if len(text) < MIN_CHARS[lang]:
        return False
    if lang == "en" and len(re.findall(r"[A-Za-z]{2,}", text)) < MIN_EN_WORDS:
        return False
    letters = sum(1 for c in text if c.isalpha())
    if letters / len(text) < 0.55:  # tables of numbers, code-like lines, lists of symbols
        return False
    if text.count("{") + text.count("}") + text.count(";") > max(3, len(text) // 40):
        return False
    return True


def dedupe_key(text: str) -> str:
    norm = unicodedata.normalize("NFKC", text).casefold()
    return hashlib.sha1(re.sub(r"\W+", "", norm).encode()).hexdigest()


_SENT_END = {"ja": re.compile(r"[。！？]+\s*"), "en": re.compile(r"[.!?]+[\"')]?\s+(?=[A-Z\"'(])")}


def sentences(text: str, lang: str) -> list[str]:
    """The text's sentences, each with the spacing that followed it in the source, so that
    ``"".join(sentences(t, lang)) == t``."""
    out, start = [], 0
    for m in _SENT_END[lang].finditer(text):
        out.append(text[start:m.end()])
        start = m.end()
    if start < len(text):
        out.append(text[start:])
    return out


# ---------------------------------------------------------------------------------------------- HTML

@dataclass
class Paragraph:
    text: str
    section: int  # ordinal of the heading above it, within the file
    code: list[str] = field(default_factory=list)


class ProseExtractor(html.parser.HTMLParser):
    """Collects paragraph text from documentation HTML (DocBook, Sphinx, Asciidoctor output)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool, bool, bool]] = []  # (tag, skipping, code, paragraph)
        self.skip = 0
        self.code_depth = 0
        self.para_depth = 0
        self.buf: list[str] = []
        self.code_buf: list[str] = []
        self.codes: list[str] = []
        self.section = 0
        self.out: list[Paragraph] = []

    def _flush(self) -> None:
        text = clean_text("".join(self.buf))
        if text:
            self.out.append(Paragraph(text, self.section, self.codes))
        self.buf, self.codes = [], []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = set()
        for k, v in attrs:
            if k == "class" and v:
                classes.update(v.split())
        if tag in SECTION_TAGS:
            self.section += 1
        if tag in BLOCK_TAGS:
            self._flush()
        if tag in VOID_TAGS:
            return
        skipping = tag not in {"html", "body"} and (
            tag in SKIP_TAGS or bool(classes & SKIP_CLASSES)
            or dict(attrs).get("id") in {"toc", "header", "footer"})
        code = tag in CODE_TAGS or bool(classes & CODE_CLASSES)
        para = tag in PARA_TAGS or (tag == "div" and "para" in classes)  # Publican: div.para
        self.stack.append((tag, skipping, code, para))
        self.skip += skipping
        if code:
            if self.code_depth == 0:
                self.code_buf = []
            self.code_depth += 1
        if para:
            self.para_depth += 1

    def handle_startendtag(self, tag, attrs) -> None:
        if tag in BLOCK_TAGS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID_TAGS:
            if tag in BLOCK_TAGS:
                self._flush()
            return
        # pop to the matching start tag (HTML in the wild leaves some unclosed)
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                break
        else:
            return
        while len(self.stack) > i:
            t, skipping, code, para = self.stack.pop()
            self.skip -= skipping
            if code:
                self.code_depth -= 1
                if self.code_depth == 0 and self.skip == 0 and self.para_depth:
                    span = clean_text("".join(self.code_buf))
                    if span:
                        self.codes.append(span)
            if para:
                self.para_depth -= 1
            if t in BLOCK_TAGS:
                self._flush()

    def handle_data(self, data: str) -> None:
        if self.skip or not self.para_depth:
            return
        self.buf.append(data)
        if self.code_depth:
            self.code_buf.append(data)

    def close(self) -> list[Paragraph]:  # type: ignore[override]
        super().close()
        self._flush()
        return self.out


def extract_paragraphs(html_text: str) -> list[Paragraph]:
    p = ProseExtractor()
    p.feed(html_text)
    return p.close()


# ---------------------------------------------------------------------------------------------- debs

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _deb_field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], check=True, capture_output=True,
                          text=True).stdout.strip()


def _apt_download(spec: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = ["apt-get", "download", spec]
    if os.geteuid() == 0:  # apt's _apt sandbox user cannot write into root's cache folder
        cmd[1:1] = ["-o", "APT::Sandbox::User=root"]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def fetch_deb(name: str, version: str, debs: Path) -> Path:
    """The package's .deb in ``debs``: the pinned version if cached or downloadable, else whatever
    version is cached, else the release's candidate (with a warning). Idempotent."""
    if name in FORBIDDEN:
        raise SystemExit(f"error: {name} is kept for an independent check; do not use it")
    debs.mkdir(parents=True, exist_ok=True)
    pinned = debs / f"{name}_{version.replace(':', '%3a')}_all.deb"
    cached = sorted(debs.glob(f"{name}_*.deb"))
    if pinned.exists():
        return pinned
    r = _apt_download(f"{name}={version}", debs)
    if r.returncode == 0 and pinned.exists():
        log(f"downloaded {pinned.name}")
        return pinned
    if cached:
        log(f"warning: {name} {version} not available; using cached {cached[-1].name}")
        return cached[-1]
    log(f"warning: {name} {version} not downloadable ({r.stderr.strip().splitlines()[-1:]}); "
        "trying the release's candidate")
    r = _apt_download(name, debs)
    got = sorted(debs.glob(f"{name}_*.deb"))
    if r.returncode != 0 or not got:
        raise SystemExit(f"error: apt-get download {name} failed: {r.stderr.strip()[-300:]} "
                         "(run `apt-get update` first?)")
    return got[-1]


def html_members(deb: Path, include: str | None = None) -> list[tuple[str, str]]:
    """(path, text) of every regular *.html file in the .deb (whose path matches ``include``), sorted
    by path."""
    pattern = re.compile(include) if include else None
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    out: dict[str, str] = {}
    assert proc.stdout is not None
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for m in tar:
            if not m.isfile() or not m.name.endswith((".html", ".htm")):
                continue
            base = m.name.rsplit("/", 1)[-1]
            if base in {"search.html", "genindex.html", "py-modindex.html"}:
                continue
            if pattern is not None and not pattern.search(m.name):
                continue
            f = tar.extractfile(m)
            if f is not None:
                out[m.name.lstrip("./")] = f.read().decode("utf-8", errors="replace")
    if proc.wait() != 0:
        raise SystemExit(f"error: dpkg-deb --fsys-tarfile {deb} failed")
    return sorted(out.items())


# ---------------------------------------------------------------------------------------------- posts

@dataclass
class Para:
    text: str
    lang: str
    package: str
    path: str
    section: int
    code: list[str]
    group: str


def _zipf_weights(n: int) -> list[float]:
    return [1.0 / (r + 1) ** ZIPF_S for r in range(n)]


class Chooser:
    def __init__(self, items: list[str], weights: list[float]):
        self.items = items
        self.cum: list[float] = []
        acc = 0.0
        for w in weights:
            acc += w
            self.cum.append(acc)

    def pick(self, rng: random.Random) -> str:
        return self.items[bisect.bisect_right(self.cum, rng.random() * self.cum[-1])]


def all_topics() -> list[str]:
    seen: list[str] = []
    for names in list(TOPIC_GROUPS.values()) + [GLOBAL_TOPICS]:
        for t in names:
            if t not in seen:
                seen.append(t)
    return seen


def cut_posts(paras: list[Para], rng: random.Random) -> list[list[tuple[Para, str]]]:
    """Group paragraphs of one (package, file, section, language) run into posts."""
    posts: list[list[tuple[Para, str]]] = []
    i = 0
    while i < len(paras):
        p = paras[i]
        r = rng.random()
        if len(p.text) > SPLIT_LONG_OVER and rng.random() < SPLIT_P:
            # a long paragraph becomes several short posts of 1-3 sentences
            sents = sentences(p.text, p.lang)
            j = 0
            while j < len(sents):
                k = rng.choice((1, 1, 2, 2, 3))
                chunk = "".join(sents[j:j + k]).strip()
                if len(chunk) >= MIN_CHARS[p.lang]:
                    posts.append([(p, chunk)])
                j += k
            i += 1
            continue
        k = 1 if r < 0.74 else 2 if r < 0.88 else 3 if r < 0.95 else rng.randint(4, 8)
        group: list[tuple[Para, str]] = []
        total = 0
        for q in paras[i:i + k]:
            if group and total + len(q.text) > MAX_POST_CHARS:
                break
            text = q.text
            if len(text) > MAX_POST_CHARS:  # cut at a sentence end
                cut, acc = [], 0
                for s in sentences(text, q.lang):
                    if cut and acc + len(s) > MAX_POST_CHARS:
                        break
                    cut.append(s)
                    acc += len(s)
                text = "".join(cut).strip()[:MAX_POST_CHARS]
            group.append((q, text))
            total += len(text) + 2
        posts.append(group)
        i += len(group)
    return posts


def nip01_id(pubkey: str, created_at: int, kind: int, tags: list[list[str]], content: str) -> str:
    ser = json.dumps([0, pubkey, created_at, kind, tags, content], ensure_ascii=False,
                     separators=(",", ":"))
    return hashlib.sha256(ser.encode()).hexdigest()


def build(out: Path, cache: Path, posts_wanted: int | None, seed: int,
          packages: list[tuple[str, str, str, str | None]]) -> dict:
    t0 = time.monotonic()
    debs = cache / "debs"
    pkg_info: list[dict] = []
    seen: set[str] = set()
    paras: list[Para] = []
    dropped = {"short_or_noisy": 0, "other_language": 0, "duplicate": 0, "template": 0}
    prefixes: dict[str, int] = {}
    for name, version, group, include in packages:
        deb = fetch_deb(name, version, debs)
        real_version = _deb_field(deb, "Version")
        members = html_members(deb, include)
        kept = {"ja": 0, "en": 0}
        raw = 0
        for path, text in members:
            for p in extract_paragraphs(text):
                raw += 1
                lang = detect_lang(p.text)
                if lang is None:
                    dropped["other_language"] += 1
                    continue
                if not keep_paragraph(p.text, lang):
                    dropped["short_or_noisy"] += 1
                    continue
                key = dedupe_key(p.text)
                if key in seen:
                    dropped["duplicate"] += 1
                    continue
                seen.add(key)
                prefix = p.text[:PREFIX_CHARS]
                prefixes[prefix] = prefixes.get(prefix, 0) + 1
                if prefixes[prefix] > PREFIX_MAX:
                    dropped["template"] += 1
                    continue
                paras.append(Para(p.text, lang, name, path, p.section, p.code, group))
                kept[lang] += 1
        info = {"name": name, "version": real_version, "pinned": version, "group": group,
                "include": include,
                "deb": deb.name, "sha256": sha256_file(deb), "size": deb.stat().st_size,
                "html_files": len(members), "paragraphs_seen": raw, "paragraphs_kept": kept}
        pkg_info.append(info)
        log(f"{name} {real_version}{' ' + include if include else ''}: {len(members)} html files, {raw} paragraphs, kept ja={kept['ja']} "
            f"en={kept['en']} ({time.monotonic() - t0:.0f} s)")

    rng = random.Random(f"realtext-posts:{seed}")
    # runs of paragraphs that may share a post: same package, file, section and language
    raw_posts: list[list[tuple[Para, str]]] = []
    run: list[Para] = []
    for p in paras + [None]:  # type: ignore[list-item]
        if run and (p is None or (p.package, p.path, p.section, p.lang) !=
                    (run[0].package, run[0].path, run[0].section, run[0].lang)):
            raw_posts.extend(cut_posts(run, rng))
            run = []
        if p is not None:
            run.append(p)
    available = len(raw_posts)
    log(f"{len(paras)} distinct paragraphs -> {available} posts available")
    if posts_wanted is not None and posts_wanted < available:
        pick = sorted(random.Random(f"realtext-sample:{seed}").sample(range(available), posts_wanted))
        raw_posts = [raw_posts[i] for i in pick]

    global_chooser = Chooser(GLOBAL_TOPICS, _zipf_weights(len(GLOBAL_TOPICS)))
    group_choosers = {g: Chooser(names, _zipf_weights(len(names))) for g, names in TOPIC_GROUPS.items()}
    authors = [hashlib.sha256(f"realtext-author:{seed}:{i}".encode()).hexdigest() for i in range(AUTHORS)]
    author_chooser = Chooser(authors, [1.0 / (r + 1) ** 0.9 for r in range(AUTHORS)])
    arng = random.Random(f"realtext-assign:{seed}")

    records: list[dict] = []
    seen_ids: set[str] = set()
    for group_paras in raw_posts:
        first = group_paras[0][0]
        lang = first.lang
        content = "\n\n".join(t for _, t in group_paras)
        g = first.group
        primary = (group_choosers[g] if arng.random() < IN_GROUP_P else global_chooser).pick(arng)
        post_topics = [primary]
        if arng.random() < SECOND_TOPIC_P:
            for _ in range(10):
                second = (group_choosers[g] if arng.random() < 0.5 else global_chooser).pick(arng)
                if second != primary:
                    post_topics.append(second)
                    break
        post_topics = [f"kukuri:{t}" for t in post_topics]
        pubkey = author_chooser.pick(arng)
        created_at = CREATED_FROM + arng.randrange(CREATED_SPAN)
        tags = [["t", t] for t in post_topics]
        event_id = nip01_id(pubkey, created_at, 1, tags, content)
        if event_id in seen_ids:
            continue
        seen_ids.add(event_id)
        code = [c for q, t in group_paras for c in q.code if c in t]
        records.append({
            "event_id": event_id, "pubkey": pubkey, "kind": 1, "created_at": created_at,
            "topics": post_topics, "tags": tags, "lang": lang, "content": content,
            "code_spans": sorted(set(code)),
            "source": {"package": first.package, "path": first.path, "section": first.section},
        })
    records.sort(key=lambda r: (r["created_at"], r["event_id"]))

    out.mkdir(parents=True, exist_ok=True)
    posts_path = out / "posts.jsonl"
    tmp = posts_path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
    tmp.replace(posts_path)

    stats = corpus_stats(records)
    manifest = {
        "generator": "bench/realtext/corpus.py",
        "seed": seed,
        "posts_requested": posts_wanted,
        "posts_available": available,
        "packages": pkg_info,
        "params": {"min_chars": MIN_CHARS, "min_en_words": MIN_EN_WORDS, "max_post_chars": MAX_POST_CHARS,
                   "split_long_over": SPLIT_LONG_OVER, "prefix_chars": PREFIX_CHARS,
                   "prefix_max": PREFIX_MAX, "split_p": SPLIT_P, "in_group_p": IN_GROUP_P,
                   "second_topic_p": SECOND_TOPIC_P, "zipf_s": ZIPF_S, "authors": AUTHORS,
                   "created_from": CREATED_FROM, "created_span": CREATED_SPAN},
        "paragraphs": {"kept": len(paras), "dropped": dropped},
        "stats": stats,
        "posts_file": posts_path.name,
        "posts_sha256": sha256_file(posts_path),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n",
                                       encoding="utf-8")
    manifest["elapsed_s"] = round(time.monotonic() - t0, 1)
    return manifest


def _pct(sorted_vals: list[int], q: float) -> int:
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))] if sorted_vals else 0


def corpus_stats(records: list[dict]) -> dict:
    by_lang: dict[str, int] = {}
    by_topic: dict[str, dict[str, int]] = {}
    lengths: dict[str, list[int]] = {}
    multi = 0
    for r in records:
        by_lang[r["lang"]] = by_lang.get(r["lang"], 0) + 1
        lengths.setdefault(r["lang"], []).append(len(r["content"]))
        multi += len(r["topics"]) > 1
        for t in r["topics"]:
            d = by_topic.setdefault(t, {"ja": 0, "en": 0})
            d[r["lang"]] += 1
    length_stats = {}
    for lang, vals in sorted(lengths.items()):
        vals.sort()
        length_stats[lang] = {
            "chars_total": sum(vals), "p10": _pct(vals, 0.1), "p50": _pct(vals, 0.5),
            "p90": _pct(vals, 0.9), "p99": _pct(vals, 0.99), "max": vals[-1],
            "share_20_500": round(sum(20 <= v <= 500 for v in vals) / len(vals), 3),
            "over_1000": sum(v > 1000 for v in vals)}
    topics_sorted = dict(sorted(by_topic.items(), key=lambda kv: -(kv[1]["ja"] + kv[1]["en"])))
    return {"posts": len(records), "by_lang": dict(sorted(by_lang.items())), "in_two_topics": multi,
            "topics": len(by_topic), "by_topic": topics_sorted, "length": length_stats}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default .local/realtext)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="where the .debs are kept (default: .local/realtext, i.e. <cache>/debs)")
    ap.add_argument("--posts", type=int, default=None,
                    help="keep a seeded sample of N posts (default: every post the packages yield)")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--packages", default=None,
                    help="comma-separated subset of the default package names")
    args = ap.parse_args(argv)
    pkgs = PACKAGES
    if args.packages:
        wanted = [s.strip() for s in args.packages.split(",") if s.strip()]
        unknown = [w for w in wanted if w not in {p[0] for p in PACKAGES}]
        if unknown:
            print(f"error: unknown package(s) {', '.join(unknown)}", file=sys.stderr)
            return 2
        pkgs = [p for p in PACKAGES if p[0] in wanted]
    if args.posts is not None and args.posts <= 0:
        print("error: --posts must be positive", file=sys.stderr)
        return 2
    cache = args.cache or DEFAULT_OUT
    m = build(args.out, cache, args.posts, args.seed, pkgs)
    s = m["stats"]
    print(f"corpus: {s['posts']} posts (ja {s['by_lang'].get('ja', 0)}, en {s['by_lang'].get('en', 0)}) "
          f"in {s['topics']} topics, {s['in_two_topics']} in two; from {len(m['packages'])} packages, "
          f"{m['posts_available']} available; {args.out / 'posts.jsonl'} sha256 {m['posts_sha256'][:16]} "
          f"({m['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
