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

// OutboxLock is an outbox shared by the relays of several hub nodes
// (store.OutboxLock on PostgreSQL): only the relay holding the lock reads
// and deletes, through the lock's own session, so the rows are published
// once and in order while the other relays stand by to take over.
type OutboxLock interface {
	// PendingOutbox and DeleteOutbox work while the lock is held.
	Outbox
	// TryLock takes the lock unless another relay holds it, and reports
	// whether this one holds it.
	TryLock(ctx context.Context) (bool, error)
	// Release gives the lock up.
	Release()
	// Wait blocks the holder until another node announces rows, or until
	// ctx ends (then it returns ctx's error).
	Wait(ctx context.Context) error
	// Announce tells the holder that this node committed rows.
	Announce(ctx context.Context) error
}

// RelayConfig configures a Relay.
type RelayConfig struct {
	// Outbox is read and emptied by the relay. Required unless Lock is
	// set.
	Outbox Outbox
	// Lock, when set, is the outbox shared with the relays of other
	// nodes, used instead of Outbox: the relay publishes only while it
	// holds the lock, and otherwise stands by, trying to take it every
	// StandbyInterval and passing its Notify calls on to the holder.
	Lock OutboxLock
	// StandbyInterval is how often a relay standing by tries to take the
	// lock: at most this long after the holder's session ends, another
	// relay publishes. A relay that lost the lock through an error waits
	// twice as long, so that a node whose store answers takes over first.
	// Default 1s.
	StandbyInterval time.Duration
	// Node names this node in the relay's logs and metrics. Default
	// "local".
	Node string
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
	if c.StandbyInterval == 0 {
		c.StandbyInterval = time.Second
	}
	if c.Node == "" {
		c.Node = "local"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports the first invalid field.
func (c *RelayConfig) Validate() error {
	switch {
	case c.Outbox == nil && c.Lock == nil:
		return errors.New("bridge: RelayConfig.Outbox (or Lock) is required")
	case c.Publisher == nil:
		return errors.New("bridge: RelayConfig.Publisher is required")
	case c.BatchSize < 1:
		return fmt.Errorf("bridge: RelayConfig.BatchSize must be at least 1, got %d", c.BatchSize)
	case c.PollInterval < 0:
		return fmt.Errorf("bridge: RelayConfig.PollInterval must not be negative, got %s", c.PollInterval)
	case c.RetryMin < 0 || c.RetryMax < c.RetryMin:
		return fmt.Errorf("bridge: RelayConfig.RetryMin (%s) and RetryMax (%s) must satisfy 0 ≤ RetryMin ≤ RetryMax", c.RetryMin, c.RetryMax)
	case c.StandbyInterval < 0:
		return fmt.Errorf("bridge: RelayConfig.StandbyInterval must not be negative, got %s", c.StandbyInterval)
	}
	return nil
}

// Relay publishes the outbox on the bus. A row is deleted only after the
// bus acknowledged its message; a row whose publish failed stays and is
// sent again after a pause. A row sent twice (its delete failed, or the
// process died between publish and delete) carries the same message id,
// and the bus drops the copy.
//
// With RelayConfig.Lock, the relays of several nodes share one outbox:
// the one holding the lock publishes, the others stand by. A holder that
// dies between a publish and its delete leaves rows the next holder sends
// again, with the same ids; a holder that cannot read its outbox, or
// fails to publish three times in a row, gives the lock up so that a node
// in better shape takes over.
type Relay struct {
	cfg     RelayConfig
	log     *slog.Logger
	notify  chan struct{}
	running atomic.Bool
	leading atomic.Bool
	backlog atomic.Int64
	m       relayMetrics
}

// NewRelay returns a relay; Run starts it.
func NewRelay(cfg RelayConfig) (*Relay, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Relay{cfg: cfg, log: cfg.Logger.With("component", "relay", "node", cfg.Node), notify: make(chan struct{}, 1)}
	var err error
	r.m, err = newRelayMetrics(cfg.Registerer, cfg.Node,
		func() float64 { return float64(r.Backlog()) },
		func() float64 {
			if r.Leading() {
				return 1
			}
			return 0
		})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Notify wakes the relay at once. The store calls it after each commit
// that wrote outbox rows; it never blocks. A relay standing by passes the
// news on to the relay holding the lock.
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

// Leading reports whether this relay publishes the outbox now: always
// while it runs without a Lock, only while it holds the lock with one.
func (r *Relay) Leading() bool { return r.leading.Load() }

// Run relays until ctx is done, then returns nil. Rows left in the outbox
// go out at the next Run (or, with a Lock, from the next holder). With a
// Lock, Run releases it when it returns.
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("bridge: relay already running")
	}
	defer r.running.Store(false)
	if r.cfg.Lock == nil {
		r.leading.Store(true)
		defer r.leading.Store(false)
		r.relay(ctx, r.cfg.Outbox, nil)
		return nil
	}
	defer r.cfg.Lock.Release()
	r.runShared(ctx)
	return nil
}

// runShared takes the lock, relays while it holds it, and stands by while
// another relay does, until ctx ends.
func (r *Relay) runShared(ctx context.Context) {
	lock := r.cfg.Lock
	failures := 0
	standingBy := false
	var wait time.Duration
	for {
		if wait > 0 && !r.standby(ctx, wait) {
			return
		}
		if ctx.Err() != nil {
			return
		}
		held, err := lock.TryLock(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			failures++
			wait = retryDelay(r.cfg.StandbyInterval, r.cfg.RetryMax, failures)
			r.m.errors.WithLabelValues("lock").Inc()
			r.log.Error("relay cannot reach the outbox lock; retrying", "err", err, "attempt", failures, "retry_in", wait)
			continue
		case !held:
			failures = 0
			if !standingBy {
				r.log.Info("relay standing by: another node relays the outbox")
				standingBy = true
			}
			wait = r.cfg.StandbyInterval
			continue
		}
		failures, standingBy = 0, false
		r.m.acquired.Inc()
		r.leading.Store(true)
		r.log.Info("relay took the outbox lock: this node relays the outbox")
		err = r.relay(ctx, lock, lock)
		r.leading.Store(false)
		lock.Release()
		if ctx.Err() != nil {
			r.log.Info("relay released the outbox lock")
			return
		}
		r.log.Warn("relay gave the outbox lock up", "err", err)
		wait = 2 * r.cfg.StandbyInterval
	}
}

// standby waits d while another relay holds the lock, passing this
// node's Notify calls on to it. It returns false when ctx ends.
func (r *Relay) standby(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case <-r.notify:
			actx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := r.cfg.Lock.Announce(actx)
			cancel()
			if err != nil && ctx.Err() == nil {
				// The holder still polls; the rows go out a little later.
				r.log.Debug("relay could not announce rows to the holder", "err", err)
			}
		}
	}
}

