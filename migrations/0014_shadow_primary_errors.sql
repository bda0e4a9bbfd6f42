-- Shadow logs record the errors of both engines (issue 16, rule 6): a sampled request whose primary
-- failed is logged too, with the primary's error and no primary ids, so the error-rate gate can
-- measure the engine that answers users (PostgreSQL in live), not only the shadow.
ALTER TABLE cn_search.shadow_read_logs ADD COLUMN primary_error text;
ALTER TABLE cn_search.shadow_read_logs ALTER COLUMN primary_ids DROP NOT NULL;
ALTER TABLE cn_search.shadow_read_logs ADD CONSTRAINT shadow_read_logs_primary_answered
    CHECK (primary_ids IS NOT NULL OR primary_error IS NOT NULL);
