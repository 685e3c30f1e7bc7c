// Package bridge moves build transitions from the store's outbox onto the
// bus and turns them into build-state-changed events.
//
// The Relay reads the outbox (rows written in the same transaction as each
// state change), publishes every row on its topic with the row's event id
// as message id, and deletes the rows the bus acknowledged. The Bridge is
// a watermill router on the bus: its "transitions" handler turns each
// builds.Transition into its event.Envelope and publishes it on
// event.TopicBuildStateChanged, and every consumer added with AddConsumer
// reads those envelopes through a durable consumer of its own.
package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/buildbridge/buildbridge/store"
)

// Outbox is the store's side of the relay.
type Outbox interface {
	// PendingOutbox returns up to limit rows, oldest first.
	PendingOutbox(ctx context.Context, limit int) ([]store.OutboxRow, error)
	// DeleteOutbox deletes the rows with these ids; ids already gone are
	// not an error.
	DeleteOutbox(ctx context.Context, ids []int64) error
}

// RelayConfig configures a Relay.
type RelayConfig struct {
	// Outbox is read and emptied by the relay. Required.
	Outbox Outbox
	// Publisher publishes the rows. Required. When a Publish of several
	// messages fails, an error with a method MessageFailed(uuid string) bool
	// (the bus's PublishError) tells which rows may still be deleted;
	// without it none of that Publish's rows are.
	Publisher message.Publisher
	// BatchSize is the most rows read and published at once. Default 256.
	BatchSize int
	// PollInterval is how often the outbox is read when nobody calls
	// Notify: it catches rows committed by other processes. Default 1s.
	PollInterval time.Duration
	// RetryMin and RetryMax bound the exponential pause after a failed
	// read, publish or delete. Defaults 100ms and 30s.
	RetryMin, RetryMax time.Duration
	// Logger receives the relay's logs. Default slog.Default().
	Logger *slog.Logger
	// Registerer, when set, gets the relay's metrics
	// (buildbridge_relay_*).
	Registerer prometheus.Registerer
}

func (c *RelayConfig) setDefaults() {
	if c.BatchSize == 0 {
		c.BatchSize = 256
	}
	if c.PollInterval == 0 {
		c.PollInterval = time.Second
	}
	if c.RetryMin == 0 {
		c.RetryMin = 100 * time.Millisecond
	}
	if c.RetryMax == 0 {
		c.RetryMax = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports the first invalid field.
func (c *RelayConfig) Validate() error {
	switch {
	case c.Outbox == nil:
		return errors.New("bridge: RelayConfig.Outbox is required")
	case c.Publisher == nil:
		return errors.New("bridge: RelayConfig.Publisher is required")
	case c.BatchSize < 1:
		return fmt.Errorf("bridge: RelayConfig.BatchSize must be at least 1, got %d", c.BatchSize)
	case c.PollInterval < 0:
		return fmt.Errorf("bridge: RelayConfig.PollInterval must not be negative, got %s", c.PollInterval)
	case c.RetryMin < 0 || c.RetryMax < c.RetryMin:
		return fmt.Errorf("bridge: RelayConfig.RetryMin (%s) and RetryMax (%s) must satisfy 0 ≤ RetryMin ≤ RetryMax", c.RetryMin, c.RetryMax)
	}
	return nil
}

// Relay publishes the outbox on the bus. A row is deleted only after the
// bus acknowledged its message; a row whose publish failed stays and is
// sent again after a pause. A row sent twice (its delete failed, or the
// process died between publish and delete) carries the same message id,
// and the bus drops the copy.
type Relay struct {
	cfg     RelayConfig
	log     *slog.Logger
	notify  chan struct{}
	running atomic.Bool
	backlog atomic.Int64
	m       relayMetrics
}

// NewRelay returns a relay; Run starts it.
func NewRelay(cfg RelayConfig) (*Relay, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Relay{cfg: cfg, log: cfg.Logger.With("component", "relay"), notify: make(chan struct{}, 1)}
	var err error
	r.m, err = newRelayMetrics(cfg.Registerer, func() float64 { return float64(r.Backlog()) })
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Notify wakes the relay at once. The store calls it after each commit
// that wrote outbox rows; it never blocks.
func (r *Relay) Notify() {
	select {
	case r.notify <- struct{}{}:
	default: // a wake-up is already pending
	}
}

// Backlog is the number of rows the relay last read and has not deleted:
// 0 when idle, up to BatchSize under load, the stuck rows while publishing
// fails. (The store can count the whole outbox.)
func (r *Relay) Backlog() int { return int(r.backlog.Load()) }

// Run relays until ctx is done, then returns nil. Rows left in the outbox
// go out at the next Run.
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("bridge: relay already running")
	}
	defer r.running.Store(false)
	// Since Go 1.23 Stop and Reset leave no stale tick in timer.C.
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	failures := 0
	for ctx.Err() == nil {
		n, err := r.relayBatch(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			// After a failure only the retry delay wakes the relay, so a
			// busy store cannot turn retries into a hot loop.
			failures++
			wait := retryDelay(r.cfg.RetryMin, r.cfg.RetryMax, failures)
			r.log.Error("relay failed; retrying", "err", err, "attempt", failures, "retry_in", wait)
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return nil
			case <-timer.C:
			}
			continue
		case n == r.cfg.BatchSize:
			failures = 0
			continue // more rows are waiting
		}
		failures = 0
		timer.Reset(r.cfg.PollInterval)
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-r.notify:
			timer.Stop()
		}
	}
	return nil
}

