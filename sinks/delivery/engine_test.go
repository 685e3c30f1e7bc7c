package delivery_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/sinks/delivery"
	"github.com/buildbridge/buildbridge/store"
)

// A receiver that fails three times, then succeeds: one success, four
// attempts logged, the schedule followed on the test clock, one message
// id, every signature valid.
func TestRetriesFollowTheSchedule(t *testing.T) {
	r := newReceiver(t)
	r.setAnswer(func(n int, _ received) (int, http.Header) {
		if n < 3 {
			return 503, nil
		}
		return 200, nil
	})
	h := newHarness(t, "", true, []*sinks.Config{sinkConfig(t, "hook", r.srv.URL, "")}, nil)
	h.start()
	ev := buildEvent(1, 1, builds.Queued)
	t0 := h.clock.Now()
	h.enqueue(to(ev, "hook", r.srv.URL))

	// Jitter at its low end (Rand 0): 5s, 5m and 30m less 20%.
	for i, wantDelay := range []time.Duration{4 * time.Second, 4 * time.Minute, 24 * time.Minute} {
		r.wait(i+1, 5*time.Second)
		d := h.waitRow("hook", ev.ID, 5*time.Second, func(d store.SinkDelivery) bool { return d.Attempts == i+1 })
		now := h.clock.Now()
		if d.Status != store.DeliveryPending || d.NextAt == nil || !d.NextAt.Equal(now.Add(wantDelay)) || d.LastCode != 503 {
			t.Fatalf("after attempt %d: %+v, want next attempt at now+%s", i+1, d, wantDelay)
		}
		// Nothing happens before the due time.
		h.clock.Advance(wantDelay - time.Second)
		time.Sleep(30 * time.Millisecond)
		if n := len(r.got()); n != i+1 {
			t.Fatalf("attempt %d made before its due time", n)
		}
		h.clock.Advance(time.Second)
	}
	got := r.wait(4, 5*time.Second)
	d := h.waitRow("hook", ev.ID, 5*time.Second, func(d store.SinkDelivery) bool { return d.Status == store.DeliverySucceeded })
	if d.Attempts != 4 || d.FinishedAt == nil {
		t.Fatalf("final: %+v", d)
	}
	atts := h.attempts(d.ID)
	successes := 0
	for i, a := range atts {
		if a.Outcome == store.OutcomeSuccess {
			successes++
		}
		if i < 3 && (a.Outcome != store.OutcomeRetry || a.StatusCode != 503) {
			t.Errorf("attempt %d: %+v", i+1, a)
		}
	}
	if len(atts) != 4 || successes != 1 || atts[3].StatusCode != 200 {
		t.Fatalf("attempts: %+v", atts)
	}
	if want := t0.Add(4*time.Second + 4*time.Minute + 24*time.Minute); !atts[3].Time.Equal(want) {
		t.Fatalf("last attempt at %s, want %s", atts[3].Time, want)
	}
	for _, g := range got {
		if g.id != got[0].id || !strings.HasPrefix(g.id, "msg_") || g.id != d.MessageID {
			t.Fatalf("message ids differ across retries: %q %q (stored %q)", g.id, got[0].id, d.MessageID)
		}
		if g.ev.ID != ev.ID {
			t.Fatalf("body: %s", g.body)
		}
	}
	if len(got) != 4 {
		t.Fatalf("%d requests", len(got))
	}
	lab := map[string]string{"sink": "hook", "target": r.srv.URL}
	if v := h.metric("buildbridge_delivery_attempts_total", lab); v != 4 {
		t.Errorf("attempts metric %v", v)
	}
	if v := h.metric("buildbridge_delivery_successes_total", lab); v != 1 {
		t.Errorf("successes metric %v", v)
	}
	if v := h.metric("buildbridge_delivery_failures_total", map[string]string{"sink": "hook", "kind": "temporary"}); v != 3 {
		t.Errorf("failures metric %v", v)
	}
	if v := h.metric("buildbridge_delivery_pending", lab); v != 0 {
		t.Errorf("pending metric %v", v)
	}
	if v := h.metric("buildbridge_delivery_attempt_duration_seconds", lab); v != 4 {
		t.Errorf("latency samples %v", v)
	}
}

