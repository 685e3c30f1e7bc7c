package bridge

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/buildbridge/buildbridge/store"
	"github.com/buildbridge/buildbridge/store/storetest"
)

// recordingPublisher counts every message it is asked to publish, by id,
// and remembers when it first saw each.
type recordingPublisher struct {
	mu    sync.Mutex
	count map[string]int
	at    map[string]time.Time
	total int
}

func newRecordingPublisher() *recordingPublisher {
	return &recordingPublisher{count: map[string]int{}, at: map[string]time.Time{}}
}

func (p *recordingPublisher) Publish(_ string, msgs ...*message.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	for _, m := range msgs {
		p.count[m.UUID]++
		p.total++
		if _, ok := p.at[m.UUID]; !ok {
			p.at[m.UUID] = now
		}
	}
	return nil
}

func (p *recordingPublisher) Close() error { return nil }

func (p *recordingPublisher) published() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.total
}

// node is one hub node's share of the test: its own store connection pool
// and relay on the shared schema.
type node struct {
	name  string
	db    *store.DB
	pub   *recordingPublisher
	relay *Relay
	stop  context.CancelFunc
	done  chan struct{}
}

func startNode(t *testing.T, dsn, name string) *node {
	t.Helper()
	db, err := store.Open(t.Context(), store.Config{Postgres: dsn, MaxOpenConns: 4, Logger: quietLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	n := &node{name: name, db: db, pub: newRecordingPublisher(), done: make(chan struct{})}
	// An hour between polls: rows committed on the other node reach the
	// holder only through the announcement.
	n.relay, err = NewRelay(RelayConfig{Lock: db.OutboxLock(name), Publisher: n.pub, Node: name,
		PollInterval: time.Hour, RetryMin: 20 * time.Millisecond, Logger: quietLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var ctx context.Context
	ctx, n.stop = context.WithCancel(context.Background())
	go func() { defer close(n.done); n.relay.Run(ctx) }()
	t.Cleanup(n.halt)
	return n
}

// halt stops the node's relay and waits for it.
func (n *node) halt() {
	n.stop()
	<-n.done
}

// insert commits rows into the outbox as this node's store would, and
// notifies its relay as the store's OnOutbox does.
func (n *node) insert(t *testing.T, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if _, err := n.db.SQL().Exec(`INSERT INTO outbox (event_id, topic, payload, created_at) VALUES ($1, 'build.transition', $2, $3)`,
			id, []byte(id), time.Now().UnixMilli()); err != nil {
			t.Fatal(err)
		}
	}
	n.relay.Notify()
}

func waitUntil(t *testing.T, what string, within time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

func outboxLen(t *testing.T, db *store.DB) int {
	t.Helper()
	var n int
	if err := db.SQL().QueryRow(`SELECT COUNT(*) FROM outbox`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func holder(t *testing.T, db *store.DB) store.OutboxHolder {
	t.Helper()
	h, err := db.OutboxHolder(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// exactlyOnce fails unless every id was published once in all, by any of
// the publishers.
func exactlyOnce(t *testing.T, ids []string, pubs ...*recordingPublisher) {
	t.Helper()
	total := map[string]int{}
	for _, p := range pubs {
		p.mu.Lock()
		for id, c := range p.count {
			total[id] += c
		}
		p.mu.Unlock()
	}
	for _, id := range ids {
		if total[id] != 1 {
			t.Errorf("row %s published %d times, want once", id, total[id])
		}
	}
	if len(total) != len(ids) {
		t.Errorf("%d distinct rows published, want %d", len(total), len(ids))
	}
}

// Two nodes, two relays, one outbox: rows committed on either node are
// published once, by the node holding the lock, in order, and those of the
// node standing by go out on its announcement, not at the next poll.
func TestSharedOutboxPublishesOnce(t *testing.T) {
	dsn := storetest.PostgresDSN(t)
	a := startNode(t, dsn, "node-a")
	waitUntil(t, "node-a leads", 5*time.Second, a.relay.Leading)
	b := startNode(t, dsn, "node-b")
	time.Sleep(300 * time.Millisecond) // b has tried and stands by
	if b.relay.Leading() {
		t.Fatal("both relays lead")
	}
	if h := holder(t, a.db); h.Name != "node-a" {
		t.Fatalf("lock holder %+v, want node-a", h)
	}

	var ids []string
	inserted := map[string]time.Time{}
	var fromB []string
	for batch := range 100 {
		n := a
		if batch%2 == 1 {
			n = b
		}
		var group []string
		for i := range 10 {
			group = append(group, fmt.Sprintf("%s-%03d-%d", n.name, batch, i))
		}
		now := time.Now()
		n.insert(t, group...)
		for _, id := range group {
			inserted[id] = now
			if n == b {
				fromB = append(fromB, id)
			}
		}
		ids = append(ids, group...)
		time.Sleep(2 * time.Millisecond)
	}
	waitUntil(t, "outbox empty", 15*time.Second, func() bool { return outboxLen(t, a.db) == 0 })
	exactlyOnce(t, ids, a.pub, b.pub)
	if n := b.pub.published(); n != 0 {
		t.Errorf("the standby relay published %d rows", n)
	}
	// Rows committed on b reached a's publisher through the announcement.
	var worst, sum time.Duration
	a.pub.mu.Lock()
	for _, id := range fromB {
		d := a.pub.at[id].Sub(inserted[id])
		sum += d
		worst = max(worst, d)
	}
	a.pub.mu.Unlock()
	t.Logf("rows committed on the standby node: %d, commit→publish by the holder mean %s, max %s",
		len(fromB), sum/time.Duration(len(fromB)), worst)
	if worst > 2*time.Second {
		t.Errorf("a row committed on the standby node waited %s for the holder (poll interval is an hour)", worst)
	}
}

// When the holder's session is killed, the other node takes over within
// a couple of seconds; when the new holder stops, the first takes over
// again. No row is lost, none is published twice.
func TestSharedOutboxTakeover(t *testing.T) {
	dsn := storetest.PostgresDSN(t)
	a := startNode(t, dsn, "node-a")
	waitUntil(t, "node-a leads", 5*time.Second, a.relay.Leading)
	b := startNode(t, dsn, "node-b")
	time.Sleep(300 * time.Millisecond)

	var ids []string
	add := func(n *node, prefix string, count int) {
		var group []string
		for i := range count {
			group = append(group, fmt.Sprintf("%s-%d", prefix, i))
		}
		n.insert(t, group...)
		ids = append(ids, group...)
	}
	add(a, "before", 20)
	waitUntil(t, "first rows out", 5*time.Second, func() bool { return outboxLen(t, a.db) == 0 })

	// Kill node-a's lock session, as a network cut or an operator would.
	h := holder(t, a.db)
	if h.Name != "node-a" {
		t.Fatalf("holder %+v, want node-a", h)
	}
	killed := time.Now()
	if _, err := b.db.SQL().Exec(`SELECT pg_terminate_backend($1)`, h.PID); err != nil {
		t.Fatal(err)
	}
	took := waitUntil(t, "node-b takes over", 3*time.Second, b.relay.Leading)
	t.Logf("node-a's session killed: node-b relays after %s", took)
	waitUntil(t, "node-a steps down", 3*time.Second, func() bool { return !a.relay.Leading() })
	if h := holder(t, a.db); h.Name != "node-b" {
		t.Fatalf("holder %+v, want node-b", h)
	}
	add(a, "after-kill-a", 20) // announced by node-a, now standing by
	add(b, "after-kill-b", 20)
	waitUntil(t, "rows after the kill out", 5*time.Second, func() bool { return outboxLen(t, a.db) == 0 })
	if time.Since(killed) > 10*time.Second {
		t.Errorf("rows took %s after the kill", time.Since(killed))
	}

	// node-b stops (its session ends): node-a takes over.
	before := a.pub.published()
	b.halt()
	took = waitUntil(t, "node-a takes over", 3*time.Second, a.relay.Leading)
	t.Logf("node-b stopped: node-a relays after %s", took)
	add(b, "after-stop", 20) // committed through node-b's store; its relay is gone
	a.relay.Notify()
	waitUntil(t, "rows after the stop out", 5*time.Second, func() bool { return outboxLen(t, a.db) == 0 })
	if a.pub.published()-before != 20 {
		t.Errorf("node-a published %d rows after taking over, want 20", a.pub.published()-before)
	}
	exactlyOnce(t, ids, a.pub, b.pub)
}

// A relay whose publishes keep failing gives the lock up, and the other
// node, whose bus works, publishes the rows.
func TestSharedOutboxFailingPublisherStepsDown(t *testing.T) {
	dsn := storetest.PostgresDSN(t)
	a := startNode(t, dsn, "node-a")
	waitUntil(t, "node-a leads", 5*time.Second, a.relay.Leading)
	// Swap node-a's publisher for one that always fails: restart its relay.
	a.halt()
	failing := &failingPublisher{}
	r, err := NewRelay(RelayConfig{Lock: a.db.OutboxLock("node-a"), Publisher: failing, Node: "node-a",
		PollInterval: time.Hour, RetryMin: 20 * time.Millisecond, Logger: quietLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	runRelay(t, r)
	waitUntil(t, "node-a leads again", 5*time.Second, r.Leading)
	b := startNode(t, dsn, "node-b")
	ids := []string{"x1", "x2", "x3"}
	b.insert(t, ids...)
	waitUntil(t, "node-b publishes", 10*time.Second, func() bool { return outboxLen(t, a.db) == 0 })
	exactlyOnce(t, ids, b.pub)
	if failing.calls() < 3 {
		t.Errorf("node-a tried %d publishes before giving up, want 3", failing.calls())
	}
}

type failingPublisher struct {
	mu sync.Mutex
	n  int
}

func (p *failingPublisher) Publish(string, ...*message.Message) error {
	p.mu.Lock()
	p.n++
	p.mu.Unlock()
	return errors.New("injected: bus unreachable from this node")
}

func (p *failingPublisher) Close() error { return nil }

func (p *failingPublisher) calls() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// On SQLite the lock is always this node's: the shared path relays too.
func TestSharedOutboxSQLite(t *testing.T) {
	db, err := store.Open(t.Context(), store.Config{DataDir: t.TempDir(), Logger: quietLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	pub := newRecordingPublisher()
	r, err := NewRelay(RelayConfig{Lock: db.OutboxLock("solo"), Publisher: pub, PollInterval: time.Hour, Logger: quietLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	runRelay(t, r)
	waitUntil(t, "relay leads", 2*time.Second, r.Leading)
	for i := range 5 {
		if _, err := db.SQL().Exec(`INSERT INTO outbox (event_id, topic, payload, created_at) VALUES (?, 'build.transition', x'00', 0)`, fmt.Sprint("s", i)); err != nil {
			t.Fatal(err)
		}
	}
	r.Notify()
	waitUntil(t, "rows out", 2*time.Second, func() bool { return outboxLen(t, db) == 0 })
	exactlyOnce(t, []string{"s0", "s1", "s2", "s3", "s4"}, pub)
}