// relay publishes ob until ctx ends, then returns nil. With a lock it
// returns the error that makes it give the lock up instead of retrying:
// a failed read, delete or wait (the lock's session may be gone), or a
// third failed publish in a row.
func (r *Relay) relay(ctx context.Context, ob Outbox, lock OutboxLock) error {
	// Since Go 1.23 Stop and Reset leave no stale tick in timer.C.
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	failures := 0
	for ctx.Err() == nil {
		n, err := r.relayBatch(ctx, ob)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			failures++
			var oe outboxError
			if lock != nil && (errors.As(err, &oe) || failures >= 3) {
				return err
			}
			// After a failure only the retry delay wakes the relay, so a
			// busy store cannot turn retries into a hot loop.
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
		if lock != nil {
			if err := r.idle(ctx, lock); err != nil {
				return err
			}
			continue
		}
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

// idle waits, holding the lock, for this node's Notify, another node's
// announcement or PollInterval, whichever comes first. It returns an error
// only when the lock's session failed.
func (r *Relay) idle(ctx context.Context, lock OutboxLock) error {
	wctx, cancel := context.WithTimeout(ctx, r.cfg.PollInterval)
	defer cancel()
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-r.notify:
			cancel()
		case <-stop:
		case <-wctx.Done():
		}
	}()
	err := lock.Wait(wctx)
	close(stop)
	<-done
	if err != nil && wctx.Err() == nil {
		r.m.errors.WithLabelValues("wait").Inc()
		return outboxError{fmt.Errorf("wait for announced rows: %w", err)}
	}
	return nil
}

// outboxError is a failed read, delete or wait: with a shared outbox the
// relay gives its lock up, since its session may be gone.
type outboxError struct{ err error }

func (e outboxError) Error() string { return e.err.Error() }
func (e outboxError) Unwrap() error { return e.err }

// relayBatch reads one batch, publishes it and deletes what was
// published. It returns the number of rows read.
func (r *Relay) relayBatch(ctx context.Context, ob Outbox) (int, error) {
	start := time.Now()
	rows, err := ob.PendingOutbox(ctx, r.cfg.BatchSize)
	if err != nil {
		r.m.errors.WithLabelValues("read").Inc()
		return 0, outboxError{fmt.Errorf("read outbox: %w", err)}
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
		err := ob.DeleteOutbox(dctx, published)
		cancel()
		if err != nil {
			r.m.errors.WithLabelValues("delete").Inc()
			errs = append(errs, outboxError{fmt.Errorf("delete %d published rows (they will be sent again): %w", len(published), err)})
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
