-- The product's semantics (kukuri cn-index): what a document carries to stay searchable only while
-- the product would index it, the audited handover from the product's indexer, and a backfill
-- manifest read from the source tables (the outbox is pruned after 30 days, so it is no history).

-- The event's kind and expiry travel with the document: the expiry sweep finds due documents on an
-- index instead of scanning the source, and a tombstone says why it is one.
ALTER TABLE cn_search.post_search_documents
    ADD COLUMN kind          integer,
    ADD COLUMN expires_at    bigint,
    ADD COLUMN delete_reason text;
CREATE INDEX post_search_documents_expiry_idx
    ON cn_search.post_search_documents (expires_at) WHERE NOT is_deleted AND expires_at IS NOT NULL;

-- Handovers from the product's indexer: our consumer starts at the offset the product's consumer had
-- reached, once, audited. Append-only.
CREATE TABLE cn_search.handovers (
    handover_id   bigserial   PRIMARY KEY,
    from_consumer text        NOT NULL,
    consumer      text        NOT NULL,
    offset_seq    bigint      NOT NULL,
    handed_at     timestamptz NOT NULL DEFAULT now(),
    handed_by     text        NOT NULL CHECK (btrim(handed_by) <> ''),
    reason        text        NOT NULL CHECK (btrim(reason) <> '')
);
CREATE TRIGGER handovers_append_only
    BEFORE UPDATE OR DELETE ON cn_search.handovers
    FOR EACH ROW EXECUTE FUNCTION cn_search.refuse_audit_rewrite();

-- The expiry sweep's cursor: events whose expires_at is at or below it have been removed.
CREATE TABLE cn_search.expiry_sweeps (
    consumer   text        PRIMARY KEY,
    swept_to   bigint      NOT NULL,
    swept_at   timestamptz NOT NULL DEFAULT now()
);

-- The manifest now lists every searchable (topic, post) of the source tables at the watermark.
-- `chunk_at` is the time the partitions cut on: created_at clamped into the partitioned span, so a
-- post backdated by years (the product does not validate created_at) or dated in the future still
-- falls in a partition.
DROP TABLE cn_search.backfill_manifest;
CREATE TABLE cn_search.backfill_manifest (
    topic_id    text   NOT NULL,
    chunk_at    bigint NOT NULL,
    event_id    text   NOT NULL,
    version_seq bigint NOT NULL,  -- the latest outbox seq at or below the watermark; 0: history pruned
    PRIMARY KEY (topic_id, chunk_at, event_id)
);
ALTER TABLE cn_search.backfill_watermarks
    ADD COLUMN chunk_floor   bigint,  -- created_at below this is chunked at it
    ADD COLUMN chunk_ceiling bigint;  -- and at or above this, just below it