// The last attempt of the schedule fails the delivery (the dead letter);
// a redelivery starts a new round with the same message id.
func TestScheduleEndsInTheDeadLetterAndRedeliveryRestarts(t *testing.T) {
	r := newReceiver(t)
	r.setAnswer(func(int, received) (int, http.Header) { return 500, nil })
	h := newHarness(t, "", true, []*sinks.Config{sinkConfig(t, "hook", r.srv.URL, "retry_schedule: [0s, 1m, 1m]\n")}, nil)
	h.start()
	ev := buildEvent(1, 1, builds.Queued)
	h.enqueue(to(ev, "hook", r.srv.URL))
	for i := 1; i <= 3; i++ {
		r.wait(i, 5*time.Second)
		h.waitRow("hook", ev.ID, 5*time.Second, func(d store.SinkDelivery) bool { return d.Attempts == i })
		h.clock.Advance(time.Minute)
	}
	d := h.waitRow("hook", ev.ID, 5*time.Second, func(d store.SinkDelivery) bool { return d.Status == store.DeliveryFailed })
	if a := h.attempts(d.ID); len(a) != 3 || a[2].Outcome != store.OutcomeFailed {
		t.Fatalf("attempts: %+v", a)
	}
	if v := h.metric("buildbridge_delivery_pending", map[string]string{"sink": "hook"}); v != 0 {
		t.Fatalf("pending after the dead letter: %v", v)
	}
	r.setAnswer(func(int, received) (int, http.Header) { return 200, nil })
	if _, err := h.e.Redeliver(context.Background(), d.ID); err != nil {
		t.Fatal(err)
	}
	got := r.wait(4, 5*time.Second)
	d = h.waitRow("hook", ev.ID, 5*time.Second, func(d store.SinkDelivery) bool { return d.Status == store.DeliverySucceeded })
	if d.Attempts != 4 || got[3].id != got[0].id {
		t.Fatalf("redelivery: %+v ids %s %s", d, got[3].id, got[0].id)
	}
	if _, err := h.e.Redeliver(context.Background(), 987654); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("redeliver missing: %v", err)
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	r := newReceiver(t)
	r.setAnswer(func(n int, _ received) (int, http.Header) {
		switch n {
		case 0:
			return 429, http.Header{"Retry-After": {"3"}}
		case 1:
			return 503, http.Header{"Retry-After": {"86400"}} // clamped to an hour
		}
		return 200, nil
	})
	h := newHarness(t, "", true, []*sinks.Config{sinkConfig(t, "hook", r.srv.URL, "")}, nil)
	h.start()
	ev := buildEvent(1, 1, builds.Queued)
	h.enqueue(to(ev, "hook", r.srv.URL))
	r.wait(1, 5*time.Second)
	d := h.waitRow("hook", ev.ID, 5*time.Second, func(d store.SinkDelivery) bool { return d.Attempts == 1 })
	if !d.NextAt.Equal(h.clock.Now().Add(3 * time.Second)) {
		t.Fatalf("Retry-After 3 not honoured: next at %s, now %s", d.NextAt, h.clock.Now())
	}
	h.clock.Advance(3 * time.Second)
	r.wait(2, 5*time.Second)
	d = h.waitRow("hook", ev.ID, 5*time.Second, func(d store.SinkDelivery) bool { return d.Attempts == 2 })
	if !d.NextAt.Equal(h.clock.Now().Add(time.Hour)) {
		t.Fatalf("Retry-After of a day not clamped to an hour: next at %s, now %s", d.NextAt, h.clock.Now())
	}
	h.clock.Advance(time.Hour)
	r.wait(3, 5*time.Second)
	h.waitRow("hook", ev.ID, 5*time.Second, func(d store.SinkDelivery) bool { return d.Status == store.DeliverySucceeded })
}

