-- +goose Up
-- One row per (event, sink, target), persisted before the first attempt;
-- message_id is derived from the three, so it is unique with them.
-- tries counts the attempts of the current round (a redelivery starts a
-- new round), attempts every attempt ever made. Few indexes: every
-- delivery is written twice (created, then its attempt logged).
CREATE TABLE deliveries (
    id           INTEGER PRIMARY KEY,
    message_id   TEXT    NOT NULL UNIQUE,
    event_id     TEXT    NOT NULL,
    event_type   TEXT    NOT NULL,
    sink         TEXT    NOT NULL,
    sink_type    TEXT    NOT NULL,
    target       TEXT    NOT NULL,
    route        TEXT    NOT NULL DEFAULT '',
    owner_id     INTEGER NOT NULL DEFAULT 0,
    build_id     INTEGER NOT NULL DEFAULT 0,
    seq          INTEGER NOT NULL DEFAULT 0,
    status       TEXT    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    tries        INTEGER NOT NULL DEFAULT 0,
    next_at      INTEGER,
    last_code    INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT    NOT NULL DEFAULT '',
    payload      BLOB    NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    finished_at  INTEGER
);
CREATE INDEX deliveries_due ON deliveries(next_at) WHERE status = 'pending';
CREATE INDEX deliveries_owner ON deliveries(owner_id, id);

CREATE TABLE delivery_attempts (
    delivery_id   INTEGER NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    number        INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    duration_us   INTEGER NOT NULL,
    status_code   INTEGER NOT NULL DEFAULT 0,
    outcome       TEXT    NOT NULL,
    error         TEXT    NOT NULL DEFAULT '',
    resp_headers  TEXT    NOT NULL DEFAULT '',
    resp_body     BLOB,
    PRIMARY KEY (delivery_id, number)
) WITHOUT ROWID;

-- Health of one (sink, target): when it started failing without a
-- success since, and whether it is disabled. event_id is the
-- endpoint-disabled event; notified_at is set once its deliveries are
-- persisted.
CREATE TABLE delivery_endpoints (
    sink             TEXT    NOT NULL,
    target           TEXT    NOT NULL,
    failing_since    INTEGER,
    disabled_at      INTEGER,
    disabled_reason  TEXT    NOT NULL DEFAULT '',
    event_id         TEXT    NOT NULL DEFAULT '',
    notified_at      INTEGER,
    PRIMARY KEY (sink, target)
);

-- +goose Down
DROP TABLE delivery_endpoints;
DROP TABLE delivery_attempts;
DROP TABLE deliveries;
