package bridge

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/buildbridge/buildbridge/bus"
	"github.com/buildbridge/buildbridge/event"
)

// batchSink is a batch consumer recording the batches it receives.
type batchSink struct {
	mu      sync.Mutex
	batches [][]event.Envelope
	okIDs   []string // events of the batches it accepted, in order
	got     chan struct{}
	// fail, when set, decides whether to refuse a batch.
	fail func(ctx context.Context, evs []event.Envelope) error
}

func newBatchSink() *batchSink { return &batchSink{got: make(chan struct{}, 1)} }

func (s *batchSink) consume(ctx context.Context, evs []event.Envelope) error {
	s.mu.Lock()
	fail := s.fail
	s.mu.Unlock()
	var err error
	if fail != nil {
		err = fail(ctx, evs)
	}
	s.mu.Lock()
	s.batches = append(s.batches, slices.Clone(evs))
	if err == nil {
		for _, ev := range evs {
			s.okIDs = append(s.okIDs, ev.ID)
		}
	}
	s.mu.Unlock()
	select {
	case s.got <- struct{}{}:
	default:
	}
	return err
}

func (s *batchSink) accepted() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.okIDs)
}

func (s *batchSink) all() [][]event.Envelope {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.batches)
}

// waitAccepted waits until n events were accepted, then a little more to
// catch extras.
func (s *batchSink) waitAccepted(t *testing.T, n int, within time.Duration) []string {
	t.Helper()
	deadline := time.After(within)
	for len(s.accepted()) < n {
		select {
		case <-s.got:
		case <-deadline:
			t.Fatalf("%d of %d events accepted within %s (batches %s)", len(s.accepted()), n, within, describeBatches(s.all()))
		}
	}
	time.Sleep(300 * time.Millisecond)
	return s.accepted()
}

func describeBatches(bs [][]event.Envelope) string {
	var out []string
	for _, b := range bs {
		var ids []string
		for _, ev := range b {
			ids = append(ids, ev.ID)
		}
		out = append(out, "["+strings.Join(ids, " ")+"]")
	}
	return strings.Join(out, " ")
}

func newBatchBridge(t *testing.T, b *bus.Bus, reg prometheus.Registerer, maxBatch int) *Bridge {
	t.Helper()
	br, err := New(Config{Subscriber: b.Subscriber, Publisher: b.Publisher(), BuildURL: buildURL,
		Logger: quietLogger(t), Registerer: reg, CloseTimeout: 5 * time.Second, MaxBatch: maxBatch})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = br.Close() })
	return br
}

func testEvents(prefix string, from, to int) []event.Envelope {
	var evs []event.Envelope
	for i := from; i < to; i++ {
		evs = append(evs, event.Envelope{ID: fmt.Sprintf("%s%03d", prefix, i), Type: event.TypeBuildStateChanged,
			Time: time.Now(), Seq: int64(i + 1)})
	}
	return evs
}

func ids(evs []event.Envelope) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.ID)
	}
	return out
}

func publishEvents(t *testing.T, b *bus.Bus, evs ...event.Envelope) {
	t.Helper()
	publishJSON(t, b, event.TopicBuildStateChanged, func(ev event.Envelope) string { return ev.ID }, evs)
}

func histogram(t *testing.T, h *prometheus.HistogramVec, label string) (count uint64, sum float64) {
	t.Helper()
	var m dto.Metric
	if err := h.WithLabelValues(label).(prometheus.Histogram).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}

