-- Posts that start with the query or consist of it (Meilisearch's `exactness` puts them first) can be
-- rare and spread over the id space, so the bounded candidate walk would miss them. Two ways to them:

-- 1. Whole text equal to the query, by its hash (md5, not the text: a btree entry must stay small
--    whatever a post's length).
CREATE INDEX IF NOT EXISTS post_search_documents_exact_idx
    ON cn_search.post_search_documents (md5(normalized_text), topic_id, post_id)
    WHERE NOT is_deleted AND visibility = 'public';

-- 2. Text starting with the query, through its lead: the first Latin word, or the first two CJK
--    characters (tags' `#`/`@` ignored), in post-id order — the order Meilisearch breaks ties in.
CREATE OR REPLACE FUNCTION cn_search.search_lead(normalized text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT left(CASE
        WHEN ltrim(normalized, '#@') ~ '^[\u3005-\u3007\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]'
        THEN left(ltrim(normalized, '#@'), 2)
        ELSE substring(split_part(ltrim(normalized, '#@'), ' ', 1)
                       FROM '^[^\u3005-\u3007\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]*')
    END, 32)
$$;

CREATE INDEX IF NOT EXISTS post_search_documents_lead_idx
    ON cn_search.post_search_documents (topic_id, cn_search.search_lead(normalized_text), post_id)
    WHERE NOT is_deleted AND visibility = 'public';
