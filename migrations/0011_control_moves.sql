-- Every cutover and rollback attempt, in order, whatever became of it: one control move at a time
-- (a session advisory lock), so a loser names the winner, and a refused attempt is on record too.
CREATE TABLE cn_search.control_moves (
    move_id     bigserial   PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    moved_by    text        NOT NULL,
    reason      text        NOT NULL,
    stage_from  text        NOT NULL,
    stage_to    text        NOT NULL,
    description text        NOT NULL,
    outcome     text        NOT NULL DEFAULT 'running' CHECK (outcome IN ('running', 'applied', 'refused', 'failed')),
    detail      text
);
