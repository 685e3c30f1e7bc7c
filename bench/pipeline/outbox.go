package main

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/buildbridge/buildbridge/bridge"
	"github.com/buildbridge/buildbridge/store"
)

// Outbox is what the benchmark needs from an outbox: the relay's side
// (bridge.Outbox) and a way to commit rows. To measure the real store,
// implement Append with one store transaction writing the rows (or
// transitions) and use it in start() instead of newMemOutbox().
type Outbox interface {
	bridge.Outbox
	// Append commits rows, in order.
	Append(rows ...outboxRow)
	// Len is the number of rows waiting.
	Len() int
}

type outboxRow struct {
	topic, eventID string
	payload        []byte
}

// memOutbox is an in-memory outbox: the cost of a real database is left
// out, so the figures are those of the relay, the bus and the router.
type memOutbox struct {
	mu   sync.Mutex
	rows []store.OutboxRow
	next int64
}

func newMemOutbox() *memOutbox { return &memOutbox{} }

func (o *memOutbox) Append(rows ...outboxRow) {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now()
	for _, r := range rows {
		o.next++
		o.rows = append(o.rows, store.OutboxRow{ID: o.next, EventID: r.eventID, Topic: r.topic, Payload: r.payload, CreatedAt: now})
	}
}

func (o *memOutbox) Len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.rows)
}

func (o *memOutbox) PendingOutbox(_ context.Context, limit int) ([]store.OutboxRow, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.rows[:min(limit, len(o.rows))]), nil
}

// DeleteOutbox deletes by id; the relay deletes a prefix of the rows in
// the common case, which this handles without scanning everything.
func (o *memOutbox) DeleteOutbox(_ context.Context, ids []int64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	del := make(map[int64]bool, len(ids))
	for _, id := range ids {
		del[id] = true
	}
	o.rows = slices.DeleteFunc(o.rows, func(r store.OutboxRow) bool { return del[r.ID] })
	return nil
}

// storeOutbox is the real store: rows are written by CreateBuild, in the
// same transaction as the build they announce.
type storeOutbox struct{ *store.DB }

func (o storeOutbox) Append(...outboxRow) { panic("storeOutbox: rows are written by the store itself") }

func (o storeOutbox) Len() int {
	n, _, err := o.OutboxBacklog(context.Background())
	if err != nil {
		return 0
	}
	return n
}
