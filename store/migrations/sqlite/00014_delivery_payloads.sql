-- +goose Up
-- A delivery's payload (about 1.4 KB) is written once and never changes,
-- while its row is written again by every attempt. Kept in the row, the
-- payload made every attempt record rewrite it: the WAL got each
-- delivery's pages twice. Apart, an attempt rewrites a row of about
-- 250 bytes.
CREATE TABLE delivery_payloads (
    delivery_id  INTEGER PRIMARY KEY REFERENCES deliveries(id) ON DELETE CASCADE,
    payload      BLOB    NOT NULL
);
INSERT INTO delivery_payloads (delivery_id, payload) SELECT id, payload FROM deliveries;
ALTER TABLE deliveries DROP COLUMN payload;

-- +goose Down
ALTER TABLE deliveries ADD COLUMN payload BLOB NOT NULL DEFAULT x'';
UPDATE deliveries SET payload = (SELECT payload FROM delivery_payloads WHERE delivery_id = deliveries.id)
    WHERE id IN (SELECT delivery_id FROM delivery_payloads);
DROP TABLE delivery_payloads;
