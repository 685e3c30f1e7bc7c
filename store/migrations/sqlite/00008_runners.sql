-- +goose Up
-- Remote runners: each authenticates with a token of its own, made by an
-- admin; only the token's SHA-256 is kept. A revoked runner keeps its row
-- (its builds name it) but is refused at once.
CREATE TABLE runners (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT    NOT NULL UNIQUE,
    hash         TEXT    NOT NULL UNIQUE,
    labels       TEXT    NOT NULL DEFAULT '',
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER,
    last_seen_at INTEGER
);

-- A build a remote runner holds: the lease token proves it on every call,
-- and the lease ends at expires_at unless a heartbeat extends it.
CREATE TABLE build_leases (
    build_id   INTEGER PRIMARY KEY REFERENCES builds(id) ON DELETE CASCADE,
    runner_id  INTEGER NOT NULL REFERENCES runners(id),
    token      TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX build_leases_expiry ON build_leases(expires_at);

-- Labels a runner must have to run a project's builds (comma-separated,
-- sorted). A project without a row runs anywhere, the embedded runner too.
CREATE TABLE project_labels (
    project_id INTEGER PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    labels     TEXT    NOT NULL
);

-- +goose Down
DROP TABLE project_labels;
DROP TABLE build_leases;
DROP TABLE runners;
