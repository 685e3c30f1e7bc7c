-- +goose Up
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE,
    is_admin      INTEGER NOT NULL DEFAULT 0,
    max_channels  INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);

CREATE TABLE tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    prefix       TEXT    NOT NULL,
    hash         TEXT    NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER
);
CREATE INDEX tokens_user ON tokens(user_id);

CREATE TABLE projects (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT    NOT NULL UNIQUE,
    owner_id        INTEGER NOT NULL REFERENCES users(id),
    repo            TEXT    NOT NULL,
    default_branch  TEXT    NOT NULL,
    steps           TEXT    NOT NULL,
    timeout_ms      INTEGER NOT NULL DEFAULT 0,
    settings        TEXT    NOT NULL DEFAULT '{}',
    last_number     INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX projects_owner ON projects(owner_id);

CREATE TABLE builds (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id       INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    number           INTEGER NOT NULL,
    state            TEXT    NOT NULL,
    result           TEXT    NOT NULL DEFAULT '',
    reason           TEXT    NOT NULL DEFAULT '',
    ref              TEXT    NOT NULL,
    branch           TEXT    NOT NULL DEFAULT '',
    sha              TEXT    NOT NULL,
    author           TEXT    NOT NULL DEFAULT '',
    author_email     TEXT    NOT NULL DEFAULT '',
    message          TEXT    NOT NULL DEFAULT '',
    triggered_by     INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    log_size         INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    UNIQUE (project_id, number)
);
CREATE INDEX builds_state ON builds(state, id);
CREATE INDEX builds_branch ON builds(project_id, branch, number);

CREATE TABLE build_logs (
    build_id  INTEGER NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
    pos       INTEGER NOT NULL,
    data      BLOB    NOT NULL,
    PRIMARY KEY (build_id, pos)
);

CREATE TABLE artifacts (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    build_id  INTEGER NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
    path      TEXT    NOT NULL,
    size      INTEGER NOT NULL,
    sha256    TEXT    NOT NULL,
    UNIQUE (build_id, path)
);

CREATE TABLE build_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT    NOT NULL UNIQUE,
    build_id   INTEGER NOT NULL,
    state      TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX build_events_build ON build_events(build_id, seq);

CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT    NOT NULL UNIQUE,
    topic      TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    created_at INTEGER NOT NULL
);

-- +goose Down
DROP TABLE outbox;
DROP TABLE build_events;
DROP TABLE artifacts;
DROP TABLE build_logs;
DROP TABLE builds;
DROP TABLE projects;
DROP TABLE tokens;
DROP TABLE users;
