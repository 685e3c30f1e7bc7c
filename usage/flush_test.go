package usage

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/store"
)

// failingStore is a real store whose writes fail while fail is set, as
// when the database is down.
type failingStore struct {
	*store.DB
	fail   atomic.Bool
	writes atomic.Int64
}

func (f *failingStore) AddUsage(ctx context.Context, rows []store.UsageRow) error {
	f.writes.Add(1)
	if f.fail.Load() {
		return errors.New("database is down")
	}
	return f.DB.AddUsage(ctx, rows)
}

func usageOf(t *testing.T, r interface {
	Usage(context.Context, store.UsageQuery) ([]store.UsageRow, error)
}, q store.UsageQuery) map[string]store.UsageRow {
	t.Helper()
	rows, err := r.Usage(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]store.UsageRow{}
	for _, r := range rows {
		out[r.Day+" "+r.Route] = r
	}
	return out
}

func TestFlushAndRead(t *testing.T) {
	clk := newClock()
	db := &failingStore{DB: openStore(t)}
	m := newMeter(t, clk, Config{Store: db, Limit: 100})
	ann := Caller{TokenID: 11, UserID: 1, User: "ann"}
	get, post := m.Route("GET", "/api/v1/projects"), m.Route("POST", "/api/v1/projects")
	call := func(c Caller, route int32, status int, lat time.Duration) {
		m.End(m.Begin(c, clk.Now()), route, status, lat)
	}
	for range 3 {
		call(ann, get, 200, 2*time.Millisecond)
	}
	call(ann, post, 422, 5*time.Millisecond)
	call(Caller{TokenID: 12, UserID: 1, User: "ann"}, get, 200, time.Millisecond)
	call(Caller{TokenID: 21, UserID: 2, User: "bob"}, get, 500, time.Millisecond)
	today := store.UsageDay(clk.Now())
	q := store.UsageQuery{UserID: 1, From: today, To: today}

	// Counts show before any flush…
	got := usageOf(t, m, q)
	if r := got[today+" GET /api/v1/projects"]; r.Requests != 4 || r.Errors != 0 || r.LatencyUS != 7000 || r.MaxLatencyUS != 2000 || r.TokenID != 0 {
		t.Fatalf("before the flush: %+v", got)
	}
	if r := got[today+" POST /api/v1/projects"]; r.Requests != 1 || r.Errors != 1 {
		t.Fatalf("errors: %+v", got)
	}
	if n, _ := db.DB.Usage(context.Background(), q); len(n) != 0 {
		t.Fatal("stored before the flush")
	}
	// …and the same after it, now from the store; nothing is counted twice.
	if err := m.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	stored, _ := db.DB.Usage(context.Background(), store.UsageQuery{From: today, To: today, ByToken: true})
	if len(stored) != 4 {
		t.Fatalf("stored rows: %+v", stored)
	}
	if again := usageOf(t, m, q); again[today+" GET /api/v1/projects"].Requests != 4 || again[today+" POST /api/v1/projects"].Requests != 1 {
		t.Fatalf("after the flush: %+v", again)
	}
	byToken, err := m.Usage(context.Background(), store.UsageQuery{UserID: 1, From: today, To: today, ByToken: true})
	if err != nil || len(byToken) != 3 || byToken[0].TokenID != 11 || byToken[0].Requests != 3 || byToken[1].TokenID != 12 {
		t.Fatalf("by token: %+v %v", byToken, err)
	}
	// An empty flush writes nothing.
	w := db.writes.Load()
	if err := m.Flush(context.Background()); err != nil || db.writes.Load() != w {
		t.Fatalf("empty flush: %v, %d writes", err, db.writes.Load()-w)
	}

	// The store fails: the counts wait, show, and go in with the next.
	db.fail.Store(true)
	call(ann, get, 200, time.Millisecond)
	if err := m.Flush(context.Background()); err == nil {
		t.Fatal("failed flush reported no error")
	}
	call(ann, get, 200, time.Millisecond)
	if r := usageOf(t, m, q)[today+" GET /api/v1/projects"]; r.Requests != 6 {
		t.Fatalf("with the store down: %+v", r)
	}
	db.fail.Store(false)
	if err := m.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r := usageOf(t, db.DB, q)[today+" GET /api/v1/projects"]; r.Requests != 6 {
		t.Fatalf("stored after the store came back: %+v", r)
	}

	// A flush after midnight stores under the new day.
	clk.Add(24 * time.Hour)
	call(ann, get, 200, time.Millisecond)
	if err := m.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	tomorrow := store.UsageDay(clk.Now())
	rows := usageOf(t, m, store.UsageQuery{UserID: 1, From: today, To: tomorrow})
	if rows[tomorrow+" GET /api/v1/projects"].Requests != 1 || rows[today+" GET /api/v1/projects"].Requests != 6 {
		t.Fatalf("two days: %+v", rows)
	}
	if got := usageOf(t, m, store.UsageQuery{UserID: 2, From: today, To: today}); got[today+" GET /api/v1/projects"].Errors != 1 {
		t.Fatalf("bob: %+v", got)
	}
}

