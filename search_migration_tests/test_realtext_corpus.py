"""The real-text bench's corpus and query rules (bench/realtext), on inline samples: no network, no
.deb, no servers. The Japanese-tokenizer test runs only where bench/realtext/requirements.txt is
installed."""
from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1] / "bench" / "realtext"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"realtext_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


corpus = _load("corpus")
queries = _load("queries")

DOC = """<html><head><title>T</title><script>var x = 1;</script></head>
<body class="article toc2">
<div class="navheader"><table><tr><td>Prev</td><td>Next chapter of the manual here</td></tr></table></div>
<div id="toc"><ul><li>1. A table of contents entry that is long enough to keep</li></ul></div>
<h2 class="title">1. Heading that is long enough to be a paragraph</h2>
<p>Run <code class="literal">apt-get install --no-install-recommends foo</code> to install the
package without its recommends, then edit <span class="filename">/etc/apt/sources.list</span>.</p>
<pre class="screen">$ sudo apt-get update
Reading package lists... Done and more output lines here</pre>
<p>パッケージ管理システムは
ソフトウェアの導入と削除を行います。詳しくは <code>dpkg</code> を参照してください。</p>
<table><tr><td>a table cell with enough words to pass the length filter</td></tr></table>
<div class="para">Publican wraps its paragraphs in a div, and they are prose like any other.</div>
<div class="figure"><p class="title"><strong>Figure 8.56 a caption that should not become a post</strong></p></div>
<h3>2. Next</h3>
<ul><li>A list item is prose too when it is long enough to say something.</li></ul>
</body></html>"""


def test_extraction_keeps_prose_and_inline_code_and_drops_the_rest():
    paras = corpus.extract_paragraphs(DOC)
    texts = [p.text for p in paras]
    assert texts == [
        "Run apt-get install --no-install-recommends foo to install the package without its "
        "recommends, then edit /etc/apt/sources.list.",
        "パッケージ管理システムはソフトウェアの導入と削除を行います。詳しくは dpkg を参照してください。",
        "Publican wraps its paragraphs in a div, and they are prose like any other.",
        "A list item is prose too when it is long enough to say something.",
    ]
    # a line wrap inside Japanese is no space; the author's spaces around Latin words stay
    assert "は\n" not in texts[1] and "は ソ" not in texts[1]
    assert paras[0].code == ["apt-get install --no-install-recommends foo", "/etc/apt/sources.list"]
    assert paras[1].code == ["dpkg"]
    assert paras[3].section > paras[0].section  # a heading starts a new section


def test_language_tags_and_filters():
    assert corpus.detect_lang("パッケージを削除します。") == "ja"
    assert corpus.detect_lang("Remove the package with apt-get.") == "en"
    assert corpus.detect_lang("这是一个中文句子，没有假名。") is None  # Chinese: no kana
    assert corpus.detect_lang("Ein Beispiel für Umlaute.") is None
    assert not corpus.keep_paragraph("Too short.", "en")
    assert not corpus.keep_paragraph("x = { a; b; c; d; e; f; g; h; } and some words", "en")
    assert corpus.keep_paragraph("This paragraph has enough words to be a post.", "en")


def test_sentences_rejoin_to_the_source():
    for text, lang in [("一つ目です。 二つ目です！三つ目", "ja"),
                       ("First one. Second (really)! \"Third\" one? Fourth v1.2 ok.", "en")]:
        parts = corpus.sentences(text, lang)
        assert "".join(parts) == text and len(parts) >= 3


def test_posts_are_deterministic_and_bounded():
    paras = [corpus.Para(("Sentence number %d is here. " % i) * (2 + i % 40), "en", "pkg", "f.html", 1, [],
                         "admin") for i in range(200)]
    a = corpus.cut_posts(paras, random.Random(1))
    b = corpus.cut_posts(paras, random.Random(1))
    assert [[t for _, t in p] for p in a] == [[t for _, t in p] for p in b]
    for post in a:
        assert sum(len(t) for _, t in post) <= corpus.MAX_POST_CHARS + 2 * len(post)
        assert all(len(t) >= corpus.MIN_CHARS["en"] for _, t in post)
    eid = corpus.nip01_id("ab" * 32, 1_700_000_000, 1, [["t", "kukuri:x"]], "hello")
    assert len(eid) == 64 and eid != corpus.nip01_id("ab" * 32, 1_700_000_000, 1, [["t", "kukuri:x"]], "hello!")


def test_manpages_are_refused():
    with pytest.raises(SystemExit):
        corpus.fetch_deb("manpages-ja", "1", Path("/nonexistent"))
    assert not any(p[0] in corpus.FORBIDDEN for p in corpus.PACKAGES)


@pytest.mark.parametrize("k,word,min_len", [(1, "package", 5), (1, "sixth", 5), (2, "repository", 9),
                                            (2, "documentation", 9)])
def test_typos_have_exact_distance_and_spare_the_first_letter(k, word, min_len):
    rng = random.Random(k)
    made = 0
    for _ in range(300):
        r = queries.make_typos(word, k, rng, {"packages"}, min_len)
        if r is None:
            continue
        typo, ops = r
        made += 1
        assert typo[0] == word[0] and len(typo) >= min_len and typo != "packages"
        assert queries.damerau(word, typo) == k and len(ops) == k
        assert all(op["pos"] >= 1 and op["op"] in queries.TYPO_OPS for op in ops)
    assert made > 50


def test_damerau_counts_a_transposition_once():
    assert queries.damerau("table", "tabel") == 1
    assert queries.damerau("table", "tables") == 1
    assert queries.damerau("kitten", "sitting") == 3


def test_identifier_patterns():
    found = {}
    text = ("Call pthread_create, run dpkg --force-depends or apt-get -y, see /etc/apt/sources.list "
            "and ~/.bashrc, upgrade to v1.2 or 2.6.32, edit foo.conf; NonMusicalPaperColumnGrob; well-known.")
    for kind, pat, _ in queries.ID_PATTERNS:
        found[kind] = [m.group(0) for m in pat.finditer(text)]
    assert "pthread_create" in found["snake"]
    assert "--force-depends" in found["option"]
    assert {"v1.2", "2.6.32"} <= set(found["version"])
    assert any(p.startswith("/etc/apt/sources.list") for p in found["path"])
    assert "foo.conf" in found["filename"]
    assert "apt-get" in found["hyphenated"] and "well-known" in found["hyphenated"]  # code-only kind
    assert "NonMusicalPaperColumnGrob" in found["camel"]


def test_japanese_words_follow_unidic():
    pytest.importorskip("lindera")
    tok = queries.JaTokenizer()
    toks = tok.tokens("現在状態のファイルシステムイメージを確認してください。")
    surfaces = [t[0] for t in toks]
    assert surfaces[:2] == ["現在", "状態"] and "イメージ" in surfaces
    assert [surfaces[i] for i in queries.ja_nouns(toks)] == ["現在", "状態", "ファイル", "システム",
                                                             "イメージ", "確認"]
    assert "ファイルシステムイメージ" in queries.ja_noun_runs(toks)
