-- +goose Up
-- A delivery's payload (about 1.4 KB, under the TOAST threshold, so kept
-- inline) is written once and never changes, while its row is written
-- again by every attempt: in the row, each attempt's new row version
-- copied it. Apart, an attempt writes a row of about 250 bytes.
CREATE TABLE delivery_payloads (
    delivery_id  BIGINT PRIMARY KEY REFERENCES deliveries(id) ON DELETE CASCADE,
    payload      BYTEA  NOT NULL
);
INSERT INTO delivery_payloads (delivery_id, payload) SELECT id, payload FROM deliveries;
ALTER TABLE deliveries DROP COLUMN payload;

-- +goose Down
ALTER TABLE deliveries ADD COLUMN payload BYTEA NOT NULL DEFAULT '';
UPDATE deliveries d SET payload = p.payload FROM delivery_payloads p WHERE p.delivery_id = d.id;
DROP TABLE delivery_payloads;
