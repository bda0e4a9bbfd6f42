-- Requests the read router served with `auto` routing, per minute and endpoint: the denominator of the
-- observed shadow sampling rate (shadow_read_logs holds only the sampled requests).
CREATE TABLE cn_search.read_request_counts (
    minute   timestamptz NOT NULL,
    endpoint text        NOT NULL CHECK (endpoint IN ('search', 'suggest')),
    requests bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, endpoint)
);
