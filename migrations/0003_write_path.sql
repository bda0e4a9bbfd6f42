-- The outbox consumer's durable state beyond cn_relay.consumer_offsets.

-- How far each engine has applied the outbox. In dual mode one side may fail while the other
-- succeeds; the overall offset (cn_relay.consumer_offsets) is the minimum over the sides the
-- write mode names, and each side resumes from its own offset after a restart.
CREATE TABLE cn_search.consumer_side_offsets (
    consumer   text        NOT NULL,
    backend    text        NOT NULL CHECK (backend IN ('meili', 'pg')),
    last_seq   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, backend)
);

-- A side that is stalled on a retryable failure: its first unapplied row. Removed (and counted as
-- a retry) once that side applies it.
CREATE TABLE cn_search.side_write_failures (
    consumer        text        NOT NULL,
    backend         text        NOT NULL CHECK (backend IN ('meili', 'pg')),
    seq             bigint      NOT NULL,
    op              text        NOT NULL,
    error_class     text        NOT NULL,
    error           text        NOT NULL,
    attempts        integer     NOT NULL DEFAULT 1,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, backend)
);

-- Gaps in the outbox sequence: a product transaction may hold a lower seq and commit later.
-- The consumer waits at a gap until it is older than its timeout, then treats it as rolled back.
CREATE TABLE cn_search.outbox_gaps (
    consumer      text        NOT NULL,
    seq           bigint      NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, seq)
);

-- Durable counters behind the write-path Prometheus metrics: catch-up runs are separate
-- processes, so the numbers live with the data they describe.
CREATE TABLE cn_search.write_path_counters (
    name      text   NOT NULL,
    backend   text   NOT NULL,
    operation text   NOT NULL,
    value     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (name, backend, operation)
);