// Events published while the consumer works on a batch form the next
// batches, up to MaxBatch; across batches the publication order is kept.
func TestBatchConsumerKeepsOrderAcrossBatches(t *testing.T) {
	b := openBus(t, t.TempDir())
	reg := prometheus.NewRegistry()
	br := newBatchBridge(t, b, reg, 64)
	s := newBatchSink()
	s.fail = func(context.Context, []event.Envelope) error {
		time.Sleep(20 * time.Millisecond) // a commit: events pile up meanwhile
		return nil
	}
	if err := br.AddBatchConsumer("batch", s.consume); err != nil {
		t.Fatal(err)
	}
	runBridge(t, br)
	var want []string
	for i := range 10 {
		evs := testEvents("e", i*50, (i+1)*50)
		want = append(want, ids(evs)...)
		publishEvents(t, b, evs...)
	}
	got := s.waitAccepted(t, len(want), 20*time.Second)
	if !slices.Equal(got, want) {
		t.Fatalf("events out of order or repeated:\n got %v\nwant %v", got, want)
	}
	batches := s.all()
	largest := 0
	for _, bt := range batches {
		largest = max(largest, len(bt))
	}
	if largest > 64 {
		t.Errorf("a batch of %d events, MaxBatch is 64", largest)
	}
	if largest < 2 {
		t.Errorf("every batch held one event (%d batches): nothing was batched", len(batches))
	}
	n, sum := histogram(t, br.m.batchSize, "batch")
	if n != uint64(len(batches)) || sum != float64(len(want)) {
		t.Errorf("batch size histogram: %d batches of %v events in all, want %d of %d", n, sum, len(batches), len(want))
	}
	if n, _ := histogram(t, br.m.consumerTime, "batch"); n != uint64(len(batches)) {
		t.Errorf("consumer time observed %d times, want once per batch (%d)", n, len(batches))
	}
	if n, _ := histogram(t, br.m.eventAge, "batch"); n != uint64(len(want)) {
		t.Errorf("event age observed %d times, want once per event (%d)", n, len(want))
	}
	t.Logf("%d events in %d batches, largest %d", len(want), len(batches), largest)
}

