-- +goose Up
-- The previous finished build of a branch is looked up at every
-- transition; without this index the lookup walks every newer build of
-- the branch that is queued, running or canceled.
CREATE INDEX builds_previous ON builds(project_id, branch, number)
    WHERE state = 'FINISHED' AND result <> 'canceled';

-- +goose Down
DROP INDEX builds_previous;
