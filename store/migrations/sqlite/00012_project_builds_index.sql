-- +goose Up
-- A project's latest builds (the API, the dashboard, Slack's /build list)
-- and a branch's are listed newest first by id: without these indexes all
-- of the project's builds were read and sorted (1-3 ms at 1M builds for a
-- project of 1,000, growing with the project). The branch index replaces
-- builds_branch (project_id, branch, number): number grows with id within
-- a project, and nothing orders a branch's builds by number that
-- builds_previous does not serve.
CREATE INDEX builds_project ON builds(project_id, id DESC);
CREATE INDEX builds_project_branch ON builds(project_id, branch, id DESC);
DROP INDEX builds_branch;

-- +goose Down
CREATE INDEX builds_branch ON builds(project_id, branch, number);
DROP INDEX builds_project_branch;
DROP INDEX builds_project;
