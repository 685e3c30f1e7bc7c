package delivery_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"gopkg.in/yaml.v3"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/sinks/delivery"
	"github.com/buildbridge/buildbridge/sinks/webhook"
	"github.com/buildbridge/buildbridge/store"
)

const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

var loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

// fakeClock is a test clock: time moves only when Advance is called, and
// timers fire then.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at      time.Time
	f       func()
	stopped bool
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	t := &fakeTimer{at: c.now.Add(d), f: f}
	due := d <= 0
	if !due {
		c.timers = append(c.timers, t)
	}
	c.mu.Unlock()
	if due {
		f()
	}
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped
		t.stopped = true
		return was
	}
}

// Advance moves the clock and fires the timers that are due, in order.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due, rest []*fakeTimer
	for _, t := range c.timers {
		switch {
		case t.stopped:
		case !t.at.After(c.now):
			due = append(due, t)
		default:
			rest = append(rest, t)
		}
	}
	c.timers = rest
	c.mu.Unlock()
	sort.Slice(due, func(i, j int) bool { return due[i].at.Before(due[j].at) })
	for _, t := range due {
		t.f()
	}
}

// receiver is a loopback webhook endpoint that verifies every request
// with the standard-webhooks library and answers as told.
type receiver struct {
	t   *testing.T
	srv *httptest.Server
	wh  *standardwebhooks.Webhook

	mu       sync.Mutex
	reqs     []received
	answer   func(n int, r received) (int, http.Header)
	inFlight int
	maxIn    int
	notify   chan struct{}
	hold     chan struct{} // closed when the test ends: hanging handlers return
}

type received struct {
	id, ts string
	body   []byte
	ev     event.Envelope
	at     time.Time
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{t: t, notify: make(chan struct{}, 1000), hold: make(chan struct{})}
	r.wh, _ = standardwebhooks.NewWebhook(secret)
	r.answer = func(int, received) (int, http.Header) { return 200, nil }
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(func() { close(r.hold); r.srv.Close() })
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	if err := r.wh.Verify(body, req.Header); err != nil {
		r.t.Errorf("receiver: signature refused by the standard-webhooks library: %v", err)
		w.WriteHeader(400)
		return
	}
	rec := received{id: req.Header.Get("webhook-id"), ts: req.Header.Get("webhook-timestamp"), body: body, at: time.Now()}
	json.Unmarshal(body, &rec.ev)
	r.mu.Lock()
	n := len(r.reqs)
	r.reqs = append(r.reqs, rec)
	answer := r.answer
	r.inFlight++
	r.maxIn = max(r.maxIn, r.inFlight)
	r.mu.Unlock()
	code, h := answer(n, rec)
	r.mu.Lock()
	r.inFlight--
	r.mu.Unlock()
	for k, v := range h {
		w.Header()[k] = v
	}
	w.WriteHeader(code)
	r.notify <- struct{}{}
}

func (r *receiver) setAnswer(f func(n int, rec received) (int, http.Header)) {
	r.mu.Lock()
	r.answer = f
	r.mu.Unlock()
}

func (r *receiver) got() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.reqs...)
}

// wait waits until the receiver has answered n requests in all.
func (r *receiver) wait(n int, within time.Duration) []received {
	r.t.Helper()
	deadline := time.After(within)
	for {
		if g := r.got(); len(g) >= n {
			// The answer is written after the request is counted.
			time.Sleep(5 * time.Millisecond)
			return g
		}
		select {
		case <-r.notify:
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			r.t.Fatalf("receiver: %d requests within %s, want %d", len(r.got()), within, n)
		}
	}
}

// sinkConfig decodes a webhook sink configuration for url.
func sinkConfig(t *testing.T, name, url, extra string) *sinks.Config {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte("type: webhook\nurl: "+url+"\nsecret: "+secret+"\n"+extra), &doc); err != nil {
		t.Fatal(err)
	}
	tp, _ := sinks.Lookup("webhook")
	c, errs := tp.Decode(name, doc.Content[0], &sinks.Resolver{LookupEnv: os.LookupEnv, ReadFile: os.ReadFile})
	if len(errs) > 0 {
		t.Fatalf("sink config: %v", errs)
	}
	return c
}

// newSink makes webhook sinks that may reach loopback.
func newSink(c *sinks.Config) (sinks.Sink, error) {
	if c.Type == "webhook" {
		return webhook.NewSink(c, webhook.Options{Allow: loopback})
	}
	return sinks.New(c)
}