// relayBatch reads one batch, publishes it and deletes what was
// published. It returns the number of rows read.
func (r *Relay) relayBatch(ctx context.Context) (int, error) {
	start := time.Now()
	rows, err := r.cfg.Outbox.PendingOutbox(ctx, r.cfg.BatchSize)
	if err != nil {
		r.m.errors.WithLabelValues("read").Inc()
		return 0, fmt.Errorf("read outbox: %w", err)
	}
	r.backlog.Store(int64(len(rows)))
	if len(rows) == 0 {
		return 0, nil
	}

	// One Publish per topic, rows in outbox order within each.
	var topics []string
	byTopic := map[string][]store.OutboxRow{}
	for _, row := range rows {
		if _, ok := byTopic[row.Topic]; !ok {
			topics = append(topics, row.Topic)
		}
		byTopic[row.Topic] = append(byTopic[row.Topic], row)
	}
	published := make([]int64, 0, len(rows))
	var errs []error
	for _, topic := range topics {
		group := byTopic[topic]
		msgs := make([]*message.Message, len(group))
		for i, row := range group {
			msgs[i] = message.NewMessage(row.EventID, row.Payload)
		}
		err := r.cfg.Publisher.Publish(topic, msgs...)
		if err == nil {
			for _, row := range group {
				published = append(published, row.ID)
			}
			continue
		}
		var partial interface{ MessageFailed(uuid string) bool }
		failed := len(group)
		if errors.As(err, &partial) {
			failed = 0
			for _, row := range group {
				if partial.MessageFailed(row.EventID) {
					failed++
				} else {
					published = append(published, row.ID)
				}
			}
		}
		r.m.publishErrors.Add(float64(failed))
		errs = append(errs, fmt.Errorf("publish %d of %d rows to %q (first id %d): %w", failed, len(group), topic, group[0].ID, err))
	}
	r.m.published.Add(float64(len(published)))

	if len(published) > 0 {
		// Delete what the bus holds even when ctx ends now: otherwise the
		// next start sends it again (harmless, the bus drops the copies,
		// but only within its duplicate window).
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		err := r.cfg.Outbox.DeleteOutbox(dctx, published)
		cancel()
		if err != nil {
			r.m.errors.WithLabelValues("delete").Inc()
			errs = append(errs, fmt.Errorf("delete %d published rows (they will be sent again): %w", len(published), err))
		} else {
			r.backlog.Store(int64(len(rows) - len(published)))
		}
	}
	r.m.batch.Observe(time.Since(start).Seconds())
	return len(rows), errors.Join(errs...)
}

// retryDelay is min·2^(n-1), capped at max.
func retryDelay(min, max time.Duration, n int) time.Duration {
	d := min
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d
}
