"""The normalizer: one function on the write path and at query time, so both see the same words."""

from __future__ import annotations

import pytest

from search_migration.search.text import NORMALIZER_VERSION, index_tokens, normalize, token_positions, tsvector_literal


@pytest.mark.parametrize("raw, expected", [
    ("Ｐｙｔｈｏｎ　２０２６", "python 2026"),  # full-width ASCII and the ideographic space
    ("ｶﾒﾗ ﾃﾞｰﾀ ｶﾞｯｺｳ", "カメラ データ ガッコウ"),  # half-width kana, voiced marks composed
    ("がぎぐげご ぱぴぷぺぽ", "がぎぐげご ぱぴぷぺぽ"),  # dakuten and handakuten are meaning, not accents
    ("Café NAÏVE Zürich jalapeño Tiếng", "cafe naive zurich jalapeno tieng"),  # Latin accents fold
    ("ラーメン🍜食べたい☕️ 1️⃣ 🎉", "ラーメン 食べたい 1"),  # emoji, selectors and keycaps are spaces
    ("#nostr と #ラーメン ＃東京", "#nostr と #ラーメン #東京"),  # tags kept, full-width # too
    ("@alice さん、@さくら!", "@alice さん @さくら"),  # mentions kept, punctuation gone
    ("dev_team: 「検索」・(β)", "dev_team 検索 β"),
])
def test_normalize(raw, expected):
    assert normalize(raw) == expected
    assert normalize(normalize(raw)) == expected  # idempotent: a query normalized twice is the same query


def test_dakuten_is_not_folded_away():
    assert normalize("が") != normalize("か")
    assert normalize("ｶﾞ") == normalize("ガ") == "ガ"


def test_cjk_runs_are_bigrams_with_a_final_unigram_and_latin_runs_are_words():
    tokens = index_tokens(normalize("東京でラーメン rust"))
    assert tokens == [("東京", 1), ("京で", 2), ("でラ", 3), ("ラー", 4), ("ーメ", 5), ("メン", 6), ("ン", 6),
                      ("rust", 7)]
    assert index_tokens("猫") == [("猫", 1)]


def test_tags_are_their_own_tokens_and_also_plain_words():
    tokens = dict(index_tokens(normalize("#nostr #ラーメン @さくら")))
    assert {"#nostr", "nostr", "#ラーメン", "ラー", "@さくら", "さく"} <= set(tokens)
    assert tokens["#ラーメン"] == tokens["ラー"]  # the tag sits where its run starts


def test_tsvector_literal_escapes_and_caps_positions():
    literal = tsvector_literal({"it's": [1], "a\\b": [2], "x": [20_000], "y": [3, 20_001, 3, 20_002]})
    assert literal == "'it''s':1 'a\\\\b':2 'x':16383 'y':3,16383"


def test_repeated_tokens_keep_every_position():
    assert token_positions(normalize("ラーメン rust ラーメン #rust")) == {
        "ラー": [1, 5], "ーメ": [2, 6], "メン": [3, 7], "ン": [3, 7], "rust": [4, 8], "#rust": [8]}


def test_version_is_current():
    assert NORMALIZER_VERSION == 3
