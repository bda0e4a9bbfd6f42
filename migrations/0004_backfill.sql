-- Backfill (issue 4): the frozen manifest of what a backfill copies, and per-page progress.

-- Every (topic, post) the outbox touched at or below the captured high watermark, with the version a
-- backfilled document carries (the latest outbox seq for that pair at or below the watermark).
-- Built once per watermark so a partition keyset-pages one topic's time window on an index instead
-- of re-scanning the topic's posts for every page; liveness is checked against the source per page.
CREATE TABLE cn_search.backfill_manifest (
    topic_id    text   NOT NULL,
    created_at  bigint NOT NULL,
    event_id    text   NOT NULL,
    version_seq bigint NOT NULL,
    PRIMARY KEY (topic_id, created_at, event_id)
);

ALTER TABLE cn_search.backfill_watermarks ADD COLUMN manifest_rows bigint;

-- Which lease wrote the checkpoint (the fencing token of the run that held the partition).
ALTER TABLE cn_search.backfill_checkpoints ADD COLUMN lease_token uuid;

-- One row per committed page, written in the page's fenced transaction: the backfill-wide
-- "current rate" (and so the ETA) comes from the recent pages only, never from the whole history.
CREATE TABLE cn_search.backfill_page_log (
    page_id       bigserial   PRIMARY KEY,
    partition_key text        NOT NULL,
    lease_token   uuid        NOT NULL,
    rows_done     integer     NOT NULL,
    rows_copied   integer     NOT NULL,
    logged_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX backfill_page_log_logged_at_idx ON cn_search.backfill_page_log (logged_at);