type harness struct {
	t     *testing.T
	store *store.DB
	clock *fakeClock
	reg   *prometheus.Registry
	e     *delivery.Engine
	logs  *lockedWriter

	mu      sync.Mutex
	emitted []event.Envelope
}

// newHarness makes an engine on a fresh SQLite store (or dir's store);
// real time unless fake.
func newHarness(t *testing.T, dir string, fake bool, cfgs []*sinks.Config, mod func(*delivery.Config)) *harness {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	s, err := store.Open(context.Background(), store.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, store: s, reg: prometheus.NewRegistry(), logs: &lockedWriter{w: &bytes.Buffer{}}}
	cfg := delivery.Config{Store: s, NewSink: newSink, Registerer: h.reg, ShutdownGrace: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(h.logs, nil)),
		Emit: func(ctx context.Context, ev event.Envelope) error {
			h.mu.Lock()
			h.emitted = append(h.emitted, ev)
			h.mu.Unlock()
			return nil
		}}
	if fake {
		h.clock = newFakeClock()
		cfg.Now, cfg.AfterFunc = h.clock.Now, h.clock.AfterFunc
		cfg.Rand = func() float64 { return 0 } // the low end of the jitter: exact due times
	}
	if mod != nil {
		mod(&cfg)
	}
	h.e, err = delivery.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.e.Configure(cfgs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.e.Close(); s.Close() })
	return h
}

func (h *harness) start() {
	h.t.Helper()
	if err := h.e.Start(context.Background()); err != nil {
		h.t.Fatal(err)
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (h *harness) logText() string {
	h.logs.mu.Lock()
	defer h.logs.mu.Unlock()
	return h.logs.w.(*bytes.Buffer).String()
}

// buildEvent is a build-state-changed event of build id with seq.
func buildEvent(build, seq int64, state builds.State) event.Envelope {
	return event.Envelope{ID: fmt.Sprintf("evt_b%d_s%d", build, seq), Type: event.TypeBuildStateChanged,
		Time: time.Now().UTC(), Seq: seq, Build: &event.Build{ID: build, Number: build, State: state},
		Project: &event.Project{ID: 1, Name: "app", OwnerID: 7}}
}

// to is the delivery of ev to the webhook sink named sink at url.
func to(ev event.Envelope, sink, url string) sinks.Delivery {
	body, _ := json.Marshal(ev)
	return sinks.Delivery{EventID: ev.ID, Event: ev, Route: "test", Sink: sink, SinkType: "webhook", Target: url,
		Body: body, ContentType: "application/json", Params: map[string]string{"content_type": "application/json"}}
}

func (h *harness) enqueue(ds ...sinks.Delivery) {
	h.t.Helper()
	if err := h.e.Enqueue(context.Background(), ds); err != nil {
		h.t.Fatal(err)
	}
}

// row returns the stored delivery of an event to a sink.
func (h *harness) row(sink, eventID string) store.SinkDelivery {
	h.t.Helper()
	l, err := h.store.ListSinkDeliveries(context.Background(), store.SinkDeliveryFilter{Sink: sink, EventID: eventID})
	if err != nil || len(l) != 1 {
		h.t.Fatalf("deliveries of %s: %+v %v", eventID, l, err)
	}
	return l[0]
}

// waitRow waits until the delivery of an event to a sink satisfies ok.
func (h *harness) waitRow(sink, eventID string, within time.Duration, ok func(d store.SinkDelivery) bool) store.SinkDelivery {
	h.t.Helper()
	deadline := time.Now().Add(within)
	for {
		d := h.row(sink, eventID)
		if ok(d) {
			return d
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("delivery of %s not as expected within %s: %+v", eventID, within, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (h *harness) attempts(id int64) []store.SinkAttempt {
	h.t.Helper()
	a, err := h.store.SinkAttempts(context.Background(), id)
	if err != nil {
		h.t.Fatal(err)
	}
	return a
}

// metric reads one sample from the engine's registry.
func (h *harness) metric(name string, labels map[string]string) float64 {
	h.t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			return value(m)
		}
	}
	return -1
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return -1
}

// mapping parses a YAML mapping.
func mapping(t *testing.T, src string) *yaml.Node {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
		t.Fatal(err)
	}
	return doc.Content[0]
}
