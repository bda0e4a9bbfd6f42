-- PostgreSQL search on Meilisearch's own words (normalizer v3, search/milli.py): every indexed word once,
-- for typo expansion at query time (milli's words FST), and the lookups that expansion needs.
CREATE EXTENSION IF NOT EXISTS fuzzystrmatch WITH SCHEMA cn_search;

CREATE TABLE IF NOT EXISTS cn_search.search_vocabulary (
    word text PRIMARY KEY
);
-- words sharing the query word's first character, by length (1 and 2 typos keep the first character)
CREATE INDEX IF NOT EXISTS search_vocabulary_first_idx
    ON cn_search.search_vocabulary (left(word, 1), char_length(word));
-- a typo on the first character: the rest of the word, equal or as a prefix (substitution, insertion)
CREATE INDEX IF NOT EXISTS search_vocabulary_rest_idx
    ON cn_search.search_vocabulary (substr(word, 2));
CREATE INDEX IF NOT EXISTS search_vocabulary_rest_pattern_idx
    ON cn_search.search_vocabulary (substr(word, 2) text_pattern_ops);
CREATE INDEX IF NOT EXISTS search_vocabulary_pattern_idx
    ON cn_search.search_vocabulary (word text_pattern_ops);
