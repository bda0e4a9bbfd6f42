"""search.segment agrees with the live Meilisearch: the same words, at the same places, on real text.

Meilisearch's words are recovered from Meilisearch itself: each document is probed with candidate
words (ours, then every substring of any stretch no probe explained) and `_matchesPosition` says which
whole words it matched. With typo tolerance and prefix search off a match is always one whole indexed
word (or two, for a split-word match, which the minimal-span rule drops), so the recovered spans are
Meilisearch's segmentation, independently of ours. Tokenization does not depend on those two settings.
"""

from __future__ import annotations

import uuid

import json
import unicodedata
from pathlib import Path

import pytest

from search_migration.write_path import meili_index
from search_migration.search import segment

SENTENCES = json.loads((Path(__file__).parent / "data" / "segment_sentences.json").read_text(encoding="utf-8"))
CLASSES = ("mixed", "kanji", "ja", "en")
# the product's index settings (PRODUCT.md), no localizedAttributes; probing: exact words only
PRODUCT_SETTINGS = {"searchableAttributes": ["title", "summary", "content", "author", "tags"],
                    "filterableAttributes": ["author", "kind", "created_at", "tags"],
                    "sortableAttributes": ["created_at"]}
PROBE_SETTINGS = {**PRODUCT_SETTINGS, "typoTolerance": {"enabled": False}, "prefixSearch": "disabled"}
RULES = "a_b v1.2 --color=never #tag @user foo.bar end. Next"


def nfkd(s: str) -> str:
    return unicodedata.normalize("NFKD", s)


# --- rules, pinned without a server ------------------------------------------------------------
def test_separator_rules():
    assert segment.words("a_b") == [("a", 0), ("b", 1)]
    assert segment.words("v1.2") == [("v1", 0), ("2", 1)]
    assert segment.words("--color=never") == [("color=never", 0)]
    assert segment.words("#tag @user") == [("tag", 0), ("user", 1)]
    assert segment.words("foo.bar") == [("foo", 0), ("bar", 1)]  # '.' alone is soft
    assert segment.words("end. Next") == [("end", 0), ("next", 8)]  # '. ' is hard
    assert segment.words("x$y a<b c|d e~f g^h") == [("x$y", 0), ("a<b", 1), ("c|d", 2), ("e~f", 3), ("g^h", 4)]
    assert segment.words("can't") == [("can", 0), ("t", 1)]
    assert segment.words("Élan NAÏVE œuvre") == [("elan", 0), ("naive", 1), ("oeuvre", 2)]


def test_katakana_becomes_hiragana_as_wana_kana_does():
    assert [w for w, _ in segment.words("トートバッグ")] == ["とうと", nfkd("ばっぐ")]
    assert [w for w, _ in segment.words("イメージ")] == [nfkd("いめえじ")]
    assert [w for w, _ in segment.words("データ")] == [nfkd("でーた")]  # NFKD first: デ is て + ゛
    assert segment.query_words("ファイル システム") == ["ふぁいる", "しすてむ"]


def test_positions():
    assert segment.words("現在状態を確認します。次へ") == [
        ("現在", 0), ("状態", 1), ("を", 2), ("確認", 3), ("し", 4), ("ます", 5), ("次", 13), ("へ", 14)]
    assert segment.words("a, b") == [("a", 0), ("b", 8)] and segment.words("a,b") == [("a", 0), ("b", 1)]
    assert segment.words("a !? b") == [("a", 0), ("b", 8)]  # a hard separator is not added twice
    assert segment.field_words(["a b", "c"]) == [("a", 0), ("b", 1), ("c", 9)]  # array values 8 apart


def test_cjk_language_rule():
    assert segment.cjk_language("現在状態") == "cmn"  # kanji only: jieba, single characters here
    assert [w for w, _ in segment.words("現在状態")] == ["現", "在", "狀", "態"]  # 状 folded to 狀 (kVariants)
    assert segment.cjk_language("現在状態を確認") == "jpn"
    assert segment.cjk_language("設定変更手順を一覧表示機能") == "jpn"  # kana 1/13 > 5 %
    assert segment.cjk_language("設定変更手順一覧表示機能機能機能機能機能機能を") == "cmn"  # 1/25 <= 5 %
    # each script group is detected alone: a kanji-only run between Latin words is Chinese
    assert [w for w, _ in segment.words("Debian 設定 ファイル")] == ["debian", "設定", "ふぁいる"]
    assert [w for w, _ in segment.words("X 現在状態 Y")] == ["x", "現", "在", "狀", "態", "y"]


def test_version_gate():
    assert segment.matches_meilisearch("1.21.0")
    assert not segment.matches_meilisearch("v1.5.0")
    assert not segment.matches_meilisearch("1.22.0")


# --- agreement with the live Meilisearch -------------------------------------------------------
def _index(meili, uid: str, texts: list[str], settings: dict):
    meili_index.wait(meili, meili.create_index(uid, {"primaryKey": "id"}).task_uid)
    meili_index.wait(meili, meili.index(uid).update_settings(settings).task_uid)
    docs = [{"id": i, "kind": i, "content": t} for i, t in enumerate(texts)]
    meili_index.wait(meili, meili.index(uid).add_documents(docs).task_uid)
    return meili.index(uid)