func TestPermanentErrorFailsAtOnce(t *testing.T) {
	r := newReceiver(t)
	r.setAnswer(func(int, received) (int, http.Header) { return 422, nil })
	h := newHarness(t, "", true, []*sinks.Config{sinkConfig(t, "hook", r.srv.URL, "")}, nil)
	h.start()
	ev := buildEvent(1, 1, builds.Queued)
	h.enqueue(to(ev, "hook", r.srv.URL))
	d := h.waitRow("hook", ev.ID, 5*time.Second, func(d store.SinkDelivery) bool { return d.Status == store.DeliveryFailed })
	a := h.attempts(d.ID)
	if len(a) != 1 || a[0].Outcome != store.OutcomePermanent || d.NextAt != nil {
		t.Fatalf("permanent: %+v %+v", d, a)
	}
	h.clock.Advance(24 * time.Hour)
	time.Sleep(30 * time.Millisecond)
	if n := len(r.got()); n != 1 {
		t.Fatalf("a permanent failure was retried: %d requests", n)
	}
}

// 410 disables the endpoint at once: its queued deliveries fail, new
// ones fail without an attempt, an endpoint-disabled event is emitted, and
// redelivery waits for the endpoint to be enabled.
func TestGoneDisablesTheEndpoint(t *testing.T) {
	r := newReceiver(t)
	release := make(chan struct{})
	r.setAnswer(func(n int, _ received) (int, http.Header) {
		<-release
		return 410, nil
	})
	other := newReceiver(t)
	h := newHarness(t, "", true, []*sinks.Config{
		sinkConfig(t, "hook", r.srv.URL, "concurrency: 1\n"), sinkConfig(t, "other", other.srv.URL, ""),
	}, nil)
	h.start()
	e1, e2 := buildEvent(1, 1, builds.Queued), buildEvent(2, 1, builds.Queued)
	h.enqueue(to(e1, "hook", r.srv.URL), to(e1, "other", other.srv.URL))
	h.enqueue(to(e2, "hook", r.srv.URL)) // queued behind e1 (concurrency 1)
	r.wait(1, 5*time.Second)
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, _ := h.store.ListSinkDeliveries(context.Background(), store.SinkDeliveryFilter{Sink: "hook", Status: store.DeliveryFailed})
		if len(l) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("deliveries of a gone endpoint not failed: %+v", l)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := len(r.got()); n != 1 {
		t.Fatalf("%d requests to a gone endpoint, want 1", n)
	}
	l, _ := h.store.ListSinkDeliveries(context.Background(), store.SinkDeliveryFilter{EventID: e2.ID})
	if len(l) != 1 || !strings.Contains(l[0].LastError, "endpoint disabled") || l[0].Attempts != 0 {
		t.Fatalf("queued delivery: %+v", l)
	}
	eps, _ := h.store.SinkEndpoints(context.Background(), "hook")
	if len(eps) != 1 || eps[0].DisabledAt == nil || !strings.Contains(eps[0].Reason, "410") {
		t.Fatalf("endpoint: %+v", eps)
	}
	h.mu.Lock()
	emitted := append([]event.Envelope(nil), h.emitted...)
	h.mu.Unlock()
	if len(emitted) != 1 || emitted[0].Type != event.TypeEndpointDisabled || emitted[0].ID != eps[0].EventID ||
		!strings.Contains(string(emitted[0].Data), `"sink":"hook"`) || !strings.Contains(string(emitted[0].Data), `"sink_type":"webhook"`) {
		t.Fatalf("emitted: %+v", emitted)
	}
	waitFor(t, func() bool {
		eps, _ := h.store.SinkEndpoints(context.Background(), "hook")
		return eps[0].NotifiedAt != nil
	})
	if v := h.metric("buildbridge_delivery_endpoint_disabled", map[string]string{"sink": "hook"}); v != 1 {
		t.Fatalf("disabled metric %v", v)
	}
	// The other sink was not affected.
	other.wait(1, 5*time.Second)

	// A new event: failed at once, no request.
	e3 := buildEvent(3, 1, builds.Queued)
	h.enqueue(to(e3, "hook", r.srv.URL))
	if d := h.row("hook", e3.ID); d.Status != store.DeliveryFailed || d.Attempts != 0 {
		t.Fatalf("delivery to a disabled endpoint: %+v", d)
	}
	if _, err := h.e.Redeliver(context.Background(), h.row("hook", e3.ID).ID); !errors.Is(err, delivery.ErrEndpointDisabled) {
		t.Fatalf("redeliver to a disabled endpoint: %v", err)
	}
	// Enabled again (the receiver is back): recover what failed.
	r.setAnswer(func(int, received) (int, http.Header) { return 200, nil })
	if err := h.e.EnableEndpoint(context.Background(), "hook", r.srv.URL); err != nil {
		t.Fatal(err)
	}
	rec, err := h.e.Recover(context.Background(), "hook", h.clock.Now().Add(-time.Hour), 0)
	if err != nil || len(rec) != 3 {
		t.Fatalf("recover: %d %v", len(rec), err)
	}
	r.wait(4, 5*time.Second)
	for _, ev := range []event.Envelope{e1, e2, e3} {
		h.waitRow("hook", ev.ID, 5*time.Second, func(d store.SinkDelivery) bool { return d.Status == store.DeliverySucceeded })
	}
}

