-- +goose Up
-- Dashboard sign-in sessions. A session is made from an API token and lives
-- no longer than it: revoking the token ends the session at once. Only the
-- SHA-256 of the cookie's secret is stored.
CREATE TABLE sessions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    hash        TEXT    NOT NULL UNIQUE,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_id    INTEGER NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX sessions_expires ON sessions(expires_at);

-- +goose Down
DROP TABLE sessions;
