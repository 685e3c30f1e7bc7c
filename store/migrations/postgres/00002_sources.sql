-- +goose Up
-- One webhook secret per project. A rotation moves the current secret to
-- previous_secret, which keeps verifying until previous_expires_at (unix ms).
-- Secrets are stored as they are: the server needs them to compute HMACs.
CREATE TABLE webhook_secrets (
    project_id          BIGINT  NOT NULL PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    secret              TEXT    NOT NULL,
    previous_secret     TEXT    NOT NULL DEFAULT '',
    previous_expires_at BIGINT  NOT NULL DEFAULT 0,
    created_at          BIGINT  NOT NULL
);

-- Deliveries already ingested, per project and source (git, github, gitlab,
-- gitea), so a redelivered webhook or a re-sent hook request builds nothing.
CREATE TABLE source_deliveries (
    project_id  BIGINT  NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    source      TEXT    NOT NULL,
    delivery_id TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (project_id, source, delivery_id)
);
CREATE INDEX source_deliveries_created ON source_deliveries(created_at);

-- Push metadata a source knows about the commit it asks to build.
ALTER TABLE builds ADD COLUMN compare_url TEXT NOT NULL DEFAULT '';
ALTER TABLE builds ADD COLUMN pusher TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE builds DROP COLUMN pusher;
ALTER TABLE builds DROP COLUMN compare_url;
DROP TABLE source_deliveries;
DROP TABLE webhook_secrets;
