-- kukuri community node, commit 884c1885, migrations through 20260212010000_m4_label_review_workflow:
-- the shape the product's own migrations leave `cn_relay` in, for local/test databases only.
--
-- Source of the facts: kukuri-community-node/migrations/20260124000000_m2.sql creates every cn_relay
-- object below; no later migration up to m4_label_review_workflow touches cn_relay. Object names are
-- the ones PostgreSQL and the product give them (events_pkey, events_outbox_seq_seq, relay_*_idx), so
-- `\d` on this database and on a product database read the same.
--
-- `cn_index` (20260125000000_m3_index.sql) is included too: not a dependency of cn_relay, but the
-- product's indexer records its expiry sweep in cn_index.expired_events and a DSAR queues
-- cn_index.reindex_jobs, and the local emulation of both (product_writer / product_indexer) must
-- write where the product writes. Other product schemas (cn_admin, cn_user, cn_moderation, cn_trust,
-- cn_bootstrap) are left out: nothing in cn_relay references them.
--
-- Applied once to an empty database; not idempotent on purpose (a second run fails loudly).

CREATE SCHEMA cn_relay;

-- Every event id the relay has seen, stored or not (the ingest transaction starts here).
CREATE TABLE cn_relay.event_dedupe (
    event_id      text        NOT NULL PRIMARY KEY,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    seen_count    bigint      NOT NULL DEFAULT 1
);

-- The source of truth: one row per stored Nostr event. created_at / expires_at are unix seconds
-- (bigint), exactly as the client signed them.
CREATE TABLE cn_relay.events (
    event_id        text        NOT NULL PRIMARY KEY,
    pubkey          text        NOT NULL,
    kind            integer     NOT NULL,
    created_at      bigint      NOT NULL,
    tags            jsonb       NOT NULL,
    content         text        NOT NULL,
    sig             text        NOT NULL,
    raw_json        jsonb       NOT NULL,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    is_deleted      boolean     NOT NULL DEFAULT false,
    deleted_at      timestamptz,
    is_ephemeral    boolean     NOT NULL DEFAULT false,
    is_current      boolean     NOT NULL DEFAULT true,
    replaceable_key text,
    addressable_key text,
    expires_at      bigint
);
CREATE INDEX relay_events_kind_idx ON cn_relay.events (kind);
CREATE INDEX relay_events_created_at_idx ON cn_relay.events (created_at);
CREATE INDEX relay_events_ingested_at_idx ON cn_relay.events (ingested_at);

-- Topic membership of an event (no foreign key in the product).
CREATE TABLE cn_relay.event_topics (
    event_id text NOT NULL,
    topic_id text NOT NULL,
    PRIMARY KEY (event_id, topic_id)
);
CREATE INDEX relay_event_topics_topic_idx ON cn_relay.event_topics (topic_id);

-- NIP-09 deletions that arrived before their target.
CREATE TABLE cn_relay.deletion_tombstones (
    tombstone_id      bigserial   NOT NULL PRIMARY KEY,
    target_event_id   text,
    target_a          text,
    deletion_event_id text        NOT NULL,
    requested_at      bigint      NOT NULL,
    applied_at        timestamptz
);
CREATE INDEX relay_tombstones_target_event_idx ON cn_relay.deletion_tombstones (target_event_id);

-- The current version per replaceable key (pubkey:kind) and per addressable key (kind:pubkey:d).
CREATE TABLE cn_relay.replaceable_current (
    replaceable_key text        NOT NULL PRIMARY KEY,
    event_id        text        NOT NULL,
    pubkey          text        NOT NULL,
    kind            integer     NOT NULL,
    created_at      bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE cn_relay.addressable_current (
    addressable_key text        NOT NULL PRIMARY KEY,
    event_id        text        NOT NULL,
    pubkey          text        NOT NULL,
    kind            integer     NOT NULL,
    d_tag           text        NOT NULL,
    created_at      bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- The transactional outbox: one row per (event, topic) change. No default on ingested_at and no
-- CHECK on op: writers always set both.
CREATE TABLE cn_relay.events_outbox (
    seq           bigserial   NOT NULL PRIMARY KEY,
    op            text        NOT NULL,
    event_id      text        NOT NULL,
    topic_id      text        NOT NULL,
    kind          integer     NOT NULL,
    created_at    bigint      NOT NULL,
    ingested_at   timestamptz NOT NULL,
    effective_key text,
    reason        text
);
CREATE INDEX relay_outbox_event_idx ON cn_relay.events_outbox (event_id);

-- Outbox consumers' positions (index-v1, moderation-v1, trust-v1, ...).
CREATE TABLE cn_relay.consumer_offsets (
    consumer   text        NOT NULL PRIMARY KEY,
    last_seq   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE SCHEMA cn_index;

-- Full reindex requests (a DSAR queues one per affected topic).
CREATE TABLE cn_index.reindex_jobs (
    job_id           text        NOT NULL PRIMARY KEY,
    topic_id         text,
    status           text        NOT NULL,
    requested_by     text        NOT NULL,
    requested_at     timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    completed_at     timestamptz,
    error_message    text,
    total_events     bigint,
    processed_events bigint      NOT NULL DEFAULT 0,
    cutoff_seq       bigint,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reindex_jobs_status_idx ON cn_index.reindex_jobs (status, requested_at DESC);

-- (event, topic) pairs the indexer's expiry sweep already removed.
CREATE TABLE cn_index.expired_events (
    event_id     text        NOT NULL,
    topic_id     text        NOT NULL,
    expired_at   bigint      NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, topic_id)
);
