-- +goose Up
-- Several hub nodes share the deliveries: only the node holding a
-- delivery's lease attempts it. lease_owner names the node ('' for none)
-- and lease_until (unix ms, 0 for none) is when the lease ends unless the
-- node renews it; a delivery whose lease has ended is free for any node
-- to take over. The lease is taken by the insert that creates a delivery
-- and released by the update that records its attempt, so the hot path
-- gains no statement. No index: leases are found by id (renewal, claim)
-- or among due pending deliveries (deliveries_due).
ALTER TABLE deliveries ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '';
ALTER TABLE deliveries ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE deliveries DROP COLUMN lease_until;
ALTER TABLE deliveries DROP COLUMN lease_owner;
