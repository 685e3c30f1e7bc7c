-- +goose Up
-- A signed push writes its delivery id, its build, the QUEUED event and
-- the outbox row in one commit; every B-tree it touches is a page in the
-- WAL, and those pages are most of what a commit costs. Three of them
-- held nothing that was ever read:
--   * source_deliveries was a rowid table plus an index on its primary
--     key; WITHOUT ROWID it is the key alone.
--   * build_events and outbox kept a unique index on event_id. Event ids
--     are fresh ULIDs and nothing looks an event up by them.
-- The rebuilt tables keep their AUTOINCREMENT counters: an event's seq is
-- public (clients order by it) and is never handed out twice.
CREATE TABLE source_deliveries_new (
    project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    source      TEXT    NOT NULL,
    delivery_id TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (project_id, source, delivery_id)
) WITHOUT ROWID;
INSERT INTO source_deliveries_new (project_id, source, delivery_id, created_at)
    SELECT project_id, source, delivery_id, created_at FROM source_deliveries;
DROP TABLE source_deliveries;
ALTER TABLE source_deliveries_new RENAME TO source_deliveries;
CREATE INDEX source_deliveries_created ON source_deliveries(created_at);

CREATE TABLE build_events_new (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT    NOT NULL,
    build_id   INTEGER NOT NULL,
    state      TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
INSERT INTO build_events_new (seq, event_id, build_id, state, created_at)
    SELECT seq, event_id, build_id, state, created_at FROM build_events;
DELETE FROM sqlite_sequence WHERE name = 'build_events_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'build_events_new', seq FROM sqlite_sequence WHERE name = 'build_events';
DROP TABLE build_events;
ALTER TABLE build_events_new RENAME TO build_events;
CREATE INDEX build_events_build ON build_events(build_id, seq);

CREATE TABLE outbox_new (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT    NOT NULL,
    topic      TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    created_at INTEGER NOT NULL
);
INSERT INTO outbox_new (id, event_id, topic, payload, created_at)
    SELECT id, event_id, topic, payload, created_at FROM outbox;
DELETE FROM sqlite_sequence WHERE name = 'outbox_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox_new', seq FROM sqlite_sequence WHERE name = 'outbox';
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;

-- +goose Down
CREATE TABLE source_deliveries_old (
    project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    source      TEXT    NOT NULL,
    delivery_id TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (project_id, source, delivery_id)
);
INSERT INTO source_deliveries_old (project_id, source, delivery_id, created_at)
    SELECT project_id, source, delivery_id, created_at FROM source_deliveries;
DROP TABLE source_deliveries;
ALTER TABLE source_deliveries_old RENAME TO source_deliveries;
CREATE INDEX source_deliveries_created ON source_deliveries(created_at);

CREATE TABLE build_events_old (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT    NOT NULL UNIQUE,
    build_id   INTEGER NOT NULL,
    state      TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
INSERT INTO build_events_old (seq, event_id, build_id, state, created_at)
    SELECT seq, event_id, build_id, state, created_at FROM build_events;
DELETE FROM sqlite_sequence WHERE name = 'build_events_old';
INSERT INTO sqlite_sequence (name, seq) SELECT 'build_events_old', seq FROM sqlite_sequence WHERE name = 'build_events';
DROP TABLE build_events;
ALTER TABLE build_events_old RENAME TO build_events;
CREATE INDEX build_events_build ON build_events(build_id, seq);

CREATE TABLE outbox_old (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT    NOT NULL UNIQUE,
    topic      TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    created_at INTEGER NOT NULL
);
INSERT INTO outbox_old (id, event_id, topic, payload, created_at)
    SELECT id, event_id, topic, payload, created_at FROM outbox;
DELETE FROM sqlite_sequence WHERE name = 'outbox_old';
INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox_old', seq FROM sqlite_sequence WHERE name = 'outbox';
DROP TABLE outbox;
ALTER TABLE outbox_old RENAME TO outbox;
