package usage

import (
	"context"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/store"
)

// testClock is a settable clock.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *testClock {
	return &testClock{t: time.Date(2030, 3, 4, 10, 0, 0, 0, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func openStore(t testing.TB) *store.DB {
	t.Helper()
	s, err := store.Open(context.Background(), store.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// sharedStore is one SQLite store for the tests that never read what is
// stored (opening one costs more than most tests).
var sharedStore struct {
	once sync.Once
	s    *store.DB
	err  error
	dir  string
}

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedStore.s != nil {
		sharedStore.s.Close()
		os.RemoveAll(sharedStore.dir)
	}
	os.Exit(code)
}

func scratchStore(t testing.TB) *store.DB {
	t.Helper()
	sharedStore.once.Do(func() {
		sharedStore.dir, sharedStore.err = os.MkdirTemp("", "usagetest")
		if sharedStore.err == nil {
			sharedStore.s, sharedStore.err = store.Open(context.Background(), store.Config{DataDir: sharedStore.dir})
		}
	})
	if sharedStore.err != nil {
		t.Fatal(sharedStore.err)
	}
	return sharedStore.s
}

func newMeter(t testing.TB, clk *testClock, cfg Config) *Meter {
	t.Helper()
	if cfg.Store == nil {
		cfg.Store = scratchStore(t)
	}
	cfg.Now = clk.Now
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestConfigValidate(t *testing.T) {
	s := scratchStore(t)
	for _, c := range []Config{
		{},
		{Store: s, Limit: -1},
		{Store: s, Limit: MaxLimit + 1},
		{Store: s, Window: time.Millisecond},
		{Store: s, Window: 25 * time.Hour},
		{Store: s, FlushInterval: time.Microsecond},
		{Store: s, Limits: map[string]int{"ann": 0}},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	if _, err := New(Config{Store: s}); err != nil {
		t.Fatal(err)
	}
}

func TestRateLimitWindow(t *testing.T) {
	clk := newClock()
	m := newMeter(t, clk, Config{Limit: 5, Window: time.Minute, Limits: map[string]int{"big": 50}})
	ann := Caller{TokenID: 1, UserID: 1, User: "ann"}
	for i := 1; i <= 5; i++ {
		d := m.Begin(ann, clk.Now())
		if !d.Allowed || d.Limit != 5 || d.Remaining != 5-i || d.Reset != time.Minute-time.Duration(i-1)*time.Second {
			t.Fatalf("request %d: %+v", i, d)
		}
		clk.Add(time.Second)
	}
	d := m.Begin(ann, clk.Now())
	if d.Allowed || d.Remaining != 0 || d.Reset != 55*time.Second {
		t.Fatalf("over the limit: %+v", d)
	}
	// Another token of the same user has its own window; so does the
	// user's dashboard session.
	if d := m.Begin(Caller{TokenID: 2, UserID: 1, User: "ann"}, clk.Now()); !d.Allowed || d.Remaining != 4 {
		t.Fatalf("second token: %+v", d)
	}
	if d := m.Begin(Caller{UserID: 1, User: "ann"}, clk.Now()); !d.Allowed || d.Remaining != 4 {
		t.Fatalf("session: %+v", d)
	}
	// A per-user override.
	if d := m.Begin(Caller{TokenID: 3, UserID: 2, User: "big"}, clk.Now()); d.Limit != 50 || d.Remaining != 49 {
		t.Fatalf("override: %+v", d)
	}
	if n, w := m.LimitFor("big"); n != 50 || w != time.Minute {
		t.Fatalf("LimitFor: %d %s", n, w)
	}
	// The window ends 60s after its first request: the limit is whole.
	clk.Add(54*time.Second + 999*time.Millisecond)
	if d := m.Begin(ann, clk.Now()); d.Allowed || d.Reset != time.Millisecond {
		t.Fatalf("1ms before the end: %+v", d)
	}
	clk.Add(time.Millisecond)
	if d := m.Begin(ann, clk.Now()); !d.Allowed || d.Remaining != 4 || d.Reset != time.Minute {
		t.Fatalf("new window: %+v", d)
	}
}

func TestThresholdsOncePerWindow(t *testing.T) {
	clk := newClock()
	m := newMeter(t, clk, Config{Limit: 10, Window: time.Hour})
	ann := Caller{TokenID: 7, UserID: 3, User: "ann"}
	levels := func() []int {
		var out []int
		for _, th := range m.Thresholds() {
			out = append(out, th.Percent)
		}
		return out
	}
	for range 7 {
		m.Begin(ann, clk.Now())
	}
	if l := levels(); len(l) != 0 {
		t.Fatalf("below 80%%: %v", l)
	}
	m.Begin(ann, clk.Now()) // 8 of 10
	select {
	case <-m.ThresholdsReady():
	default:
		t.Fatal("not signalled")
	}
	ths := m.Thresholds()
	if len(ths) != 1 || ths[0].Percent != 80 || ths[0].Used != 8 || ths[0].Limit != 10 || ths[0].UserID != 3 || ths[0].TokenID != 7 ||
		!ths[0].WindowStart.Equal(clk.Now()) {
		t.Fatalf("80%%: %+v", ths)
	}
	ev := ths[0].Event()
	if ev.Type != "usage-threshold" || ev.ID != ths[0].Event().ID || ev.ID == "" || !ev.Time.Equal(clk.Now()) {
		t.Fatalf("event %+v", ev)
	}
	m.Begin(ann, clk.Now())
	if l := levels(); len(l) != 0 {
		t.Fatalf("at 90%%: %v", l)
	}
	m.Begin(ann, clk.Now()) // 10 of 10
	for range 5 {
		m.Begin(ann, clk.Now()) // refused
	}
	if l := levels(); len(l) != 1 || l[0] != 100 {
		t.Fatalf("at 100%% and over: %v", l)
	}
	// The next window crosses again, with other event ids.
	clk.Add(time.Hour)
	for range 10 {
		m.Begin(ann, clk.Now())
	}
	ths = m.Thresholds()
	if len(ths) != 2 || ths[0].Percent != 80 || ths[1].Percent != 100 || ths[0].Event().ID == ev.ID {
		t.Fatalf("next window: %+v", ths)
	}
	// A limit of 1 crosses both at once.
	m1 := newMeter(t, clk, Config{Limit: 1})
	m1.Begin(ann, clk.Now())
	if ths := m1.Thresholds(); len(ths) != 2 || ths[0].Percent != 80 || ths[1].Percent != 100 || ths[0].Event().ID == ths[1].Event().ID {
		t.Fatalf("limit 1: %+v", ths)
	}
}

// TestConcurrentLimit hammers one token from many goroutines: exactly the
// limit is allowed, and each level is crossed exactly once.
func TestConcurrentLimit(t *testing.T) {
	clk := newClock()
	m := newMeter(t, clk, Config{Limit: 1000, Window: time.Hour})
	var allowed atomic.Int64
	var wg sync.WaitGroup
	route := m.Route("GET", "/api/v1/user")
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 300 {
				d := m.Begin(Caller{TokenID: 1, UserID: 1, User: "ann"}, clk.Now())
				if d.Allowed {
					allowed.Add(1)
				}
				m.End(d, route, 200, time.Millisecond)
			}
		}()
	}
	wg.Wait()
	if allowed.Load() != 1000 {
		t.Fatalf("allowed %d of 2400, limit 1000", allowed.Load())
	}
	ths := m.Thresholds()
	if len(ths) != 2 || ths[0].Percent != 80 || ths[1].Percent != 100 {
		t.Fatalf("thresholds: %+v", ths)
	}
	acts := m.Activity(clk.Now())
	if len(acts) != 1 || acts[0].Requests != 2400 || acts[0].Remaining != 0 {
		t.Fatalf("activity: %+v", acts)
	}
}

func TestRoutes(t *testing.T) {
	m := newMeter(t, newClock(), Config{})
	a := m.Route("GET", "/api/v1/projects/:name")
	b := m.Route("POST", "/api/v1/projects/:name")
	if a == b || a == 0 || m.Route("GET", "/api/v1/projects/:name") != a {
		t.Fatalf("ids %d %d", a, b)
	}
	if m.routeName(a) != "GET /api/v1/projects/:name" || m.routeName(m.Route("GET", "")) != "GET (unmatched)" || m.routeName(999) != OtherRoute {
		t.Fatal("names")
	}
	// Beyond MaxRoutes, routes share OtherRoute.
	m.maxRoutes = 40
	for i := range 40 {
		m.Route("GET", "/r/"+string(rune('a'+i%26))+string(rune('a'+i/26)))
	}
	if id := m.Route("GET", "/one/too/many"); id != 0 || m.routeName(id) != OtherRoute {
		t.Fatalf("over MaxRoutes: %d", id)
	}
}

func TestFormatWindow(t *testing.T) {
	for d, want := range map[time.Duration]string{time.Minute: "1m", time.Hour: "1h", 90 * time.Minute: "1h30m", 45 * time.Second: "45s", 90 * time.Second: "1m30s", 24 * time.Hour: "24h"} {
		if got := FormatWindow(d); got != want {
			t.Errorf("%s: %q, want %q", d, got, want)
		}
	}
}
