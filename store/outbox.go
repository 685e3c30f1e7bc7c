package store

import "time"

// OutboxRow is one message waiting in the outbox: written in the same
// transaction as the state change it announces, published by the relay,
// and deleted only after the bus acknowledged it.
type OutboxRow struct {
	ID int64
	// EventID is the message id on the bus; the bus de-duplicates on it.
	EventID   string
	Topic     string
	Payload   []byte
	CreatedAt time.Time
}