// An endpoint that fails without a success for DisableAfter is disabled.
func TestFailingTooLongDisables(t *testing.T) {
	r := newReceiver(t)
	r.setAnswer(func(int, received) (int, http.Header) { return 503, nil })
	h := newHarness(t, "", true, []*sinks.Config{sinkConfig(t, "hook", r.srv.URL,
		"retry_schedule: [0s, 20m, 20m, 20m, 20m, 20m]\ndisable_after: 1h\n")}, nil)
	h.start()
	ev := buildEvent(1, 1, builds.Queued)
	t0 := h.clock.Now()
	h.enqueue(to(ev, "hook", r.srv.URL))
	for i := 1; ; i++ {
		r.wait(i, 5*time.Second)
		d := h.waitRow("hook", ev.ID, 5*time.Second, func(d store.SinkDelivery) bool { return d.Attempts == i })
		failingFor := h.clock.Now().Sub(t0)
		eps, _ := h.store.SinkEndpoints(context.Background(), "hook")
		if len(eps) != 1 || eps[0].FailingSince == nil || !eps[0].FailingSince.Equal(t0) {
			t.Fatalf("after %d failures: %+v", i, eps)
		}
		if failingFor < time.Hour {
			if eps[0].DisabledAt != nil || d.Status != store.DeliveryPending {
				t.Fatalf("disabled after failing for %s: %+v", failingFor, eps[0])
			}
			h.clock.Advance(20 * time.Minute)
			continue
		}
		d = h.waitRow("hook", ev.ID, 5*time.Second, func(d store.SinkDelivery) bool { return d.Status == store.DeliveryFailed })
		// The attempt's record is written before the endpoint is disabled.
		deadline := time.Now().Add(5 * time.Second)
		for eps, _ = h.store.SinkEndpoints(context.Background(), "hook"); eps[0].DisabledAt == nil && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
			eps, _ = h.store.SinkEndpoints(context.Background(), "hook")
		}
		if eps[0].DisabledAt == nil || !strings.Contains(eps[0].Reason, "failing without a success since") {
			t.Fatalf("not disabled after failing for %s: %+v (delivery %+v)", failingFor, eps, d)
		}
		break
	}
	waitFor(t, func() bool { h.mu.Lock(); defer h.mu.Unlock(); return len(h.emitted) == 1 })
}

// A down endpoint (hanging) does not delay another endpoint's
// deliveries, and holds no more attempts than its concurrency.
func TestDownEndpointDoesNotDelayOthers(t *testing.T) {
	down, up := newReceiver(t), newReceiver(t)
	down.setAnswer(func(int, received) (int, http.Header) {
		<-down.hold
		return 200, nil
	})
	h := newHarness(t, "", false, []*sinks.Config{
		sinkConfig(t, "down", down.srv.URL, "concurrency: 2\ntimeout: 30s\n"), sinkConfig(t, "up", up.srv.URL, ""),
	}, nil)
	h.start()
	const n = 30
	start := time.Now()
	for i := int64(1); i <= n; i++ {
		ev := buildEvent(i, 1, builds.Queued)
		h.enqueue(to(ev, "down", down.srv.URL), to(ev, "up", up.srv.URL))
	}
	up.wait(n, 10*time.Second)
	took := time.Since(start)
	for i := int64(1); i <= n; i++ {
		h.waitRow("down", buildEvent(i, 1, "").ID, 5*time.Second, func(d store.SinkDelivery) bool { return true })
	}
	l, _ := h.store.ListSinkDeliveries(context.Background(), store.SinkDeliveryFilter{Sink: "up", Status: store.DeliverySucceeded, Limit: 100})
	if len(l) != n {
		waitFor(t, func() bool {
			l, _ = h.store.ListSinkDeliveries(context.Background(), store.SinkDeliveryFilter{Sink: "up", Status: store.DeliverySucceeded, Limit: 100})
			return len(l) == n
		})
	}
	// The down endpoint's attempts hang for 30s; the up endpoint's
	// deliveries are done long before (about 0.3s; 10s under any load).
	if took > 10*time.Second {
		t.Fatalf("the up endpoint took %s for %d deliveries while the other hung", took, n)
	}
	down.mu.Lock()
	inDown := len(down.reqs)
	maxIn := down.maxIn
	down.mu.Unlock()
	if inDown != 2 || maxIn != 2 {
		t.Fatalf("the hanging endpoint got %d requests (%d at once), want its concurrency, 2", inDown, maxIn)
	}
	t.Logf("%d deliveries to the up endpoint in %s while the down one hung with %d attempts", n, took.Round(time.Millisecond), inDown)
	if v := h.metric("buildbridge_delivery_pending", map[string]string{"sink": "down"}); v != n {
		t.Fatalf("pending to the down endpoint: %v", v)
	}
}

