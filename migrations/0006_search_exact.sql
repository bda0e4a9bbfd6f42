-- Posts whose whole text is the query (Meilisearch's `exactness` puts them first) are rare and spread
-- over the id space, so the bounded candidate walk would miss them: find them by their text's hash.
-- md5, not the text itself: a btree entry must stay small whatever a post's length.
CREATE INDEX IF NOT EXISTS post_search_documents_exact_idx
    ON cn_search.post_search_documents (md5(normalized_text), topic_id, post_id)
    WHERE NOT is_deleted AND visibility = 'public';
