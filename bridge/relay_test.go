package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/buildbridge/buildbridge/bus"
	"github.com/buildbridge/buildbridge/store"
)

// memOutbox is an in-memory Outbox that can be told to fail.
type memOutbox struct {
	mu          sync.Mutex
	rows        []store.OutboxRow
	next        int64
	failReads   int // the next n reads fail
	failDeletes int // the next n deletes fail
	deletes     int
}

func (o *memOutbox) add(topic, eventID string, payload []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.next++
	o.rows = append(o.rows, store.OutboxRow{ID: o.next, EventID: eventID, Topic: topic, Payload: payload, CreatedAt: time.Now()})
}

func (o *memOutbox) PendingOutbox(_ context.Context, limit int) ([]store.OutboxRow, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.failReads > 0 {
		o.failReads--
		return nil, errors.New("injected read failure")
	}
	n := min(limit, len(o.rows))
	return slices.Clone(o.rows[:n]), nil
}

func (o *memOutbox) DeleteOutbox(_ context.Context, ids []int64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.failDeletes > 0 {
		o.failDeletes--
		return errors.New("injected delete failure")
	}
	o.deletes++
	o.rows = slices.DeleteFunc(o.rows, func(r store.OutboxRow) bool { return slices.Contains(ids, r.ID) })
	return nil
}

func (o *memOutbox) len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.rows)
}

// countingPublisher counts Publish calls and messages, and fails the
// first failFirst calls.
type countingPublisher struct {
	message.Publisher
	calls, msgs atomic.Int64
	failFirst   atomic.Int64
}

func (p *countingPublisher) Publish(topic string, msgs ...*message.Message) error {
	p.calls.Add(1)
	if p.failFirst.Add(-1) >= 0 {
		return errors.New("injected publish failure")
	}
	p.msgs.Add(int64(len(msgs)))
	return p.Publisher.Publish(topic, msgs...)
}

func quietLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelError + 1}))
}

func openBus(t *testing.T, dir string) *bus.Bus {
	t.Helper()
	b, err := bus.Open(t.Context(), bus.Config{DataDir: dir, Logger: quietLogger(t), AckWait: 2 * time.Second,
		RetryMin: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond, CloseTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// collector reads a topic through a durable and records every message.
type collector struct {
	mu   sync.Mutex
	msgs []*message.Message
	got  chan struct{}
}

func collect(t *testing.T, b *bus.Bus, durable, topic string) *collector {
	t.Helper()
	sub, err := b.Subscriber(durable)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	ch, err := sub.Subscribe(t.Context(), topic)
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{got: make(chan struct{}, 1)}
	go func() {
		for m := range ch {
			c.mu.Lock()
			c.msgs = append(c.msgs, m)
			c.mu.Unlock()
			m.Ack()
			select {
			case c.got <- struct{}{}:
			default:
			}
		}
	}()
	return c
}

func (c *collector) ids() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []string
	for _, m := range c.msgs {
		ids = append(ids, m.UUID)
	}
	return ids
}

// waitFor waits until the collector holds n messages, then a little more
// to catch extras.
func (c *collector) waitFor(t *testing.T, n int, within time.Duration) []string {
	t.Helper()
	deadline := time.After(within)
	for len(c.ids()) < n {
		select {
		case <-c.got:
		case <-deadline:
			t.Fatalf("got %d of %d messages within %s", len(c.ids()), n, within)
		}
	}
	time.Sleep(200 * time.Millisecond)
	return c.ids()
}

func runRelay(t *testing.T, r *Relay) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("relay Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("relay did not stop")
		}
	})
}

