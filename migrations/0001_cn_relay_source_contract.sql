-- The product's source contract (cn_relay). Owned by the product; created here for local and demo use.
-- The product writes an event, its topic rows and its outbox rows in one transaction.
CREATE SCHEMA IF NOT EXISTS cn_relay;

CREATE TABLE IF NOT EXISTS cn_relay.events (
    event_id   text    PRIMARY KEY,
    pubkey     text    NOT NULL,
    kind       integer NOT NULL,
    content    text    NOT NULL,
    tags       jsonb   NOT NULL DEFAULT '[]'::jsonb,
    created_at bigint  NOT NULL,               -- unix seconds
    is_deleted boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS events_created_at_idx ON cn_relay.events (created_at, event_id);

CREATE TABLE IF NOT EXISTS cn_relay.event_topics (
    event_id text NOT NULL REFERENCES cn_relay.events (event_id),
    topic_id text NOT NULL,
    PRIMARY KEY (event_id, topic_id)
);
CREATE INDEX IF NOT EXISTS event_topics_topic_idx ON cn_relay.event_topics (topic_id, event_id);

-- No foreign key and no CHECK on op: the outbox is what the product wrote, and a consumer must
-- survive (and dead-letter) rows that name unknown ops or missing events.
CREATE TABLE IF NOT EXISTS cn_relay.events_outbox (
    seq         bigserial   PRIMARY KEY,
    op          text        NOT NULL,          -- upsert | delete
    event_id    text        NOT NULL,
    topic_id    text        NOT NULL,
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    ingested_at timestamptz
);
CREATE INDEX IF NOT EXISTS events_outbox_event_idx ON cn_relay.events_outbox (event_id, topic_id, seq);

CREATE TABLE IF NOT EXISTS cn_relay.consumer_offsets (
    consumer   text        PRIMARY KEY,
    last_seq   bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
