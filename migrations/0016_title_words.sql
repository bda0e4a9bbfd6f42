-- Ordered candidates for one-word queries (search/pg_search.py): the words of each live document's title
-- (attribute 0) with their best milli position cost, in the order Meilisearch breaks ties (index uid, then
-- insertion order). For one query word, Meilisearch ranks every document holding it (0 typos) in the title
-- before any other, by the word's best position (0: the first word; 1; 2-4; 5-7; 8-11) and then exactness;
-- a btree read in that order finds the first N of each tier without ranking every match of a frequent word
-- (a GIN index returns matches unordered: at 1,000,000 posts a prefix can match 100,000 of them).

-- The legacy index uid of a topic (write_path/legacy_documents.index_uid): federated suggest breaks ties
-- between indexes in uid order.
CREATE OR REPLACE FUNCTION cn_search.index_uid(topic_id text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT 'topic_' || lower(regexp_replace(topic_id, '[^A-Za-z0-9_-]', '_', 'g'))
$$;

-- milli's position cost (search/milli.py: cost_from_distance(bucketed_position(p))) of a word position in
-- its attribute for the first query word, 5 standing for "5 or more". One CASE, so that it inlines.
CREATE OR REPLACE FUNCTION cn_search.position_tier(pos integer) RETURNS smallint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT (CASE WHEN pos = 0 THEN 0 WHEN pos = 1 THEN 1 WHEN pos <= 4 THEN 2 WHEN pos <= 7 THEN 3 WHEN pos <= 11 THEN 4
                 ELSE 5 END)::smallint
$$;

CREATE TABLE IF NOT EXISTS cn_search.post_title_words (
    word       text COLLATE "C" NOT NULL,
    tier       smallint         NOT NULL,  -- best position cost of the word anywhere in the document, 0-4
    uid        text COLLATE "C" NOT NULL,  -- cn_search.index_uid(topic_id)
    created_at bigint           NOT NULL,  -- insertion order, as post_search_documents orders it
    post_id    text             NOT NULL,
    topic_id   text             NOT NULL
);
-- a word exactly (or words by prefix), tier by tier, in tie order
CREATE INDEX IF NOT EXISTS post_title_words_word_idx
    ON cn_search.post_title_words (tier, word, uid, created_at, post_id) INCLUDE (topic_id);
-- a frequent prefix: walk a tier in tie order and keep the words that start with it
CREATE INDEX IF NOT EXISTS post_title_words_order_idx
    ON cn_search.post_title_words (tier, uid, created_at, post_id) INCLUDE (word, topic_id);
-- a document's rows, for the triggers' deletes (hash: a fifth of a btree's size over 64-character ids)
CREATE INDEX IF NOT EXISTS post_title_words_doc_idx
    ON cn_search.post_title_words USING hash (post_id);

-- The title words of documents (`docs`: post_search_documents or a transition table of it) whose best
-- position cost is under 5 (a position under 12), as a query over `docs` (a view cannot see a trigger's
-- transition table).
CREATE OR REPLACE FUNCTION cn_search.title_words_sql(docs text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT format($q$
        SELECT u.lexeme, cn_search.position_tier(m.pos), cn_search.index_uid(d.topic_id), d.created_at,
               d.post_id, d.topic_id
        FROM %s AS d, unnest(d.search_tokens) AS u,
             LATERAL (SELECT min((x - 1) %% 3000) AS pos FROM unnest(u.positions) AS x) AS m
        WHERE NOT d.is_deleted AND d.visibility = 'public' AND u.positions[1] <= 3000 AND m.pos < 12 $q$,
        docs)
$$;

-- Kept in step with post_search_documents by statement triggers (every writer: pg_documents, the expiry
-- sweep, a rebuild), one set operation per statement.
CREATE OR REPLACE FUNCTION cn_search.title_words_sync() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- DELETE, not TRUNCATE: a TRUNCATE listing both tables (a demo reset) holds post_title_words
        -- open in this session, and a nested TRUNCATE of it fails ("being used by active queries")
        DELETE FROM cn_search.post_title_words;
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        DELETE FROM cn_search.post_title_words AS t USING old_rows AS o
        WHERE t.post_id = o.post_id AND t.topic_id = o.topic_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        EXECUTE 'INSERT INTO cn_search.post_title_words ' || cn_search.title_words_sql('new_rows');
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS title_words_insert ON cn_search.post_search_documents;
DROP TRIGGER IF EXISTS title_words_update ON cn_search.post_search_documents;
DROP TRIGGER IF EXISTS title_words_delete ON cn_search.post_search_documents;
DROP TRIGGER IF EXISTS title_words_truncate ON cn_search.post_search_documents;
CREATE TRIGGER title_words_insert AFTER INSERT ON cn_search.post_search_documents
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION cn_search.title_words_sync();
CREATE TRIGGER title_words_update AFTER UPDATE ON cn_search.post_search_documents
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION cn_search.title_words_sync();
CREATE TRIGGER title_words_delete AFTER DELETE ON cn_search.post_search_documents
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION cn_search.title_words_sync();
CREATE TRIGGER title_words_truncate AFTER TRUNCATE ON cn_search.post_search_documents
    FOR EACH STATEMENT EXECUTE FUNCTION cn_search.title_words_sync();

-- documents written before this migration
TRUNCATE cn_search.post_title_words;
DO $$ BEGIN
    EXECUTE 'INSERT INTO cn_search.post_title_words ' || cn_search.title_words_sql('cn_search.post_search_documents');
END $$;
ANALYZE cn_search.post_title_words;