// A lone event is handed over at once, in a batch of its own: nothing
// waits for more.
func TestBatchConsumerLoneEventAtOnce(t *testing.T) {
	b := openBus(t, t.TempDir())
	br := newBatchBridge(t, b, nil, 0)
	s := newBatchSink()
	if err := br.AddBatchConsumer("lone", s.consume); err != nil {
		t.Fatal(err)
	}
	runBridge(t, br)
	for i, ev := range testEvents("l", 0, 3) {
		start := time.Now()
		publishEvents(t, b, ev)
		deadline := time.After(5 * time.Second)
		for len(s.accepted()) < i+1 {
			select {
			case <-s.got:
			case <-deadline:
				t.Fatalf("event %s not handed over within 5s", ev.ID)
			}
		}
		if d := time.Since(start); d > 250*time.Millisecond {
			t.Errorf("event %s handed over %s after its publication", ev.ID, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := describeBatches(s.all()); got != "[l000] [l001] [l002]" {
		t.Errorf("batches %s, want each event alone", got)
	}
}

// A refused batch comes back whole and nothing is lost; an event the
// consumer keeps refusing comes back alone and does not hold back the
// events that shared its first batch.
func TestBatchConsumerErrorRedeliversTheBatch(t *testing.T) {
	b := openBus(t, t.TempDir())
	reg := prometheus.NewRegistry()
	br := newBatchBridge(t, b, reg, 0)
	s := newBatchSink()
	release := make(chan struct{})
	var mu sync.Mutex
	refusedBatch, poisonLeft := false, 3
	s.fail = func(_ context.Context, evs []event.Envelope) error {
		if evs[0].ID == "f000" {
			<-release // the others pile up behind it
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		if len(evs) > 1 && !refusedBatch {
			refusedBatch = true
			return errors.New("store down")
		}
		if slices.Contains(ids(evs), "f003") && poisonLeft > 0 {
			poisonLeft--
			return errors.New("cannot take f003")
		}
		return nil
	}
	if err := br.AddBatchConsumer("flaky", s.consume); err != nil {
		t.Fatal(err)
	}
	runBridge(t, br)
	evs := testEvents("f", 0, 6)
	publishEvents(t, b, evs[0])
	time.Sleep(200 * time.Millisecond)
	publishEvents(t, b, evs[1:]...)
	time.Sleep(200 * time.Millisecond)
	close(release)

	got := s.waitAccepted(t, 6, 20*time.Second)
	slices.Sort(got)
	if !slices.Equal(got, ids(evs)) {
		t.Fatalf("accepted %v, want each of %v once (batches %s)", got, ids(evs), describeBatches(s.all()))
	}
	batches := s.all()
	if got := describeBatches(batches[:2]); got != "[f000] [f001 f002 f003 f004 f005]" {
		t.Fatalf("first batches %s, want f000 alone then the five others together", got)
	}
	// After the refusal every event comes back alone; f003 is refused
	// three more times, and the others do not wait for it.
	acceptedAt := map[string]int{}
	for i, bt := range batches[2:] {
		if len(bt) != 1 {
			t.Errorf("redelivered batch %s, want one event", describeBatches([][]event.Envelope{bt}))
		}
		acceptedAt[bt[0].ID] = i
	}
	for _, id := range []string{"f001", "f002", "f004", "f005"} {
		if acceptedAt[id] > acceptedAt["f003"] {
			t.Errorf("%s accepted after the poison f003: %s", id, describeBatches(batches))
		}
	}
	if n := counterValue(br.m.consumerErrors.WithLabelValues("flaky")); n != 5+3 {
		t.Errorf("consumer errors %v, want 8 (a batch of 5, then f003 three times)", n)
	}
}

// Malformed messages are counted, acknowledged and skipped; the events
// around them arrive in order, and the next batch is not held up.
func TestBatchConsumerSkipsMalformed(t *testing.T) {
	b := openBus(t, t.TempDir())
	reg := prometheus.NewRegistry()
	br := newBatchBridge(t, b, reg, 0)
	s := newBatchSink()
	release := make(chan struct{})
	s.fail = func(_ context.Context, evs []event.Envelope) error {
		if evs[0].ID == "g000" {
			<-release
		}
		return nil
	}
	if err := br.AddBatchConsumer("strict", s.consume); err != nil {
		t.Fatal(err)
	}
	runBridge(t, br)
	evs := testEvents("g", 0, 4)
	publishEvents(t, b, evs[0])
	time.Sleep(200 * time.Millisecond)
	publishEvents(t, b, evs[1])
	for i, p := range []string{"{{", `{"id":""}`} {
		if err := b.Publisher().Publish(event.TopicBuildStateChanged, message.NewMessage(fmt.Sprint("bad-", i), []byte(p))); err != nil {
			t.Fatal(err)
		}
	}
	publishEvents(t, b, evs[2])
	time.Sleep(200 * time.Millisecond)
	close(release)
	s.waitAccepted(t, 3, 10*time.Second)
	// The bus forms the next batch only once every message of the last
	// one is acknowledged: an unacknowledged malformed message would hold
	// this one for AckWait (2s).
	start := time.Now()
	publishEvents(t, b, evs[3])
	got := s.waitAccepted(t, 4, time.Second)
	if d := time.Since(start); d > time.Second {
		t.Errorf("the next event took %s", d)
	}
	if !slices.Equal(got, ids(evs)) {
		t.Fatalf("accepted %v, want %v", got, ids(evs))
	}
	if got := describeBatches(s.all()); got != "[g000] [g001 g002] [g003]" {
		t.Errorf("batches %s", got)
	}
	if n := counterValue(br.m.malformed.WithLabelValues("consumer-strict")); n != 2 {
		t.Errorf("malformed %v, want 2", n)
	}
	if n, sum := histogram(t, br.m.batchSize, "strict"); n != 3 || sum != 6 {
		t.Errorf("batch sizes: %d batches, %v messages; want 3 and 6 (malformed ones included)", n, sum)
	}
}

// Stopping the bridge lets the batch in hand finish with a live context
// and acknowledges it; after a restart on the same data directory
// nothing comes twice, and what was published meanwhile arrives.
func TestBatchConsumerCleanStop(t *testing.T) {
	dir := t.TempDir()
	b1 := openBus(t, dir)
	br1 := newBatchBridge(t, b1, nil, 0)
	s1 := newBatchSink()
	inside := make(chan struct{})
	var ctxErr error
	s1.fail = func(ctx context.Context, evs []event.Envelope) error {
		if evs[0].ID == "c000" {
			close(inside)
			time.Sleep(500 * time.Millisecond)
			ctxErr = ctx.Err()
		}
		return nil
	}
	if err := br1.AddBatchConsumer("stop", s1.consume); err != nil {
		t.Fatal(err)
	}
	stop := runBridge(t, br1)
	evs := testEvents("c", 0, 6)
	publishEvents(t, b1, evs[0])
	<-inside
	publishEvents(t, b1, evs[1:3]...) // held by the subscription, not handed over
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	stop()
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("Run returned %s after its context ended, before the batch in hand finished", d)
	}
	if ctxErr != nil {
		t.Errorf("the batch in hand saw its context end: %v", ctxErr)
	}
	if err := br1.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	publishEvents(t, b1, evs[3:]...)
	if err := b1.Close(); err != nil {
		t.Fatal(err)
	}
	first := s1.accepted()

	b2 := openBus(t, dir)
	br2 := newBatchBridge(t, b2, nil, 0)
	s2 := newBatchSink()
	if err := br2.AddBatchConsumer("stop", s2.consume); err != nil {
		t.Fatal(err)
	}
	runBridge(t, br2)
	want := len(evs) - len(first)
	s2.waitAccepted(t, want, 10*time.Second)
	time.Sleep(2500 * time.Millisecond) // past AckWait: an unacknowledged message would be back
	got := s2.accepted()
	all := append(slices.Clone(first), got...)
	sorted := slices.Sorted(slices.Values(all))
	if !slices.Equal(first, []string{"c000"}) || !slices.Equal(sorted, ids(evs)) {
		t.Fatalf("before the restart %v, after %v; want c000 before and each of %v once", first, got, ids(evs))
	}
	// c001 and c002 were given back, and come back behind what was
	// published later or before it; the others keep their order.
	later := slices.DeleteFunc(slices.Clone(got), func(id string) bool { return id == "c001" || id == "c002" })
	if !slices.Equal(later, []string{"c003", "c004", "c005"}) {
		t.Errorf("after the restart %v: c003, c004, c005 out of order", got)
	}
	t.Logf("after the restart: %v", got)
}

// A consumer added while the bridge runs starts at once; names are
// shared with AddConsumer; a subscriber without batches is refused.
func TestBatchConsumerAddWhileRunningAndErrors(t *testing.T) {
	b := openBus(t, t.TempDir())
	br := newBatchBridge(t, b, nil, 0)
	if err := br.AddConsumer("taken", newSink().consume); err != nil {
		t.Fatal(err)
	}
	runBridge(t, br)
	if err := br.AddBatchConsumer("taken", newBatchSink().consume); err == nil {
		t.Error("a batch consumer took a name already used")
	}
	if err := br.AddBatchConsumer("nil", nil); err == nil {
		t.Error("a nil batch consumer was added")
	}
	s := newBatchSink()
	if err := br.AddBatchConsumer("late", s.consume); err != nil {
		t.Fatal(err)
	}
	evs := testEvents("a", 0, 3)
	publishEvents(t, b, evs...)
	if got := s.waitAccepted(t, 3, 10*time.Second); !slices.Equal(got, ids(evs)) {
		t.Fatalf("late batch consumer got %v", got)
	}

	plain, err := New(Config{Publisher: b.Publisher(), Logger: quietLogger(t),
		Subscriber: func(d string) (message.Subscriber, error) {
			sub, err := b.Subscriber(d)
			return struct{ message.Subscriber }{sub}, err // hides SubscribeBatches
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if err := plain.AddBatchConsumer("plain", newBatchSink().consume); err == nil || !strings.Contains(err.Error(), "batches") {
		t.Errorf("AddBatchConsumer on a subscriber without batches: %v", err)
	}
}