// Within a target, a build's events arrive in seq order, even when one
// needs a retry; other builds do not wait for it.
func TestOrderPerBuildWithoutBlockingOtherBuilds(t *testing.T) {
	r := newReceiver(t)
	var mu sync.Mutex
	failed := false
	r.setAnswer(func(n int, rec received) (int, http.Header) {
		mu.Lock()
		defer mu.Unlock()
		if rec.ev.Build != nil && rec.ev.Build.ID == 1 && rec.ev.Seq == 1 && !failed {
			failed = true
			return 503, nil
		}
		time.Sleep(time.Duration(n%3) * time.Millisecond)
		return 200, nil
	})
	h := newHarness(t, "", true, []*sinks.Config{sinkConfig(t, "hook", r.srv.URL, "retry_schedule: [0s, 1m]\nconcurrency: 8\n")}, nil)
	h.start()
	const nb, ne = 5, 6
	var all []sinks.Delivery
	for s := int64(1); s <= ne; s++ {
		for b := int64(1); b <= nb; b++ {
			all = append(all, to(buildEvent(b, s, builds.Started), "hook", r.srv.URL))
		}
	}
	for i := 0; i < len(all); i += 7 {
		h.enqueue(all[i:min(i+7, len(all))]...)
	}
	// Every other build completes while build 1 waits for its retry.
	others := (nb - 1) * ne
	got := r.wait(others+1, 10*time.Second)
	time.Sleep(50 * time.Millisecond)
	if n := len(r.got()); n != others+1 {
		t.Fatalf("%d requests before build 1's retry, want %d: %v", n, others+1, order(r.got()))
	}
	for _, g := range got {
		if g.ev.Build.ID == 1 && g.ev.Seq != 1 {
			t.Fatalf("build 1's seq %d sent before its seq 1 succeeded: %v", g.ev.Seq, order(got))
		}
	}
	h.clock.Advance(time.Minute)
	got = r.wait(nb*ne+1, 10*time.Second)
	last := map[int64]int64{}
	for _, g := range got {
		b, s := g.ev.Build.ID, g.ev.Seq
		if s < last[b] {
			t.Fatalf("build %d: seq %d after %d: %v", b, s, last[b], order(got))
		}
		last[b] = s
	}
	for b := int64(1); b <= nb; b++ {
		if last[b] != ne {
			t.Fatalf("build %d ended at seq %d: %v", b, last[b], order(got))
		}
	}
}

func order(got []received) []string {
	var out []string
	for _, g := range got {
		out = append(out, g.ev.ID)
	}
	return out
}

