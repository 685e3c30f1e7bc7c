package delivery_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/sinks/delivery"
	"github.com/buildbridge/buildbridge/store"
	"github.com/buildbridge/buildbridge/store/storetest"
)

// gatedSink passes attempts to the webhook sink while its budget lasts;
// then they hang until cancelled, and nothing reaches the destination: a
// node frozen mid-work.
type gatedSink struct {
	next   delivery.Sender
	closer sinks.Sink
	budget *atomic.Int64
}

func (g gatedSink) Send(ctx context.Context, a delivery.Attempt) (delivery.Response, error) {
	if g.budget.Add(-1) < 0 {
		<-ctx.Done()
		return delivery.Response{}, ctx.Err()
	}
	return g.next.Send(ctx, a)
}

func (g gatedSink) Deliver(ctx context.Context, d sinks.Delivery) error {
	_, err := g.Send(ctx, delivery.Attempt{Delivery: d, ID: "x", Number: 1})
	return err
}

func (g gatedSink) Close() error { return g.closer.Close() }

// node is one hub node's delivery engine with a store of its own (its
// own connections) on the shared database.
type node struct {
	name   string
	store  *store.DB
	e      *delivery.Engine
	reg    *prometheus.Registry
	budget atomic.Int64 // attempts that may go out
}

// startNode opens a store (PostgreSQL with a DSN, else SQLite in the
// directory dir) and an engine on it named name, with a lease of ttl.
func startNode(t *testing.T, dir, name string, ttl time.Duration, cfgs []*sinks.Config, start bool) *node {
	t.Helper()
	sc := store.Config{DataDir: dir}
	if strings.HasPrefix(dir, "postgres://") {
		sc = store.Config{Postgres: dir}
	}
	s, err := store.Open(context.Background(), sc)
	if err != nil {
		t.Fatal(err)
	}
	n := &node{name: name, store: s, reg: prometheus.NewRegistry()}
	n.budget.Store(1 << 40)
	n.e, err = delivery.New(delivery.Config{Store: s, Registerer: n.reg, NodeID: name,
		LeaseTTL: ttl, RenewInterval: ttl / 5, ResyncInterval: 200 * time.Millisecond,
		StaleAfter: 50 * time.Millisecond, ShutdownGrace: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(testWriter{t, name}, &slog.HandlerOptions{Level: slog.LevelWarn})),
		NewSink: func(c *sinks.Config) (sinks.Sink, error) {
			inner, err := newSink(c)
			if err != nil {
				return nil, err
			}
			return gatedSink{next: inner.(delivery.Sender), closer: inner, budget: &n.budget}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.e.Configure(cfgs); err != nil {
		t.Fatal(err)
	}
	if start {
		if err := n.e.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { n.e.Close(); s.Close() })
	return n
}

type testWriter struct {
	t    *testing.T
	name string
}

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s: %s", w.name, p)
	return len(p), nil
}

func (n *node) counter(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := n.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return value(mf.GetMetric()[0])
		}
	}
	return -1
}

