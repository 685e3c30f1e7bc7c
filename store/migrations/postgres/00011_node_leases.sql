-- +goose Up
-- Hub nodes whose embedded runner runs builds. A node renews its row
-- (expires_at) while it lives; a build it claimed names it in builds.node.
-- Recovery (at start and every few seconds, on every node) leaves a
-- STARTED build alone while its node's row is current, and takes it back
-- once the row has expired.
CREATE TABLE nodes (
    id         TEXT    PRIMARY KEY,
    started_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

ALTER TABLE builds ADD COLUMN node TEXT;

-- +goose Down
ALTER TABLE builds DROP COLUMN node;
DROP TABLE nodes;
