-- Sequence gaps decided by PostgreSQL's snapshot, not a clock: a gap is waited for while any transaction
-- that was in progress when it was first seen is still in progress (it may hold the missing seq and
-- commit later, however long it takes); once none is, a seq still invisible can never commit and the
-- gap is skipped, recorded for good (a later replay of the range, e.g. a reverse catch-up, passes it).
ALTER TABLE cn_search.outbox_gaps
    ADD COLUMN through_seq bigint,        -- the gap is seq .. through_seq
    ADD COLUMN waiting_on  xid8[],        -- transactions in progress when it was first seen
    ADD COLUMN skipped_at  timestamptz;   -- set once it can no longer commit