// Two engines on one PostgreSQL store and one receiver: every delivery
// reaches the receiver once per webhook-id (twice when its first attempt
// is answered 503, never more) although both engines load the same
// pending deliveries at start, take events from both sides, retry, and
// pick up each other's due retries; and when one engine freezes mid-work
// and dies without a word (its store connection closed first, so it
// releases and records nothing), the other takes its deliveries over
// once their leases end, and delivers each once.
func TestTwoEnginesDeliverEachOnce(t *testing.T) {
	dsn := storetest.PostgresDSN(t)
	r := newReceiver(t)
	var mu sync.Mutex
	requests := map[string]int{}
	successes := map[string]int{}
	// A third of the deliveries fail once, before node A freezes: their
	// retries are claimed, or picked up by the other node.
	firstFails := func(evID string) bool {
		var build, seq int64
		fmt.Sscanf(evID, "evt_b%d_s%d", &build, &seq)
		return build < 3000 && build%3 == 0
	}
	r.setAnswer(func(_ int, rec received) (int, http.Header) {
		mu.Lock()
		defer mu.Unlock()
		requests[rec.id]++
		if requests[rec.id] == 1 && firstFails(rec.ev.ID) {
			return 503, nil
		}
		successes[rec.id]++
		return 200, nil
	})
	cfgs := func() []*sinks.Config {
		return []*sinks.Config{sinkConfig(t, "hook", r.srv.URL, "concurrency: 4\nretry_schedule: [0s, 100ms, 100ms, 100ms]\n")}
	}
	ctx := context.Background()
	var want []string // event ids

	// Deliveries left pending by a node gone before it attempted them
	// (created without a lease by an engine that never started).
	gone := startNode(t, dsn, "node-gone", time.Second, cfgs(), false)
	for i := range 30 {
		ev := buildEvent(int64(1000+i), 1, builds.Queued)
		if err := gone.e.Enqueue(ctx, []sinks.Delivery{to(ev, "hook", r.srv.URL)}); err != nil {
			t.Fatal(err)
		}
		want = append(want, ev.ID)
	}
	gone.e.Close()

	// Both start at once and find them; then events arrive on both, some
	// on both (the bus handing an event to a second node).
	var a, b *node
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a = startNode(t, dsn, "node-a", time.Second, cfgs(), true) }()
	go func() { defer wg.Done(); b = startNode(t, dsn, "node-b", time.Second, cfgs(), true) }()
	wg.Wait()
	wg.Add(2)
	errs := make(chan error, 2)
	for k, n := range []*node{a, b} {
		go func() {
			defer wg.Done()
			for i := range 60 {
				build := int64(2000 + i)
				if i%10 != 0 && i%2 != k {
					continue // the other node's event
				}
				ev := buildEvent(build, 1, builds.Started)
				if err := n.e.Enqueue(ctx, []sinks.Delivery{to(ev, "hook", r.srv.URL)}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i := range 60 {
		want = append(want, buildEvent(int64(2000+i), 1, "").ID)
	}
	waitDelivered := func(ids []string, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			n := 0
			for _, id := range ids {
				if d := rowOf(t, b.store, id); d.Status == store.DeliverySucceeded {
					n++
				}
			}
			if n == len(ids) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d deliveries succeeded within %s", n, len(ids), within)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitDelivered(want, 20*time.Second)

	// Node A takes 20 events (the deliveries it creates are leased to
	// it); the first attempts go through (recorded before it dies: an
	// attempt whose record is lost is made again, with the same id, which
	// is at-least-once, not what this test counts), the rest hang; then
	// it dies without a word.
	const passing = 3
	a.budget.Store(passing)
	var frozen []string
	for i := range 20 {
		ev := buildEvent(int64(3000+i), 1, builds.Finished)
		if err := a.e.Enqueue(ctx, []sinks.Delivery{to(ev, "hook", r.srv.URL)}); err != nil {
			t.Fatal(err)
		}
		frozen = append(frozen, ev.ID)
	}
	var held []string
	waitFor(t, func() bool {
		done := 0
		held = held[:0]
		for _, id := range frozen {
			switch d := rowOf(t, b.store, id); {
			case d.Status == store.DeliverySucceeded:
				done++
			case d.LeaseOwner == "node-a":
				held = append(held, id)
			}
		}
		return done == passing && len(held) == len(frozen)-passing
	})
	time.Sleep(300 * time.Millisecond) // renewals while frozen: nobody takes them
	for _, id := range held {
		if d := rowOf(t, b.store, id); d.LeaseOwner != "node-a" || d.Status != store.DeliveryPending {
			t.Fatalf("a live node's lease taken: %+v", d)
		}
	}
	a.store.Close()
	died := time.Now()
	a.e.Close()
	waitDelivered(frozen, 15*time.Second)
	took := time.Since(died)
	want = append(want, frozen...)

	mu.Lock()
	defer mu.Unlock()
	for _, evID := range want {
		id := delivery.MessageID(evID, "hook", r.srv.URL)
		wantReq := 1
		if firstFails(evID) {
			wantReq = 2
		}
		if requests[id] != wantReq || successes[id] != 1 {
			t.Errorf("event %s (webhook-id %s): %d requests, %d answered 200; want %d and 1",
				evID, id, requests[id], successes[id], wantReq)
		}
	}
	if len(requests) != len(want) {
		t.Errorf("%d webhook-ids received, want %d", len(requests), len(want))
	}
	if v := b.counter(t, "buildbridge_delivery_taken_over_total"); v < float64(len(held)) {
		t.Errorf("taken over by node B: %v, want at least %d", v, len(held))
	}
	t.Logf("%d deliveries, each once; node A's %d held deliveries finished by node B %s after A died (lease 1s); "+
		"leases lost or claims refused: A %v, B %v",
		len(want), len(held), took.Round(10*time.Millisecond),
		a.counter(t, "buildbridge_delivery_leases_lost_total"), b.counter(t, "buildbridge_delivery_leases_lost_total"))
}

func rowOf(t *testing.T, s *store.DB, eventID string) store.SinkDelivery {
	t.Helper()
	l, err := s.ListSinkDeliveries(context.Background(), store.SinkDeliveryFilter{EventID: eventID})
	if err != nil || len(l) != 1 {
		t.Fatalf("deliveries of %s: %+v %v", eventID, l, err)
	}
	return l[0]
}

// A node that dies holding deliveries (SQLite, one node at a time): back
// under the same node id it attempts them at once; under another id, only
// once their leases have ended.
func TestRestartTakesBackOwnLeases(t *testing.T) {
	r := newReceiver(t)
	cfgs := []*sinks.Config{sinkConfig(t, "hook", r.srv.URL, "")}
	dir := t.TempDir()
	ctx := context.Background()
	const ttl = 3 * time.Second
	crashHolding := func(name string, ev string) {
		t.Helper()
		n := startNode(t, dir, name, ttl, cfgs, true)
		n.budget.Store(0) // attempts hang: the node holds the lease
		var b, sq int64
		fmt.Sscanf(ev, "evt_b%d_s%d", &b, &sq)
		if err := n.e.Enqueue(ctx, []sinks.Delivery{to(buildEvent(b, sq, builds.Queued), "hook", r.srv.URL)}); err != nil {
			t.Fatal(err)
		}
		if d := rowOf(t, n.store, ev); d.LeaseOwner != name || d.Status != store.DeliveryPending {
			t.Fatalf("created: %+v", d)
		}
		n.store.Close() // nothing more reaches the store: a crash
		n.e.Close()
	}
	ev1, ev2 := buildEvent(1, 1, "").ID, buildEvent(2, 1, "").ID

	crashHolding("n1", ev1)
	start := time.Now()
	n2 := startNode(t, dir, "n1", ttl, cfgs, true)
	got := r.wait(1, 5*time.Second)
	if took := time.Since(start); took > ttl/2 || got[0].ev.ID != ev1 {
		t.Fatalf("the same node back: %s after the restart, %s (its lease lasts %s)", took, got[0].ev.ID, ttl)
	}
	n2.e.Close()
	n2.store.Close()

	crashHolding("n1", ev2)
	start = time.Now()
	startNode(t, dir, "n2", ttl, cfgs, true)
	got = r.wait(2, 10*time.Second)
	if took := time.Since(start); took < ttl/2 || got[1].ev.ID != ev2 {
		t.Fatalf("another node: %s after the start, %s; the lease of %s was still running", took, got[1].ev.ID, ttl)
	}
	if n := len(r.got()); n != 2 {
		t.Fatalf("%d requests, want 2", n)
	}
}

// An idle engine costs the store one read per ResyncInterval (the search
// for deliveries no node holds), and nothing for leases once what it
// delivered is recorded.
func TestIdleEngineReadsOncePerInterval(t *testing.T) {
	r := newReceiver(t)
	n := startNode(t, t.TempDir(), "idle", time.Second, []*sinks.Config{sinkConfig(t, "hook", r.srv.URL, "")}, true)
	ev := buildEvent(1, 1, builds.Queued)
	if err := n.e.Enqueue(context.Background(), []sinks.Delivery{to(ev, "hook", r.srv.URL)}); err != nil {
		t.Fatal(err)
	}
	r.wait(1, 5*time.Second)
	waitFor(t, func() bool { return rowOf(t, n.store, ev.ID).Status == store.DeliverySucceeded })
	time.Sleep(300 * time.Millisecond)
	const window, interval = 2 * time.Second, 200 * time.Millisecond // startNode's ResyncInterval
	q0 := n.store.Queries()
	time.Sleep(window)
	q := n.store.Queries() - q0
	ticks := uint64(window / interval)
	if q < ticks/2 || q > ticks+2 {
		t.Fatalf("an idle engine sent %d statements in %s (resync every %s, renewals every %s): want about %d",
			q, window, interval, time.Second/5, ticks)
	}
	t.Logf("idle: %d statements in %s", q, window)
}
