package usage

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/routes"
	"github.com/buildbridge/buildbridge/store"
)

func TestBuckets(t *testing.T) {
	prev := -1
	for _, us := range []int64{0, 1, 15, 16, 17, 31, 32, 33, 100, 999, 1000, 12345, 1 << 30, 1<<40 - 1} {
		b := bucketOf(us)
		lo, hi := bucketBounds(b)
		if us < lo || us >= hi || b < prev {
			t.Fatalf("%dµs: bucket %d [%d, %d)", us, b, lo, hi)
		}
		if us >= linearBuckets && float64(hi-lo)/float64(lo) > 0.125 {
			t.Fatalf("%dµs: bucket %d [%d, %d) wider than 12.5%%", us, b, lo, hi)
		}
		prev = b
	}
	if b := bucketOf(math.MaxInt64); b != numBuckets-1 {
		t.Fatalf("huge: %d", b)
	}
	for b := 0; b < numBuckets-1; b++ {
		_, hi := bucketBounds(b)
		if lo, _ := bucketBounds(b + 1); lo != hi {
			t.Fatalf("gap after bucket %d", b)
		}
	}
	var h [numBuckets]int64
	for us := int64(1); us <= 1000; us++ {
		h[bucketOf(us*1000)]++ // 1ms … 1s
	}
	for _, c := range []struct{ p, want float64 }{{0.5, 500_000}, {0.95, 950_000}, {0.99, 990_000}} {
		if got := percentile(&h, 1000, c.p); math.Abs(got-c.want)/c.want > 0.07 {
			t.Errorf("p%v: %v, want about %v", c.p, got, c.want)
		}
	}
	if percentile(&h, 0, 0.5) != 0 {
		t.Error("percentile of nothing")
	}
}

func TestActivity(t *testing.T) {
	clk := newClock()
	m := newMeter(t, clk, Config{Limit: 10, Window: time.Minute})
	get, bad := m.Route("GET", "/api/v1/projects"), m.Route("GET", "/api/v1/builds/:id")
	call := func(c Caller, route int32, status int) { m.End(m.Begin(c, clk.Now()), route, status, time.Millisecond) }
	if acts := m.Activity(clk.Now()); len(acts) != 0 {
		t.Fatalf("idle: %+v", acts)
	}
	ann1, ann2 := Caller{TokenID: 1, UserID: 1, User: "ann"}, Caller{TokenID: 2, UserID: 1, User: "ann"}
	for range 4 {
		call(ann1, get, 200)
	}
	call(ann1, bad, 404)
	call(ann2, get, 200)
	call(Caller{TokenID: 3, UserID: 2, User: "bob"}, get, 200)
	clk.Add(10 * time.Second)
	acts := m.Activity(clk.Now())
	if len(acts) != 2 || acts[0].UserID != 1 || acts[1].UserID != 2 {
		t.Fatalf("users: %+v", acts)
	}
	a := acts[0]
	if a.Requests != 6 || a.Errors != 1 || a.User != "ann" || a.Limit != 10 || a.Remaining != 5 || a.Reset != 50 ||
		len(a.Tokens) != 2 || a.Tokens[0].TokenID != 1 || a.Tokens[0].Requests != 5 || a.Tokens[1].Remaining != 9 ||
		len(a.Routes) != 2 || a.Routes[0].Route != "GET /api/v1/projects" || a.Routes[0].Requests != 5 || a.Routes[1].Errors != 1 {
		t.Fatalf("ann: %+v", a)
	}
	ev, err := a.Event(clk.Now(), 5*time.Second)
	if err != nil || ev.Type != event.TypeAPIUsage || !strings.HasPrefix(ev.ID, "evt_apiusage_1_") {
		t.Fatalf("event %+v %v", ev, err)
	}
	var body map[string]any
	json.Unmarshal(ev.Data, &body)
	if body["requests"] != 6.0 || body["errors"] != 1.0 || body["remaining"] != 5.0 || body["interval_seconds"] != 5.0 {
		t.Fatalf("body %s", ev.Data)
	}
	// Reported once: idle since, nothing more.
	if acts := m.Activity(clk.Now()); len(acts) != 0 {
		t.Fatalf("again: %+v", acts)
	}
	// The flush counts are not the activity counts.
	day := clk.Now().Format("2006-01-02")
	rows, err := m.Usage(context.Background(), usageQuery(1, day))
	if err != nil || len(rows) != 2 {
		t.Fatalf("usage after activity: %+v %v", rows, err)
	}
	if n := m.ActiveUsers(clk.Now().Add(-11 * time.Second)); n != 2 {
		t.Fatalf("active users: %d", n)
	}
	if n := m.ActiveUsers(clk.Now()); n != 0 {
		t.Fatalf("active users since now: %d", n)
	}
}

