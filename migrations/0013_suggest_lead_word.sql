-- Suggest's targeted candidates (search/pg_search.py): the first word of a document's title as
-- Meilisearch indexes it (attribute 0, position 0: the best place a prefix can match), so the posts whose
-- title starts with the typed prefix are found through a btree instead of a scan of the prefix's matches.
ALTER TABLE cn_search.post_search_documents ADD COLUMN IF NOT EXISTS lead_word text;

-- documents written before this column: the word at encoded position 1 of their tsvector (milli.py)
UPDATE cn_search.post_search_documents AS d
SET lead_word = (SELECT u.lexeme FROM unnest(d.search_tokens) AS u WHERE 1 = ANY(u.positions) LIMIT 1)
WHERE NOT d.is_deleted AND d.normalizer_version >= 3 AND d.lead_word IS NULL;

CREATE INDEX IF NOT EXISTS post_search_documents_lead_word_idx
    ON cn_search.post_search_documents (lead_word text_pattern_ops, created_at, post_id)
    WHERE NOT is_deleted AND visibility = 'public';
