-- +goose Up
-- The signing secrets the hub generates for webhook sinks whose rules give
-- none, by sink name. A rotation moves the current secret to
-- previous_secret, which still signs until previous_expires_at (unix ms).
-- shown_at (unix ms, 0: never) is when the current secret was handed out
-- through the API: a generated secret is shown once. Secrets are stored as
-- they are: the server needs them to compute HMACs.
CREATE TABLE sink_secrets (
    sink                TEXT    NOT NULL PRIMARY KEY,
    secret              TEXT    NOT NULL,
    previous_secret     TEXT    NOT NULL DEFAULT '',
    previous_expires_at BIGINT  NOT NULL DEFAULT 0,
    created_at          BIGINT  NOT NULL,
    shown_at            BIGINT  NOT NULL DEFAULT 0
);

-- +goose Down
DROP TABLE sink_secrets;