func TestSystemSample(t *testing.T) {
	clk := newClock()
	m := newMeter(t, clk, Config{Limit: 3})
	out := Outside{BuildsFinished: 100, DeliveryFailures: 7, QueueDepth: 4, BuildsRunning: 2, DeliveryBacklog: 9, Connections: 3}
	var outErr error
	s, err := NewSystem(SystemConfig{Meter: m, Now: clk.Now, Outside: func(context.Context) (Outside, error) { return out, outErr }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewSystem(SystemConfig{}); err == nil {
		t.Fatal("a System without a Meter")
	}
	route := m.Route("GET", "/api/v1/user")
	call := func(c Caller, status int, lat time.Duration) {
		d := m.Begin(c, clk.Now())
		if !d.Allowed {
			status = 429
		}
		m.End(d, route, status, lat)
	}
	for i := range 16 {
		call(Caller{TokenID: int64(i + 1), UserID: int64(i%4 + 1)}, 200, time.Duration(i+1)*time.Millisecond)
	}
	call(Caller{TokenID: 1, UserID: 1}, 500, 100*time.Millisecond)
	call(Caller{TokenID: 1, UserID: 1}, 404, time.Millisecond)
	call(Caller{TokenID: 1, UserID: 1}, 200, time.Millisecond) // 4th of limit 3: 429
	out.BuildsFinished, out.DeliveryFailures = 110, 10
	clk.Add(10 * time.Second)
	f, err := s.Sample(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if f.Interval != 10 || f.Requests != 19 || f.RequestRate != 1.9 || f.Errors != 1 || f.ClientErrors != 2 || f.RateLimited != 1 || // 404, 429
		math.Abs(f.ErrorRate-1.0/19) > 1e-9 || math.Abs(f.ClientErrorRate-2.0/19) > 1e-9 || f.ActiveUsers != 4 {
		t.Fatalf("requests: %+v", f)
	}
	if f.LatencyMax != 100 || f.LatencyP50 < 7 || f.LatencyP50 > 9 || f.LatencyP99 != 100 || f.LatencyP95 != 100 {
		t.Fatalf("latency: p50 %v p95 %v p99 %v max %v", f.LatencyP50, f.LatencyP95, f.LatencyP99, f.LatencyMax)
	}
	if f.BuildsPerMinute != 60 || f.DeliveryFailures != 3 || f.DeliveryFailuresPerMinute != 18 || f.QueueDepth != 4 ||
		f.BuildsRunning != 2 || f.DeliveryBacklog != 9 || f.Connections != 3 {
		t.Fatalf("outside: %+v", f)
	}
	// A quiet interval, a counter restarted, the outside failing.
	clk.Add(5 * time.Second)
	out.BuildsFinished = 2
	outErr = errors.New("store down")
	f, err = s.Sample(context.Background())
	if err == nil || f.Requests != 0 || f.LatencyMax != 0 || f.ErrorRate != 0 || f.BuildsPerMinute != 0 || f.QueueDepth != 4 || f.ActiveUsers != 0 {
		t.Fatalf("quiet, outside down: %+v %v", f, err)
	}
	outErr = nil
	clk.Add(5 * time.Second)
	if f, _ = s.Sample(context.Background()); f.BuildsPerMinute != 24 {
		t.Fatalf("after a counter restart: %+v", f)
	}
}

func parseAlerts(t *testing.T, src string) []*routes.Alert {
	t.Helper()
	r, err := routes.Parse("rules.yaml", []byte(src), routes.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return r.Alerts()
}

func TestEvaluator(t *testing.T) {
	alerts := parseAlerts(t, `
alerts:
  - name: errors
    if: error_rate > 0.05
    for: 1m
    severity: critical
    summary: API errors
  - name: queue
    if: queue_depth > 100
`)
	e := NewEvaluator(nil)
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(sec int, errRate float64, queue int64) Figures {
		return Figures{Time: t0.Add(time.Duration(sec) * time.Second), ErrorRate: errRate, QueueDepth: queue}
	}
	kinds := func(evs []event.Envelope) string {
		var s []string
		for _, ev := range evs {
			var b alertBody
			json.Unmarshal(ev.Data, &b)
			s = append(s, ev.Type+":"+b.Alert)
		}
		return strings.Join(s, " ")
	}
	if evs := e.Evaluate(alerts, at(0, 0.1, 101)); kinds(evs) != "system-alert:queue" {
		t.Fatalf("t=0: %s", kinds(evs))
	}
	for sec := 5; sec < 60; sec += 5 {
		if evs := e.Evaluate(alerts, at(sec, 0.1, 101)); len(evs) != 0 {
			t.Fatalf("t=%d: %s", sec, kinds(evs))
		}
	}
	evs := e.Evaluate(alerts, at(60, 0.1, 101))
	if kinds(evs) != "system-alert:errors" {
		t.Fatalf("t=60: %s", kinds(evs))
	}
	var b alertBody
	json.Unmarshal(evs[0].Data, &b)
	if b.Severity != "critical" || b.Summary != "API errors" || b.Condition != "error_rate > 0.05" || b.ForSeconds != 60 ||
		!b.Since.Equal(t0) || b.Figures.ErrorRate != 0.1 || b.FiredAt != nil {
		t.Fatalf("alert body %+v", b)
	}
	firing := evs[0].ID
	if got := e.Firing(); strings.Join(got, ",") != "errors,queue" {
		t.Fatalf("firing %v", got)
	}
	// Still holding: nothing new. Then errors recover.
	if evs := e.Evaluate(alerts, at(65, 0.2, 101)); len(evs) != 0 {
		t.Fatalf("still: %s", kinds(evs))
	}
	evs = e.Evaluate(alerts, at(70, 0.01, 101))
	if kinds(evs) != "system-recovered:errors" {
		t.Fatalf("recovery: %s", kinds(evs))
	}
	json.Unmarshal(evs[0].Data, &b)
	if *b.DurationSeconds != 10 || b.Reason == "" || !b.FiredAt.Equal(t0.Add(time.Minute)) ||
		strings.TrimPrefix(evs[0].ID, "evt_recovered_") != strings.TrimPrefix(firing, "evt_alert_") {
		t.Fatalf("recovered %+v, ids %s %s", b, evs[0].ID, firing)
	}
	// A run that breaks before for: never fires.
	e.Evaluate(alerts, at(100, 0.1, 101))
	e.Evaluate(alerts, at(130, 0.01, 101))
	if evs := e.Evaluate(alerts, at(170, 0.1, 101)); len(evs) != 0 {
		t.Fatalf("broken run: %s", kinds(evs))
	}
	// The rules change: queue's condition changes, and it recovers;
	// errors is removed.
	changed := parseAlerts(t, `
alerts:
  - name: queue
    if: queue_depth > 1000
`)
	if evs := e.Evaluate(changed, at(175, 0.1, 101)); kinds(evs) != "system-recovered:queue" {
		t.Fatalf("changed: %s", kinds(evs))
	}
	e.Evaluate(alerts, at(180, 0.1, 101)) // errors is back, starts over
	if got := e.Firing(); strings.Join(got, ",") != "queue" {
		t.Fatalf("firing %v", got)
	}
	if evs := e.Evaluate(nil, at(185, 0.1, 101)); kinds(evs) != "system-recovered:queue" {
		t.Fatalf("removed: %s", kinds(evs))
	}
	if got := e.Firing(); len(got) != 0 {
		t.Fatalf("firing after removal %v", got)
	}
	// Ids are safe whatever the name.
	if k := alertKey("a b/ü"); !strings.HasPrefix(k, "a-b---") || len(k) != 14 || k == alertKey("a b/ö") {
		t.Fatalf("alertKey %q", k)
	}
}

func usageQuery(user int64, day string) store.UsageQuery {
	return store.UsageQuery{UserID: user, From: day, To: day}
}