def meili_spans(index, kind: int, text: str, candidates) -> set[tuple[int, int]]:
    """Meilisearch's words in `text` as character spans; a stretch no probe explains stays uncovered."""
    byte_at = [0]
    for c in text:
        byte_at.append(byte_at[-1] + len(c.encode()))
    char_at = {b: i for i, b in enumerate(byte_at)}
    found: set[tuple[int, int]] = set()
    probed: set[tuple[int, int]] = set()

    def probe(s: int, e: int):
        if (s, e) in probed:
            return
        probed.add((s, e))
        for locales in (None, ["jpn"], ["cmn"]):  # the probe word alone may be detected otherwise
            params = {"filter": f"kind = {kind}", "showMatchesPosition": True, "attributesToRetrieve": ["kind"]}
            if locales:
                params["locales"] = locales
            for hit in index.search(text[s:e], params)["hits"]:
                for m in hit["_matchesPosition"].get("content", []):
                    span = (char_at.get(m["start"]), char_at.get(m["start"] + m["length"]))
                    if None not in span:
                        found.add(span)
            if (s, e) in found:
                return

    for s, e in candidates:
        probe(s, e)
    covered = {i for s, e in found for i in range(s, e)}
    wordish = [i for i, c in enumerate(text) if i not in covered and unicodedata.category(c)[0] in "LNMS"
               and not segment._is_separator_char(c)]
    for i in wordish:  # exhaustive fallback: every substring of up to 10 characters starting there
        for j in range(i + 1, min(len(text), i + 10) + 1):
            probe(i, j)
    # a split-word match ("texlive" finding "TEX Live") spans two words: keep minimal spans only
    return {(s, e) for s, e in found if not any((a, b) != (s, e) and s <= a and b <= e for a, b in found)}


def our_spans(text: str) -> list[tuple[int, int]]:
    return [(s, e) for lemma, kind, s, e in segment.tokens(text) if kind == "word" and lemma.strip()]



@pytest.fixture
def index_uid(meili):
    """A scratch index of this test's own (not a product topic index), deleted afterwards."""
    uid = f"segment_{uuid.uuid4().hex[:12]}"
    yield uid
    meili_index.delete_index(meili, uid)

@pytest.fixture
def probe_index(meili, index_uid):
    texts = [t for cls in CLASSES for t in SENTENCES[cls]]
    texts += [RULES, "ファイルシステムイメージ", "TEX\u00a0Live", "Debian 設定 ファイル", "X 現在状態 Y"]
    return _index(meili, index_uid, texts, PROBE_SETTINGS), texts


def test_the_running_meilisearch_is_the_verified_one(meili):
    assert segment.matches_meilisearch(meili.get_version()["pkgVersion"])


def test_segmentation_agrees_with_meilisearch_on_real_sentences(probe_index):
    """Exact agreement (F1 1.000 per class): measured so on 60 other sentences of the same source."""
    index, texts = probe_index
    disagreements = []
    for kind, text in enumerate(texts):
        ours = our_spans(text)
        theirs = meili_spans(index, kind, text, ours)
        if set(ours) != theirs:
            disagreements.append((text, [text[s:e] for s, e in sorted(set(ours) - theirs)],
                                  [text[s:e] for s, e in sorted(theirs - set(ours))]))
    assert disagreements == []


def test_meilisearch_folds_katakana_and_ranks_hard_separators_as_we_count(meili, index_uid):
    texts = ["コマンド", "alpha beta", "alpha_beta", "alpha gamma beta", "alpha. beta", "alpha、beta",
             "alpha, beta"]
    index = _index(meili, index_uid, texts, PRODUCT_SETTINGS)
    # a hiragana query finds the katakana word: both sides are stored as こまんど
    assert [h["kind"] for h in index.search("こまんど", {"locales": ["jpn"]})["hits"]] == [0]
    # proximity: Meilisearch's score falls as our position gap grows, and every hard gap scores alike
    hits = index.search("alpha beta", {"showRankingScoreDetails": True, "limit": 10})["hits"]
    score = {texts[h["kind"]]: h["_rankingScoreDetails"]["proximity"]["score"] for h in hits}
    gap = {t: dict(segment.words(t))["beta"] - dict(segment.words(t))["alpha"] for t in texts[1:]}
    assert sorted(gap.values()) == [1, 1, 2, 8, 8, 8]
    for a in texts[1:]:
        for b in texts[1:]:
            assert (gap[a] < gap[b]) == (score[a] > score[b]), (a, b, gap, score)


def test_chinese_detected_ideographs_fold_by_kvariants_as_meilisearch_does(meili, index_uid):
    """A kanji-only query is Chinese to Meilisearch: 検 is stored and asked as 檢 there, so 検索 misses the
    検索 of Japanese text (kept as written) and finds the one of a kanji-only run."""
    assert segment.query_words("検索") == ["檢", "索"] and segment.query_words("写真") == ["寫眞"]
    assert "検索" in dict(segment.words("天気を検索しても見つからない"))  # Japanese: not folded
    texts = ["debugging again #検索", "天気を検索しても見つからない", "weekend #写真", "写真を撮った"]
    index = _index(meili, index_uid, texts, PRODUCT_SETTINGS)
    for q, kinds in (("検索", [0]), ("檢索", [0]), ("写真", [2])):
        assert [h["kind"] for h in index.search(q)["hits"]] == kinds, q


def test_warm_builds_everything_a_first_query_would():
    """A read path warms the segmenter at start (ReadRouter): afterwards no first query of any script
    builds a table, a dictionary or the separators' pattern in a user's request (a kanji query paid
    ~0.3 s for the non-ASCII separator class, in each thread that met it first)."""
    lazy = [segment._separator_re, segment._ascii_separator_re, segment._lindera, segment._jieba, segment._kvariants]
    for f in lazy:
        f.cache_clear()
    segment.warm()
    built = [f.cache_info().currsize for f in lazy]
    for q in ("東京", "ラーメン", "rust", "한국어", "Ελλάδα"):
        segment.query_words(q)
    assert built == [1] * len(lazy) and [f.cache_info().misses for f in lazy] == [1] * len(lazy)