// Retries survive a restart: a new engine on the same store attempts
// what was scheduled, with the same message id, and what was never
// attempted.
func TestRestartResumesPendingDeliveries(t *testing.T) {
	r := newReceiver(t)
	r.setAnswer(func(int, received) (int, http.Header) { return 503, nil })
	dir := t.TempDir()
	cfgs := []*sinks.Config{sinkConfig(t, "hook", r.srv.URL, "")}
	h := newHarness(t, dir, true, cfgs, nil)
	h.start()
	e1 := buildEvent(1, 1, builds.Queued)
	h.enqueue(to(e1, "hook", r.srv.URL))
	first := r.wait(1, 5*time.Second)
	h.waitRow("hook", e1.ID, 5*time.Second, func(d store.SinkDelivery) bool { return d.Attempts == 1 })
	h.e.Close()
	// Persisted but never attempted: enqueued on a closed engine.
	e2 := buildEvent(2, 1, builds.Queued)
	h.enqueue(to(e2, "hook", r.srv.URL))
	h.store.Close()

	r.setAnswer(func(int, received) (int, http.Header) { return 200, nil })
	h2 := newHarness(t, dir, true, []*sinks.Config{sinkConfig(t, "hook", r.srv.URL, "")}, nil)
	h2.start()
	got := r.wait(2, 5*time.Second) // e2 at once; e1 is due in 4s
	if got[1].ev.ID != e2.ID {
		t.Fatalf("after the restart, first %s", got[1].ev.ID)
	}
	h2.clock.Advance(4 * time.Second)
	got = r.wait(3, 5*time.Second)
	if got[2].id != first[0].id || got[2].ev.ID != e1.ID {
		t.Fatalf("the retry after a restart has id %s, first attempt %s", got[2].id, first[0].id)
	}
	d := h2.waitRow("hook", e1.ID, 5*time.Second, func(d store.SinkDelivery) bool { return d.Status == store.DeliverySucceeded })
	if d.Attempts != 2 {
		t.Fatalf("attempts after restart: %+v", d)
	}
}

func TestEnqueueIsIdempotentAndSkipsUnimplementedTypes(t *testing.T) {
	r := newReceiver(t)
	spec := sinks.Type{Name: "test-unimplemented", Settings: []sinks.Setting{{Name: "x", Kind: sinks.KindString}}}
	sinks.Register(spec)
	tp, _ := sinks.Lookup("test-unimplemented")
	noImpl, errs := tp.Decode("later", mapping(t, "type: test-unimplemented\n"), &sinks.Resolver{})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	h := newHarness(t, "", false, []*sinks.Config{sinkConfig(t, "hook", r.srv.URL, ""), noImpl}, nil)
	h.start()
	ev := buildEvent(1, 1, builds.Queued)
	skipped := sinks.Delivery{EventID: ev.ID, Event: ev, Sink: "later", SinkType: "test-unimplemented", Target: "default", Body: []byte("x")}
	for i := 0; i < 3; i++ { // a redelivered event
		h.enqueue(to(ev, "hook", r.srv.URL), skipped)
	}
	r.wait(1, 5*time.Second)
	time.Sleep(50 * time.Millisecond)
	if n := len(r.got()); n != 1 {
		t.Fatalf("%d requests for one event enqueued three times", n)
	}
	l, _ := h.store.ListSinkDeliveries(context.Background(), store.SinkDeliveryFilter{EventID: ev.ID})
	if len(l) != 1 || l[0].Sink != "hook" {
		t.Fatalf("stored: %+v", l)
	}
	if n := strings.Count(h.logText(), "no implementation"); n != 1 {
		t.Fatalf("the skip was logged %d times:\n%s", n, h.logText())
	}
	if v := h.metric("buildbridge_delivery_skipped_total", map[string]string{"sink": "later"}); v != 3 {
		t.Fatalf("skipped metric %v", v)
	}
}

// The rate limit spaces attempts to one target on the engine's clock.
func TestRateLimit(t *testing.T) {
	r := newReceiver(t)
	h := newHarness(t, "", true, []*sinks.Config{sinkConfig(t, "hook", r.srv.URL, "rate_limit: 5/s:1\n")}, nil)
	h.start()
	for i := int64(1); i <= 3; i++ {
		h.enqueue(to(buildEvent(i, 1, builds.Queued), "hook", r.srv.URL))
	}
	r.wait(1, 5*time.Second)
	time.Sleep(30 * time.Millisecond)
	if n := len(r.got()); n != 1 {
		t.Fatalf("%d attempts at once with a burst of 1", n)
	}
	h.clock.Advance(200 * time.Millisecond)
	r.wait(2, 5*time.Second)
	time.Sleep(30 * time.Millisecond)
	if n := len(r.got()); n != 2 {
		t.Fatalf("%d attempts after 200ms at 5/s", n)
	}
	h.clock.Advance(200 * time.Millisecond)
	r.wait(3, 5*time.Second)
}

