-- +goose Up
-- Builds by state and result, for the metrics (every /metrics scrape):
-- counting builds took a full scan. Triggers on builds keep the counts,
-- whatever writes builds (claims, transitions, cascades from a deleted
-- project, a retention delete). SQLite has one writer at a time, so one
-- row per state and result is updated in place (PostgreSQL appends
-- deltas instead).
CREATE TABLE build_counts (
    state  TEXT    NOT NULL,
    result TEXT    NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (state, result)
);

INSERT INTO build_counts (state, result, n) SELECT state, result, COUNT(*) FROM builds GROUP BY state, result;

-- +goose StatementBegin
CREATE TRIGGER build_counts_insert AFTER INSERT ON builds BEGIN
    INSERT INTO build_counts (state, result, n) VALUES (NEW.state, NEW.result, 1)
        ON CONFLICT (state, result) DO UPDATE SET n = n + 1;
END;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE TRIGGER build_counts_delete AFTER DELETE ON builds BEGIN
    UPDATE build_counts SET n = n - 1 WHERE state = OLD.state AND result = OLD.result;
END;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE TRIGGER build_counts_update AFTER UPDATE OF state, result ON builds
    WHEN OLD.state IS NOT NEW.state OR OLD.result IS NOT NEW.result BEGIN
    UPDATE build_counts SET n = n - 1 WHERE state = OLD.state AND result = OLD.result;
    INSERT INTO build_counts (state, result, n) VALUES (NEW.state, NEW.result, 1)
        ON CONFLICT (state, result) DO UPDATE SET n = n + 1;
END;
-- +goose StatementEnd

-- +goose Down
DROP TRIGGER build_counts_update;
DROP TRIGGER build_counts_delete;
DROP TRIGGER build_counts_insert;
DROP TABLE build_counts;
