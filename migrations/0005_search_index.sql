-- Indexes for PostgreSQL search over cn_search.post_search_documents (search_migration/pg_search.py).
-- Both are partial on what search may ever return (live, public), so tombstones cost nothing at query time.

-- btree_gin lets one GIN index carry the topic next to the tokens: a topic's matches are intersected
-- inside the index instead of fetching every match of a frequent token from the heap.
CREATE EXTENSION IF NOT EXISTS btree_gin WITH SCHEMA cn_search;

CREATE INDEX IF NOT EXISTS post_search_documents_search_idx
    ON cn_search.post_search_documents USING gin (topic_id, search_tokens)
    WHERE NOT is_deleted AND visibility = 'public';

-- Candidates are read in the order Meilisearch breaks ties (post id), so a very frequent term stops
-- after a bounded number of rows instead of ranking every match.
CREATE INDEX IF NOT EXISTS post_search_documents_topic_post_idx
    ON cn_search.post_search_documents (topic_id, post_id)
    WHERE NOT is_deleted AND visibility = 'public';