func TestConfigureReportsBrokenSinksAndKeepsOthers(t *testing.T) {
	r := newReceiver(t)
	h := newHarness(t, "", false, nil, func(c *delivery.Config) {
		c.NewSink = func(c *sinks.Config) (sinks.Sink, error) {
			if c.Name == "broken" {
				return nil, errors.New("cannot make it")
			}
			return newSink(c)
		}
	})
	err := h.e.Configure([]*sinks.Config{sinkConfig(t, "hook", r.srv.URL, ""), sinkConfig(t, "broken", r.srv.URL, "")})
	if err == nil || !strings.Contains(err.Error(), "cannot make it") {
		t.Fatalf("configure: %v", err)
	}
	h.start()
	ev := buildEvent(1, 1, builds.Queued)
	h.enqueue(to(ev, "hook", r.srv.URL), to(ev, "broken", r.srv.URL+"/b"))
	r.wait(1, 5*time.Second)
	waitFor(t, func() bool {
		l, _ := h.store.ListSinkDeliveries(context.Background(), store.SinkDeliveryFilter{Sink: "broken"})
		return len(l) == 1 && l[0].Attempts == 1 && strings.Contains(l[0].LastError, "cannot make it") && l[0].Status == store.DeliveryPending
	})
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestOldDeliveriesArePruned: once past the retention, finished
// deliveries go from the store with their attempts; a pending one stays.
func TestOldDeliveriesArePruned(t *testing.T) {
	ok, bad := newReceiver(t), newReceiver(t)
	bad.setAnswer(func(int, received) (int, http.Header) { return 503, nil })
	h := newHarness(t, "", false, []*sinks.Config{sinkConfig(t, "hook", ok.srv.URL, ""), sinkConfig(t, "bad", bad.srv.URL, "")},
		func(c *delivery.Config) {
			c.Retention, c.PruneInterval, c.ResyncInterval = time.Minute, 20*time.Millisecond, 20*time.Millisecond
		})
	h.start()
	evs := []event.Envelope{buildEvent(1, 1, builds.Queued), buildEvent(1, 2, builds.Started), buildEvent(1, 3, builds.Finished)}
	for _, ev := range evs {
		h.enqueue(to(ev, "hook", ok.srv.URL))
	}
	stuck := buildEvent(2, 1, builds.Queued)
	h.enqueue(to(stuck, "bad", bad.srv.URL))
	var ids []int64
	for _, ev := range evs {
		ids = append(ids, h.waitRow("hook", ev.ID, 5*time.Second, func(d store.SinkDelivery) bool { return d.Status == store.DeliverySucceeded }).ID)
	}
	h.waitRow("bad", stuck.ID, 5*time.Second, func(d store.SinkDelivery) bool { return d.Attempts >= 1 })
	if l, _ := h.store.ListSinkDeliveries(context.Background(), store.SinkDeliveryFilter{Sink: "hook"}); len(l) != 3 {
		t.Fatalf("pruned within the retention: %d deliveries left", len(l))
	}

	// Two minutes older, as if time had passed.
	if _, err := h.store.SQL().Exec(`UPDATE deliveries SET created_at = created_at - 120000`); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := h.store.ListSinkDeliveries(context.Background(), store.SinkDeliveryFilter{Sink: "hook"})
		if err != nil {
			t.Fatal(err)
		}
		if len(l) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d deliveries past the retention still stored", len(l))
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, id := range ids {
		if a := h.attempts(id); len(a) != 0 {
			t.Fatalf("attempts of pruned delivery %d: %+v", id, a)
		}
	}
	if d := h.row("bad", stuck.ID); d.Status != store.DeliveryPending {
		t.Fatalf("the pending delivery: %+v", d)
	}
	if n := h.metric("buildbridge_delivery_pruned_total", nil); n != 3 {
		t.Fatalf("buildbridge_delivery_pruned_total = %v, want 3", n)
	}
	if !strings.Contains(h.logText(), "old deliveries pruned") {
		t.Fatalf("no log line:\n%s", h.logText())
	}
}