func waitEmpty(t *testing.T, o *memOutbox, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for o.len() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("outbox still holds %d rows after %s", o.len(), within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRelayConfigValidate(t *testing.T) {
	if _, err := NewRelay(RelayConfig{Publisher: &countingPublisher{}}); err == nil {
		t.Error("NewRelay without Outbox succeeded")
	}
	if _, err := NewRelay(RelayConfig{Outbox: &memOutbox{}}); err == nil {
		t.Error("NewRelay without Publisher succeeded")
	}
	if _, err := NewRelay(RelayConfig{Outbox: &memOutbox{}, Publisher: &countingPublisher{}, BatchSize: -1}); err == nil {
		t.Error("NewRelay with BatchSize -1 succeeded")
	}
}

// All rows of two topics go out in order and leave the outbox.
func TestRelayPublishesAndDeletes(t *testing.T) {
	b := openBus(t, t.TempDir())
	transitions := collect(t, b, "t", "build.transition")
	other := collect(t, b, "o", "relay.other")
	o := &memOutbox{}
	const n = 600
	var want, wantOther []string
	for i := range n {
		id := fmt.Sprintf("ev-%04d", i)
		if i%10 == 0 {
			o.add("relay.other", id, []byte(id))
			wantOther = append(wantOther, id)
		} else {
			o.add("build.transition", id, []byte(id))
			want = append(want, id)
		}
	}
	pub := &countingPublisher{Publisher: b.Publisher()}
	r, err := NewRelay(RelayConfig{Outbox: o, Publisher: pub, Logger: quietLogger(t), PollInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	runRelay(t, r)
	waitEmpty(t, o, 10*time.Second)
	if got := transitions.waitFor(t, len(want), 10*time.Second); !slices.Equal(got, want) {
		t.Fatalf("build.transition got %d messages, want %d in outbox order", len(got), len(want))
	}
	if got := other.waitFor(t, len(wantOther), 10*time.Second); !slices.Equal(got, wantOther) {
		t.Fatalf("relay.other got %v", got)
	}
	if r.Backlog() != 0 {
		t.Errorf("Backlog = %d, want 0", r.Backlog())
	}
	// Batches, not one Publish per row: 3 batches × 2 topics.
	if calls := pub.calls.Load(); calls > 6 {
		t.Errorf("%d Publish calls for %d rows, want batches", calls, n)
	}

	// Notify wakes the relay at once, PollInterval is an hour.
	start := time.Now()
	o.add("build.transition", "late", []byte("late"))
	r.Notify()
	waitEmpty(t, o, 2*time.Second)
	transitions.waitFor(t, len(want)+1, 2*time.Second)
	t.Logf("row to bus after Notify: %s", time.Since(start))
}

// A failed publish keeps the rows, and the relay tries again.
func TestRelayRetriesPublishFailure(t *testing.T) {
	b := openBus(t, t.TempDir())
	c := collect(t, b, "t", "build.transition")
	o := &memOutbox{failReads: 1}
	for i := range 3 {
		o.add("build.transition", fmt.Sprint("r", i), nil)
	}
	pub := &countingPublisher{Publisher: b.Publisher()}
	pub.failFirst.Store(2)
	r, err := NewRelay(RelayConfig{Outbox: o, Publisher: pub, Logger: quietLogger(t),
		RetryMin: 20 * time.Millisecond, PollInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	runRelay(t, r)
	// The rows are there while the publishes fail.
	deadline := time.Now().Add(5 * time.Second)
	for pub.calls.Load() < 1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if pub.calls.Load() < 3 {
		if n := o.len(); n != 3 {
			t.Fatalf("after a failed publish the outbox holds %d rows, want 3", n)
		}
	}
	waitEmpty(t, o, 5*time.Second)
	if got := c.waitFor(t, 3, 5*time.Second); !slices.Equal(got, []string{"r0", "r1", "r2"}) {
		t.Fatalf("got %v", got)
	}
	if calls := pub.calls.Load(); calls != 3 {
		t.Errorf("Publish called %d times, want 3 (2 failures, 1 success)", calls)
	}
}

// When the bus fails some messages of a batch, exactly the others are
// deleted.
func TestRelayPartialFailure(t *testing.T) {
	b := openBus(t, t.TempDir())
	c := collect(t, b, "t", "build.transition")
	o := &memOutbox{}
	o.add("build.transition", "a", nil)
	o.add("build.transition", "", nil) // the bus refuses a message without id
	o.add("build.transition", "c", nil)
	r, err := NewRelay(RelayConfig{Outbox: o, Publisher: b.Publisher(), Logger: quietLogger(t),
		RetryMin: 20 * time.Millisecond, PollInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	runRelay(t, r)
	if got := c.waitFor(t, 2, 5*time.Second); !slices.Equal(got, []string{"a", "c"}) {
		t.Fatalf("got %v, want [a c]", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for o.len() != 1 || r.Backlog() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("outbox holds %d rows, backlog %d; want the bad row only", o.len(), r.Backlog())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if rows, _ := o.PendingOutbox(t.Context(), 10); rows[0].EventID != "" {
		t.Fatalf("kept row %+v, want the one without id", rows[0])
	}
}

// Rows re-sent after failed deletes reach the consumer once: the bus
// de-duplicates on the event id.
func TestRelayDeleteFailureNoDuplicates(t *testing.T) {
	b := openBus(t, t.TempDir())
	c := collect(t, b, "t", "build.transition")
	o := &memOutbox{failDeletes: 3}
	var want []string
	for i := range 50 {
		id := fmt.Sprintf("d%02d", i)
		o.add("build.transition", id, []byte(id))
		want = append(want, id)
	}
	pub := &countingPublisher{Publisher: b.Publisher()}
	r, err := NewRelay(RelayConfig{Outbox: o, Publisher: pub, Logger: quietLogger(t),
		RetryMin: 20 * time.Millisecond, PollInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	runRelay(t, r)
	waitEmpty(t, o, 5*time.Second)
	if sent := pub.msgs.Load(); sent != 4*50 {
		t.Errorf("published %d messages, want 200 (each row 4 times)", sent)
	}
	time.Sleep(300 * time.Millisecond)
	if got := c.waitFor(t, 50, 5*time.Second); !slices.Equal(got, want) {
		t.Fatalf("consumer got %d messages, want each of the 50 once: %v", len(got), got)
	}
}
