"""Meilisearch 1.21's matching and ranking rules as search/milli.py applies them (no servers needed)."""

from __future__ import annotations

import pytest

pytest.importorskip("lindera")

from search_migration.search import milli  # noqa: E402


def _term(word: str, prefix: bool = False) -> milli.QueryWord:
    return milli.QueryWord(word, 0, prefix)


def test_typo_thresholds_count_characters_of_the_normalized_word():
    assert [milli.max_typos(w) for w in ("tabl", "table", "tables12", "configure", "デ")] == [0, 1, 1, 2, 0]
    # kana are decomposed (NFKD) before counting: ぱっけえじ is 7 characters, so one typo is allowed
    (word,) = [t.word for t in milli.parse("パッケージ ")]
    assert len(word) == 7 and milli.max_typos(word) == 1


def test_one_typo_keeps_the_first_letter_two_typos_charge_it_double():
    vocab = ["tables", "table", "cable", "tabel", "tablet", "tabels"]
    got = milli.typo_derivations(_term("table"), vocab)
    assert got == {"tables": 1, "tabel": 1, "tablet": 1}  # cable: a typo on the first letter is not allowed
    got = milli.typo_derivations(_term("configure"), ["konfigure", "configuer", "confgiuer", "onfigure", "cnofigure"])
    assert got == {"konfigure": 2, "configuer": 1, "confgiuer": 2, "onfigure": 2, "cnofigure": 1}


def test_last_word_is_a_prefix_unless_a_separator_ends_the_query():
    assert [t.prefix for t in milli.parse("rust tok")] == [False, True]
    assert [t.prefix for t in milli.parse("rust tok ")] == [False, False]
    # a prefix with a typo: confgi is one typo from the start of configuration
    assert milli.typo_derivations(_term("confgi", prefix=True), ["configuration"]) == {"configuration": 1}


def test_ngrams_join_adjacent_query_words():
    terms = milli.parse("sun flower pot")
    assert terms[0].ngrams == [("sunflower", 2, False), ("sunflowerpot", 3, True)]
    assert terms[1].ngrams == [("flowerpot", 2, True)]
    # 文書 asked as kanji only is Chinese to Meilisearch (jieba: 文 + 書); the ngram finds the Japanese word
    assert ("文書", 2, True) in milli.parse("文書")[0].ngrams


def _key(q: str, fields: list) -> tuple:
    terms = milli.parse(q)
    for t in terms:
        t.derivations = {t.word: 0}
    return milli.rank_key(terms, milli.document_words(fields))


def test_attribute_order_title_summary_content_author_tags():
    in_title = _key("kernel ", ["kernel news", "", "x", "", []])
    in_content = _key("kernel ", ["news", "", "about the kernel", "", []])
    in_tags = _key("kernel ", ["news", "", "nothing", "", ["kukuri:kernel"]])
    assert in_title < in_content < in_tags
    assert in_title[2] == 0 and in_content[2] == 2 and in_tags[2] == 4


def test_proximity_before_attribute_and_position_bucketing():
    near = _key("debian kernel ", ["", "", "x y z debian kernel", "", []])
    far = _key("debian kernel ", ["debian", "", "kernel", "", []])
    assert near[1] == 1 and far[1] == milli.FAR and near < far
    assert [milli.bucketed_position(p) for p in (0, 15, 16, 23, 24, 25, 33, 100)] == [0, 15, 24, 24, 32, 32, 64, 128]
    assert [milli.cost_from_distance(d) for d in (0, 1, 4, 5, 8, 12, 17, 25, 65, 257, 2000)] == list(range(11))


def test_positions_are_meilisearchs_hard_separator_gap_and_array_gap():
    words = milli.document_words(["", "", "one. two", "", ["kukuri:a", "kukuri:b"]])
    assert milli.decode(words["one"][0]) == (2, 0) and milli.decode(words["two"][0]) == (2, 8)
    assert [milli.decode(p) for p in words["kukuri"]] == [(4, 0), (4, 9)]


def test_an_ngram_costs_its_words_in_typos():
    """milli typo.rs: a 2-gram costs 2, so the document holding 東 and 京 apart (kanji-only, Chinese to
    Meilisearch) ranks before the Japanese 東京 the ngram finds."""
    apart = _key("東京", ["weekend #東京", "", "", "", []])
    joined = _key("東京", ["東京駅の近く", "", "", "", []])
    assert apart[0] == 0 and joined[0] == 2 and apart < joined
    assert milli.cheapest_cover([0, 99], {(0, 2)})[0] == 2 and milli.cheapest_cover([1, 1, 0], {(0, 3)})[0] == 2


def test_the_typo_buckets_words_alone_place_the_document():
    """milli hands the typo bucket's query graph on: a document holding 東 and 京 apart is placed by those
    words (proximity, position), not by the 東京 it also holds at the title's start (2 typos, another
    bucket); both-ways costs are kept apart per word."""
    late = _key("東京", ["東京でカメラ the update was great this client #東京", "", "", "", []])
    early = _key("東京", ["the library #東京", "", "", "", []])
    assert late[0] == early[0] == 0 and early < late
    assert late[3] > 0  # 東 京 at positions 9, 10: the 東京 at position 0 is not counted
    assert milli.cheapest_cover([0, 1, 0], {(1, 2)}) == (1, [0, 0, 1, 1], [1, 1, 0, 0])


def test_an_ngram_is_placed_from_its_first_words_place():
    """milli position/mod.rs: an ngram from the i-th query word at position p costs cost(|p - i| + k) for
    its k-th word, so 自転 車 (自転車 cut into characters) at the title's start ranks before the same one
    word later, though each character alone would be in its place there."""
    start = _key("自転車", ["自転車と温泉", "", "", "", []])
    later = _key("自転車", ["２０２６自転車について", "", "", "", []])
    assert start[0] == later[0] == 2 and (start[3], later[3]) == (2, 3) and start < later
    assert milli.ngram_position_cost(0, 0, 2) == 1 and milli.ngram_position_cost(20, 0, 1) == 6
