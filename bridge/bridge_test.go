package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/bus"
	"github.com/buildbridge/buildbridge/event"
)

const buildURL = "http://bb.test/builds/"

// sink is a consumer recording what it receives.
type sink struct {
	mu     sync.Mutex
	events []event.Envelope
	got    chan struct{}
	// fail, when set, decides whether to refuse an event.
	fail func(ev event.Envelope) error
}

func newSink() *sink { return &sink{got: make(chan struct{}, 1)} }

func (s *sink) consume(_ context.Context, ev event.Envelope) error {
	s.mu.Lock()
	s.events = append(s.events, ev)
	fail := s.fail
	s.mu.Unlock()
	select {
	case s.got <- struct{}{}:
	default:
	}
	if fail != nil {
		return fail(ev)
	}
	return nil
}

func (s *sink) all() []event.Envelope {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]event.Envelope(nil), s.events...)
}

func (s *sink) waitFor(t *testing.T, n int, within time.Duration) []event.Envelope {
	t.Helper()
	deadline := time.After(within)
	for len(s.all()) < n {
		select {
		case <-s.got:
		case <-deadline:
			t.Fatalf("got %d of %d events within %s", len(s.all()), n, within)
		}
	}
	time.Sleep(300 * time.Millisecond) // catch extras
	return s.all()
}

func newBridge(t *testing.T, b *bus.Bus, reg prometheus.Registerer) *Bridge {
	t.Helper()
	br, err := New(Config{Subscriber: b.Subscriber, Publisher: b.Publisher(), BuildURL: buildURL,
		Logger: quietLogger(t), Registerer: reg, CloseTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = br.Close() })
	return br
}

