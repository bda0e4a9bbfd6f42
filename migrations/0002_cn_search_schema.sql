-- The search migration's own schema (cn_search).
-- cn_search itself is created by the migration runner (or by a DBA, see `db grants`).

-- Runtime flags, read by the write path and the read router on every batch/request.
CREATE TABLE cn_search.runtime_flags (
    flag_name  text        PRIMARY KEY,
    flag_value text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text        NOT NULL
);
INSERT INTO cn_search.runtime_flags (flag_name, flag_value, updated_by) VALUES
    ('search_read_backend',  'meili',      'migration'),
    ('search_write_mode',    'meili_only', 'migration'),
    ('shadow_sample_rate',   '0',          'migration'),
    ('suggest_read_backend', 'meili',      'migration');

-- Append-only audit of every flag change: who, when, why, from, to, and the gate evidence used.
CREATE TABLE cn_search.runtime_flag_audit (
    audit_id    bigserial   PRIMARY KEY,
    flag_name   text        NOT NULL,
    old_value   text,
    new_value   text        NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    changed_by  text        NOT NULL CHECK (btrim(changed_by) <> ''),
    reason      text        NOT NULL CHECK (btrim(reason) <> ''),
    stage_from  text,
    stage_to    text,
    evidence    jsonb
);
CREATE FUNCTION cn_search.refuse_audit_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'cn_search.% is append-only', TG_TABLE_NAME;
END $$;
CREATE TRIGGER runtime_flag_audit_append_only
    BEFORE UPDATE OR DELETE ON cn_search.runtime_flag_audit
    FOR EACH ROW EXECUTE FUNCTION cn_search.refuse_audit_rewrite();

-- One row per post per topic, versioned by the outbox sequence it reflects; deletes are tombstones.
CREATE TABLE cn_search.post_search_documents (
    post_id            text        NOT NULL,
    topic_id           text        NOT NULL,
    content            text        NOT NULL DEFAULT '',
    normalized_text    text        NOT NULL DEFAULT '',
    search_tokens      tsvector    NOT NULL DEFAULT ''::tsvector,
    created_at         bigint      NOT NULL,
    visibility         text        NOT NULL DEFAULT 'public',
    source_seq         bigint      NOT NULL,
    is_deleted         boolean     NOT NULL DEFAULT false,
    normalizer_version integer     NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (post_id, topic_id)
);
CREATE INDEX post_search_documents_topic_idx
    ON cn_search.post_search_documents (topic_id, created_at DESC, post_id);

-- Backfill bookkeeping: one job row per partition (lease-fenced) and its resumable checkpoint.
CREATE TABLE cn_search.backfill_jobs (
    partition_key    text        PRIMARY KEY,
    topic_id         text        NOT NULL,
    window_start     bigint      NOT NULL,
    window_end       bigint      NOT NULL,
    high_watermark   bigint      NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'succeeded', 'failed')),
    lease_token      uuid,
    lease_owner      text,
    heartbeat_at     timestamptz,
    rows_total       bigint,
    rows_copied      bigint      NOT NULL DEFAULT 0,
    rows_skipped     bigint      NOT NULL DEFAULT 0,
    attempts         integer     NOT NULL DEFAULT 0,
    started_at       timestamptz,
    finished_at      timestamptz,
    last_error       text
);
CREATE TABLE cn_search.backfill_checkpoints (
    partition_key   text        PRIMARY KEY REFERENCES cn_search.backfill_jobs (partition_key),
    last_created_at bigint      NOT NULL,
    last_event_id   text        NOT NULL,
    rows_done       bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE cn_search.backfill_watermarks (
    watermark_id   bigserial   PRIMARY KEY,
    high_watermark bigint      NOT NULL,
    captured_at    timestamptz NOT NULL DEFAULT now(),
    captured_by    text        NOT NULL
);

-- Shadow reads: both id lists and latencies; viewers and queries only as hashes.
CREATE TABLE cn_search.shadow_read_logs (
    log_id               bigserial   PRIMARY KEY,
    logged_at            timestamptz NOT NULL DEFAULT now(),
    endpoint             text        NOT NULL CHECK (endpoint IN ('search', 'suggest')),
    topic_id             text,
    viewer_hash          text        NOT NULL,
    query_hash           text        NOT NULL,
    primary_backend      text        NOT NULL,
    primary_ids          text[]      NOT NULL,
    secondary_ids        text[],
    overlap_at_10        double precision,
    primary_latency_ms   double precision NOT NULL,
    secondary_latency_ms double precision,
    secondary_error      text
);
CREATE INDEX shadow_read_logs_logged_at_idx ON cn_search.shadow_read_logs (logged_at);

-- Writes that can never succeed as they are, with the audit of every replay. backend 'source'
-- means the outbox row itself is unusable (malformed, unknown op, missing event) for every side.
CREATE TABLE cn_search.dead_letters (
    dead_letter_id     bigserial   PRIMARY KEY,
    backend            text        NOT NULL CHECK (backend IN ('meili', 'pg', 'source')),
    op                 text        NOT NULL,
    seq                bigint      NOT NULL,
    event_id           text,
    topic_id           text,
    reason_class       text        NOT NULL,
    error              text        NOT NULL,
    attempts           integer     NOT NULL DEFAULT 1,
    first_failed_at    timestamptz NOT NULL DEFAULT now(),
    last_failed_at     timestamptz NOT NULL DEFAULT now(),
    resolved_at        timestamptz,
    replay_count       integer     NOT NULL DEFAULT 0,
    last_replayed_at   timestamptz,
    last_replayed_by   text,
    last_replay_reason text,
    UNIQUE (backend, seq)
);
CREATE INDEX dead_letters_open_idx ON cn_search.dead_letters (dead_letter_id) WHERE resolved_at IS NULL;
CREATE TABLE cn_search.dead_letter_replays (
    replay_id      bigserial   PRIMARY KEY,
    dead_letter_id bigint      NOT NULL REFERENCES cn_search.dead_letters (dead_letter_id),
    replayed_at    timestamptz NOT NULL DEFAULT now(),
    replayed_by    text        NOT NULL,
    reason         text        NOT NULL,
    outcome        text        NOT NULL,
    error          text
);
