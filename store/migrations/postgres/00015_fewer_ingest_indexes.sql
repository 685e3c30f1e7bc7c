-- +goose Up
-- Nothing looks an event up by its id, and ids are fresh ULIDs: the
-- unique indexes cost every transition an index insert for nothing (see
-- the SQLite migration of the same number).
ALTER TABLE build_events DROP CONSTRAINT build_events_event_id_key;
ALTER TABLE outbox DROP CONSTRAINT outbox_event_id_key;

-- +goose Down
ALTER TABLE build_events ADD CONSTRAINT build_events_event_id_key UNIQUE (event_id);
ALTER TABLE outbox ADD CONSTRAINT outbox_event_id_key UNIQUE (event_id);