// TestIdleTokensForgotten checks that idle tokens leave memory once
// their counts are stored, and that a request still running then is
// counted.
func TestIdleTokensForgotten(t *testing.T) {
	clk := newClock()
	db := openStore(t)
	m := newMeter(t, clk, Config{Store: db, Window: time.Minute})
	route := m.Route("GET", "/api/v1/user")
	late := m.Begin(Caller{TokenID: 1, UserID: 1, User: "ann"}, clk.Now())
	m.Activity(clk.Now())
	clk.Add(time.Hour)
	if err := m.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(m.tokens()); n != 0 {
		t.Fatalf("%d tokens kept", n)
	}
	m.End(late, route, 200, time.Hour) // the request that was running
	if err := m.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	day := store.UsageDay(clk.Now())
	if r := usageOf(t, db, store.UsageQuery{From: day, To: day})[day+" GET /api/v1/user"]; r.Requests != 1 {
		t.Fatalf("late request: %+v", r)
	}
	if len(m.retired) != 0 {
		t.Fatal("retired tokens kept")
	}
}

// TestRunFlushesOnStop checks the periodic flush and the last one.
func TestRunFlushesOnStop(t *testing.T) {
	db := openStore(t)
	m, err := New(Config{Store: db, FlushInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	route := m.Route("GET", "/api/v1/user")
	c := Caller{TokenID: 5, UserID: 5, User: "eve"}
	m.End(m.Begin(c, time.Now()), route, 200, time.Millisecond)
	day := store.UsageDay(time.Now())
	deadline := time.Now().Add(5 * time.Second)
	for usageOf(t, db, store.UsageQuery{From: day, To: day})[day+" GET /api/v1/user"].Requests != 1 {
		if time.Now().After(deadline) {
			t.Fatal("no periodic flush")
		}
		time.Sleep(10 * time.Millisecond)
	}
	m.End(m.Begin(c, time.Now()), route, 200, time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if r := usageOf(t, db, store.UsageQuery{From: day, To: day})[day+" GET /api/v1/user"]; r.Requests != 2 {
		t.Fatalf("after stop: %+v", r)
	}
}

func TestNextFlushAtMidnight(t *testing.T) {
	clk := &testClock{t: time.Date(2030, 1, 1, 23, 59, 58, 0, time.UTC)}
	m := newMeter(t, clk, Config{FlushInterval: 5 * time.Second})
	if d := m.nextFlush(); d != 2*time.Second+time.Millisecond {
		t.Fatalf("before midnight: %s", d)
	}
	clk.Add(time.Hour)
	if d := m.nextFlush(); d != 5*time.Second {
		t.Fatalf("later: %s", d)
	}
}
