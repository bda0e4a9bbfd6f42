"""The normalizer: one function on the write path and at query time, so both see the same words."""

from __future__ import annotations

import pytest

from search_migration.search.text import NORMALIZER_VERSION, normalize


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


def test_version_is_current():
    assert NORMALIZER_VERSION == 4