func runBridge(t *testing.T, br *Bridge) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- br.Run(ctx) }()
	select {
	case <-br.Running():
	case err := <-done:
		t.Fatalf("bridge Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("bridge not running")
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("bridge Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("bridge did not stop")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func publishTransitions(t *testing.T, b *bus.Bus, ts ...builds.Transition) {
	t.Helper()
	publishJSON(t, b, builds.TopicTransition, func(tr builds.Transition) string { return tr.EventID }, ts)
}

// publishJSON publishes each value, encoded as JSON, on topic in one
// Publish, with the message id id(v).
func publishJSON[T any](t *testing.T, b *bus.Bus, topic string, id func(T) string, vs []T) {
	t.Helper()
	var msgs []*message.Message
	for _, v := range vs {
		raw, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, message.NewMessage(id(v), raw))
	}
	if err := b.Publisher().Publish(topic, msgs...); err != nil {
		t.Fatal(err)
	}
}

func at(s int) *time.Time {
	v := time.Date(2026, 3, 1, 12, 0, s, 0, time.UTC)
	return &v
}

// transitions of one build: QUEUED, STARTED, FINISHED with result, and
// prev as the previous finished build.
func buildTransitions(seq int64, buildID int64, result builds.Result, prev *builds.Previous) []builds.Transition {
	base := builds.Build{ID: buildID, ProjectID: 3, Number: buildID + 100, Ref: "refs/heads/main", Branch: "main",
		SHA: fmt.Sprintf("%040d", buildID), Author: "Ann", AuthorEmail: "ann@example.com", Message: "change",
		CreatedAt: *at(0)}
	proj := builds.ProjectRef{ID: 3, Name: "app", OwnerID: 7}
	q, s, f := base, base, base
	q.State = builds.Queued
	s.State, s.StartedAt = builds.Started, at(1)
	f.State, f.Result, f.StartedAt, f.FinishedAt = builds.Finished, result, at(1), at(31)
	mk := func(i int64, from, to builds.State, b builds.Build) builds.Transition {
		return builds.Transition{EventID: fmt.Sprintf("evt-%d-%d", buildID, i), Seq: seq + i, Time: *at(int(i)),
			From: from, To: to, Build: b, Project: proj, Previous: prev}
	}
	return []builds.Transition{mk(0, "", builds.Queued, q), mk(1, builds.Queued, builds.Started, s), mk(2, builds.Started, builds.Finished, f)}
}

func TestConfigValidate(t *testing.T) {
	sub := func(string) (message.Subscriber, error) { return nil, errors.New("x") }
	if _, err := New(Config{Publisher: nil, Subscriber: sub}); err == nil || !strings.Contains(err.Error(), "Publisher") {
		t.Errorf("New without Publisher: %v", err)
	}
	if _, err := New(Config{Publisher: unclosed{}}); err == nil || !strings.Contains(err.Error(), "Subscriber") {
		t.Errorf("New without Subscriber: %v", err)
	}
	if _, err := New(Config{Publisher: unclosed{}, Subscriber: sub}); err == nil {
		t.Error("New with a failing Subscriber succeeded")
	}
}

// Transitions in give exactly the expected envelopes out, with the event
// id as message id and the status derived from the previous build.
func TestBridgeTurnsTransitionsIntoEvents(t *testing.T) {
	b := openBus(t, t.TempDir())
	reg := prometheus.NewRegistry()
	br := newBridge(t, b, reg)
	s := newSink()
	if err := br.AddConsumer("test", s.consume); err != nil {
		t.Fatal(err)
	}
	raw := collect(t, b, "raw", event.TopicBuildStateChanged)
	runBridge(t, br)

	var in []builds.Transition
	in = append(in, buildTransitions(1, 1, builds.Passed, nil)...)                                                   // passed
	in = append(in, buildTransitions(4, 2, builds.Failed, &builds.Previous{Number: 101, Result: builds.Passed})...)  // broken
	in = append(in, buildTransitions(7, 3, builds.Failed, &builds.Previous{Number: 102, Result: builds.Failed})...)  // still failing
	in = append(in, buildTransitions(10, 4, builds.Passed, &builds.Previous{Number: 103, Result: builds.Failed})...) // fixed
	in = append(in, buildTransitions(13, 5, builds.Canceled, nil)[2])
	publishTransitions(t, b, in...)

	got := s.waitFor(t, len(in), 10*time.Second)
	if len(got) != len(in) {
		t.Fatalf("got %d events, want %d", len(got), len(in))
	}
	wantStatus := []builds.Status{"queued", "started", "passed", "queued", "started", "broken",
		"queued", "started", "still_failing", "queued", "started", "fixed", "canceled"}
	for i, tr := range in {
		want, _ := json.Marshal(event.FromTransition(tr, buildURL))
		have, _ := json.Marshal(got[i])
		if !bytes.Equal(want, have) {
			t.Errorf("event %d:\n got  %s\n want %s", i, have, want)
		}
		if got[i].Build.Status != wantStatus[i] {
			t.Errorf("event %d status %s, want %s", i, got[i].Build.Status, wantStatus[i])
		}
	}
	if u := got[0].Build.URL; u != buildURL+"1" {
		t.Errorf("url = %q", u)
	}
	ids := raw.waitFor(t, len(in), 5*time.Second)
	for i, tr := range in {
		if ids[i] != tr.EventID {
			t.Errorf("message %d uuid %s, want event id %s", i, ids[i], tr.EventID)
		}
	}
	if n := counterValue(br.m.events); n != float64(len(in)) {
		t.Errorf("events metric = %v, want %d", n, len(in))
	}

	// A redelivered transition (same event id) gives no second event.
	publishTransitions(t, b, in[0])
	time.Sleep(300 * time.Millisecond)
	if n := len(s.all()); n != len(in) {
		t.Errorf("after a repeated transition the consumer saw %d events, want %d", n, len(in))
	}
}

// Malformed transitions and events are logged, counted and acknowledged;
// the messages behind them still flow.
func TestBridgePoisonMessages(t *testing.T) {
	b := openBus(t, t.TempDir())
	reg := prometheus.NewRegistry()
	br := newBridge(t, b, reg)
	s := newSink()
	if err := br.AddConsumer("test", s.consume); err != nil {
		t.Fatal(err)
	}
	runBridge(t, br)
	pub := b.Publisher()
	for i, p := range []string{`not json`, `{"event_id":""}`, `{"event_id":"x","to":"BOGUS","build":{"state":"BOGUS"}}`, `[]`} {
		if err := pub.Publish(builds.TopicTransition, message.NewMessage(fmt.Sprint("poison-", i), []byte(p))); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Publish(event.TopicBuildStateChanged, message.NewMessage("bad-event", []byte("{{"))); err != nil {
		t.Fatal(err)
	}
	good := buildTransitions(1, 1, builds.Passed, nil)
	publishTransitions(t, b, good...)
	got := s.waitFor(t, 3, 10*time.Second)
	if len(got) != 3 || got[0].ID != good[0].EventID || got[2].ID != good[2].EventID {
		t.Fatalf("got %d events %v", len(got), got)
	}
	if n := counterValue(br.m.malformed.WithLabelValues("transitions")); n != 4 {
		t.Errorf("malformed transitions = %v, want 4", n)
	}
	if n := counterValue(br.m.malformed.WithLabelValues("consumer-test")); n != 1 {
		t.Errorf("malformed events = %v, want 1", n)
	}
}

// A consumer error makes the event come back; the other consumers are
// not affected.
func TestBridgeConsumerErrorRedelivers(t *testing.T) {
	b := openBus(t, t.TempDir())
	br := newBridge(t, b, prometheus.NewRegistry())
	flaky, steady := newSink(), newSink()
	var refusals int
	flaky.fail = func(ev event.Envelope) error {
		if ev.Seq == 2 && refusals < 2 {
			refusals++
			return errors.New("sink down")
		}
		return nil
	}
	if err := br.AddConsumer("flaky", flaky.consume); err != nil {
		t.Fatal(err)
	}
	if err := br.AddConsumer("steady", steady.consume); err != nil {
		t.Fatal(err)
	}
	if err := br.AddConsumer("steady", steady.consume); err == nil {
		t.Error("adding a consumer name twice succeeded")
	}
	runBridge(t, br)
	publishTransitions(t, b, buildTransitions(1, 1, builds.Passed, nil)...)

	got := flaky.waitFor(t, 5, 10*time.Second)
	var seqs []int64
	for _, ev := range got {
		seqs = append(seqs, ev.Seq)
	}
	// A refused event comes back after a delay, behind the later ones.
	slices.Sort(seqs)
	if fmt.Sprint(seqs) != "[1 2 2 2 3]" {
		t.Errorf("flaky consumer saw seqs %v, want 1, 3 once and 2 three times (refused twice)", seqs)
	}
	if n := len(steady.waitFor(t, 3, 5*time.Second)); n != 3 {
		t.Errorf("steady consumer saw %d events, want 3", n)
	}
	if n := counterValue(br.m.consumerErrors.WithLabelValues("flaky")); n != 2 {
		t.Errorf("consumer errors = %v, want 2", n)
	}
}

// Stopping the bridge and the bus and starting again on the same data
// directory loses nothing: transitions published while the consumers were
// down arrive after the restart, and nothing comes twice.
func TestBridgeRestartResumes(t *testing.T) {
	dir := t.TempDir()
	b1 := openBus(t, dir)
	br1 := newBridge(t, b1, nil)
	s1 := newSink()
	if err := br1.AddConsumer("test", s1.consume); err != nil {
		t.Fatal(err)
	}
	stop := runBridge(t, br1)
	first := buildTransitions(1, 1, builds.Passed, nil)
	publishTransitions(t, b1, first...)
	if n := len(s1.waitFor(t, 3, 10*time.Second)); n != 3 {
		t.Fatalf("before restart: %d events", n)
	}
	stop()
	if err := br1.Close(); err != nil {
		t.Fatalf("bridge Close: %v", err)
	}
	// The bridge is down; transitions keep coming.
	second := buildTransitions(4, 2, builds.Failed, &builds.Previous{Number: 101, Result: builds.Passed})
	publishTransitions(t, b1, second...)
	if err := b1.Close(); err != nil {
		t.Fatalf("bus Close: %v", err)
	}

	b2 := openBus(t, dir)
	br2 := newBridge(t, b2, nil)
	s2 := newSink()
	if err := br2.AddConsumer("test", s2.consume); err != nil {
		t.Fatal(err)
	}
	runBridge(t, br2)
	got := s2.waitFor(t, 3, 10*time.Second)
	var ids []string
	for _, ev := range got {
		ids = append(ids, ev.ID)
	}
	if want := []string{second[0].EventID, second[1].EventID, second[2].EventID}; fmt.Sprint(ids) != fmt.Sprint(want) {
		t.Fatalf("after restart got %v, want %v", ids, want)
	}
	if got[2].Build.Status != builds.StatusBroken {
		t.Errorf("status %s, want broken", got[2].Build.Status)
	}
}

// A consumer added while the bridge runs starts at once.
func TestBridgeAddConsumerWhileRunning(t *testing.T) {
	b := openBus(t, t.TempDir())
	br := newBridge(t, b, nil)
	runBridge(t, br)
	s := newSink()
	if err := br.AddConsumer("late", s.consume); err != nil {
		t.Fatal(err)
	}
	publishTransitions(t, b, buildTransitions(1, 1, builds.Passed, nil)...)
	if n := len(s.waitFor(t, 3, 10*time.Second)); n != 3 {
		t.Fatalf("late consumer saw %d events, want 3", n)
	}
}

func TestBridgeCloseWithoutRun(t *testing.T) {
	b := openBus(t, t.TempDir())
	br := newBridge(t, b, nil)
	start := time.Now()
	if err := br.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close without Run took %s", d)
	}
	if err := br.Run(t.Context()); err == nil {
		t.Error("Run after Close succeeded")
	}
}

func TestLogConsumer(t *testing.T) {
	tr := buildTransitions(7, 9, builds.Failed, &builds.Previous{Number: 108, Result: builds.Passed})[2]
	ev := event.FromTransition(tr, buildURL)
	var buf bytes.Buffer
	log := LogConsumer(slog.New(slog.NewJSONHandler(&buf, nil)))
	if err := log(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Level, Msg     string
		EventID        string `json:"event_id"`
		Seq, BuildID   int64
		Project, State string
		Status         string
		Event          json.RawMessage
	}
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("%v: %s", err, buf.Bytes())
	}
	var m map[string]any
	_ = json.Unmarshal(buf.Bytes(), &m)
	if rec.Level != "INFO" || rec.Msg != "build-state-changed" || rec.EventID != tr.EventID || m["seq"] != 9.0 ||
		m["build_id"] != 9.0 || rec.Project != "app" || rec.State != "FINISHED" || rec.Status != "broken" {
		t.Errorf("log record %s", buf.Bytes())
	}
	want, _ := json.Marshal(ev)
	var a, b any
	_ = json.Unmarshal(want, &a)
	_ = json.Unmarshal(rec.Event, &b)
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Errorf("event attribute %s, want %s", rec.Event, want)
	}

	buf.Reset()
	if err := LogConsumer(slog.New(slog.NewTextHandler(&buf, nil)))(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), `event="{\"id\":\"`+tr.EventID) {
		t.Errorf("text log lacks the event JSON: %s", buf.String())
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
