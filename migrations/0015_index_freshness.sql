-- Freshness of the write path: how long after the product committed an outbox row (its ingested_at)
-- each engine had applied it. Written by the consumer after each committed batch; read on scrape
-- (search_index_freshness_seconds), by `status` and by the index_freshness_p95 gate.

-- Cumulative histogram buckets per engine (Prometheus semantics: observations <= le), never reset.
CREATE TABLE cn_search.index_freshness_buckets (
    backend      text             NOT NULL,
    le           double precision NOT NULL,  -- 'Infinity' for +Inf
    observations bigint           NOT NULL DEFAULT 0,
    PRIMARY KEY (backend, le)
);

-- The histogram's count and sum per engine.
CREATE TABLE cn_search.index_freshness_totals (
    backend      text             NOT NULL PRIMARY KEY,
    observations bigint           NOT NULL DEFAULT 0,
    seconds_sum  double precision NOT NULL DEFAULT 0,
    updated_at   timestamptz      NOT NULL DEFAULT now()
);

-- Recent observations, one per (engine, outbox row) (a large catch-up batch is sampled: `weight` rows
-- each), for percentiles over a window; pruned after a day.
CREATE TABLE cn_search.index_freshness_observations (
    backend    text             NOT NULL,
    seq        bigint           NOT NULL,
    seconds    double precision NOT NULL,
    weight     integer          NOT NULL DEFAULT 1,
    applied_at timestamptz      NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (backend, seq)
);
CREATE INDEX index_freshness_observations_applied_idx ON cn_search.index_freshness_observations (applied_at);

-- The tail runs (long-lived consumers): a heartbeat per run from a thread of its own, so the sensor
-- can tell a live run from one whose process died (SIGKILL, OOM, a lost node) without waiting on Dagster.
CREATE TABLE cn_search.tail_runs (
    run_id       text        NOT NULL PRIMARY KEY,
    pid          integer     NOT NULL,
    host         text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    ends_by      timestamptz NOT NULL,
    state        text        NOT NULL DEFAULT 'starting',  -- starting, waiting_for_lock, tailing, stalled, stopping, ended
    rows_applied bigint      NOT NULL DEFAULT 0,
    ended_at     timestamptz,
    end_reason   text
);
