// Command delivery measures the delivery engine with the webhook sink
// against a local receiver.
//
// The throughput phase posts -n signed webhooks twice to the same
// loopback receiver: first with a bare net/http client loop (-concurrency
// goroutines posting the signed bodies, nothing stored), then through
// the engine (each delivery persisted before its first attempt, its
// attempt logged, in SQLite or PostgreSQL), and reports both rates and
// their ratio. The latency phase matches events against a rules file at
// a steady -rate for -duration, hands the deliveries to the engine, and
// reports the delay from the event to the receiver's handler.
//
// The bus and bus-latency phases do the same through the hub's real
// path: the events are published on an embedded bus, and the bridge's
// batch consumer matches them against the rules and hands each batch's
// deliveries to the engine in one Enqueue. Every phase is bounded by
// -timeout.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/oklog/ulid/v2"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/sinks/delivery"
	"github.com/buildbridge/buildbridge/sinks/webhook"
	"github.com/buildbridge/buildbridge/store"
)

const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

type options struct {
	n            int
	concurrency  int
	producers    int
	batch        int
	rate         int
	duration     time.Duration
	timeout      time.Duration
	postgres     string
	phases       string
	rounds       int
	maxBatch     int
	maxAckPend   int
	publishBatch int
	prepublish   bool
	groupCommit  time.Duration
	recordDelay  time.Duration
	cpuProfile   string
}

func main() {
	var o options
	flag.IntVar(&o.n, "n", 20000, "webhooks in the throughput phase (each way)")
	flag.IntVar(&o.concurrency, "concurrency", 16, "requests in flight: the bare loop's goroutines and the sink's per-target concurrency")
	flag.IntVar(&o.producers, "producers", 4, "goroutines handing deliveries to the engine in the throughput phase")
	flag.IntVar(&o.batch, "batch", 64, "deliveries per Enqueue call in the throughput phase (the hub's deliveries consumer hands over every event the bus delivered, up to 256 at once; 1: one event, one webhook per call)")
	flag.IntVar(&o.rate, "rate", 500, "events per second in the latency phase")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "length of the latency phase")
	flag.DurationVar(&o.timeout, "timeout", 2*time.Minute, "upper bound on each phase")
	flag.StringVar(&o.postgres, "postgres", "", "PostgreSQL DSN (an empty database or schema); default SQLite in a temporary directory")
	flag.StringVar(&o.phases, "phases", "throughput,latency,bus,bus-latency", "phases to run: throughput and latency hand deliveries to the engine directly; bus and bus-latency feed it through an embedded bus and the bridge's batch consumer, as the hub does")
	flag.IntVar(&o.maxBatch, "max-batch", 0, "bridge MaxBatch: most events per batch handed to the deliveries consumer (0: the bridge's default)")
	flag.IntVar(&o.maxAckPend, "max-ack-pending", 0, "bus MaxAckPending: messages delivered to the consumer and not yet acknowledged (0: the bus's default)")
	flag.BoolVar(&o.prepublish, "prepublish", false, "bus phase: publish every event before the clock starts (the consumer and the engine timed alone, as the bare loop's events are made before its clock)")
	flag.IntVar(&o.publishBatch, "publish-batch", 256, "events per Publish call in the bus phase (the relay publishes up to 256 outbox rows at once)")
	flag.IntVar(&o.rounds, "rounds", 3, "throughput rounds (bare loop, then engine, each round): the ratio of each round and the median")
	flag.DurationVar(&o.groupCommit, "group-commit", 0, "engine GroupCommitWait (0: the engine's default, negative: off)")
	flag.DurationVar(&o.recordDelay, "record-delay", 0, "engine RecordDelay (0: the engine's default)")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of each durable run (not the bare loop) of the throughput and bus phases: FILE for the first, FILE.2, FILE.3, … for the next")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "delivery bench:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	if o.n < 1 || o.concurrency < 1 || o.producers < 1 || o.batch < 1 || o.rate < 1 || o.rounds < 1 || o.publishBatch < 1 || o.maxBatch < 0 || o.maxAckPend < 0 {
		return errors.New("-n, -concurrency, -producers, -batch, -rate, -rounds and -publish-batch must be positive, -max-batch and -max-ack-pending not negative")
	}
	fmt.Printf("GOMAXPROCS=%d  concurrency=%d  store=%s\n", runtime.GOMAXPROCS(0), o.concurrency, storeName(o))
	recv, err := newReceiver()
	if err != nil {
		return err
	}
	defer recv.close()
	for _, ph := range []struct {
		name string
		fn   func(options, *receiver) error
	}{{"throughput", throughput}, {"latency", latency}, {"bus", busThroughput}, {"bus-latency", busLatency}} {
		if !slices.Contains(splitComma(o.phases), ph.name) {
			continue
		}
		if err := ph.fn(o, recv); err != nil {
			return fmt.Errorf("%s: %w", ph.name, err)
		}
	}
	return nil
}

func storeName(o options) string {
	if o.postgres != "" {
		return "postgres"
	}
	return "sqlite"
}

func splitComma(s string) []string {
	var out []string
	for _, p := range bytes.Split([]byte(s), []byte(",")) {
		if t := string(bytes.TrimSpace(p)); t != "" {
			out = append(out, t)
		}
	}
	return out
}

// receiver is the local webhook endpoint: it verifies every signature
// with the standard-webhooks library, as a real receiver would, and
// records when each message id first arrived.
type receiver struct {
	srv  *http.Server
	url  string
	wh   *standardwebhooks.Webhook
	bad  atomic.Int64
	mu   sync.Mutex
	seen map[string]time.Time
	want int
	done chan struct{}
}

func newReceiver() (*receiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &receiver{url: "http://" + ln.Addr().String() + "/hook", seen: map[string]time.Time{}}
	r.wh, _ = standardwebhooks.NewWebhook(secret)
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second}
	go r.srv.Serve(ln)
	return r, nil
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	if err := r.wh.Verify(body, req.Header); err != nil {
		r.bad.Add(1)
		w.WriteHeader(400)
		return
	}
	now := time.Now()
	id := req.Header.Get("webhook-id")
	r.mu.Lock()
	if _, ok := r.seen[id]; !ok {
		r.seen[id] = now
		if len(r.seen) == r.want && r.done != nil {
			close(r.done)
			r.done = nil
		}
	}
	r.mu.Unlock()
	w.WriteHeader(204)
}

// expect resets the receiver and returns a channel closed once n
// distinct messages arrived.
func (r *receiver) expect(n int) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen, r.want = map[string]time.Time{}, n
	r.done = make(chan struct{})
	return r.done
}

func (r *receiver) arrivals() map[string]time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return copyTimes(r.seen)
}

func copyTimes(m map[string]time.Time) map[string]time.Time {
	out := make(map[string]time.Time, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (r *receiver) close() { r.srv.Close() }

// testEvent is a finished build's event, like the ones the engine carries:
// its id is made as the store makes them (a ULID, so in time order), i
// numbers the build.
func testEvent(i int) event.Envelope {
	start := time.Now().UTC()
	end := start.Add(42 * time.Second)
	return event.FromTransition(builds.Transition{
		EventID: "evt_" + strings.ToLower(ulid.Make().String()), Seq: int64(i + 1), Time: end, From: builds.Started, To: builds.Finished,
		Build: builds.Build{ID: int64(i + 1), Number: int64(i + 1), State: builds.Finished, Result: builds.Passed,
			Ref: "refs/heads/main", Branch: "main", SHA: "0123456789abcdef0123456789abcdef01234567",
			Author: "Ann Example", AuthorEmail: "ann@example.com", Message: "Bench the delivery engine",
			StartedAt: &start, FinishedAt: &end},
		Project: builds.ProjectRef{ID: 3, Name: "app", OwnerID: 5},
	}, "https://buildbridge.example/builds/")
}

// testEvents is n test events numbered from first and their JSON bodies.
func testEvents(first, n int) ([]event.Envelope, [][]byte) {
	evs := make([]event.Envelope, n)
	bodies := make([][]byte, n)
	for i := range evs {
		evs[i] = testEvent(first + i)
		bodies[i], _ = json.Marshal(evs[i])
	}
	return evs, bodies
}

// throughput runs the bare loop and the engine in turn, -rounds times,
// so that both see the same machine (other jobs share it).
func throughput(o options, recv *receiver) error {
	var bareRates, rates, ratios []float64
	for r := range o.rounds {
		b, e, err := throughputRound(o, recv, r)
		if err != nil {
			return err
		}
		bareRates, rates, ratios = append(bareRates, b), append(rates, e), append(ratios, e/b)
	}
	if o.rounds > 1 {
		fmt.Printf("median of %d rounds: bare %.0f /s, engine %.0f /s, engine / bare %.0f%% (target ≥ 50%%)\n",
			o.rounds, median(bareRates), median(rates), 100*median(ratios))
	}
	return nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func throughputRound(o options, recv *receiver, round int) (bareRate, rate float64, err error) {
	// The same bodies both ways.
	evs, bodies := testEvents(round*o.n, o.n)

	bareRate, err = bareLoop(o, recv, evs, bodies, round)
	if err != nil {
		return 0, 0, err
	}

	// The engine: persisted, attempted, logged.
	s, cleanup, err := openStore(o)
	if err != nil {
		return 0, 0, err
	}
	defer cleanup()
	rules, err := benchRules(o, recv.url)
	if err != nil {
		return 0, 0, err
	}
	cfg, _ := rules.Sink("hook")
	eng, err := newEngine(o, s, cfg)
	if err != nil {
		return 0, 0, err
	}
	defer eng.Close()
	done := recv.expect(o.n)
	var next atomic.Int64
	var wg sync.WaitGroup
	stopProfile, err := profile(o)
	if err != nil {
		return 0, 0, err
	}
	defer stopProfile()
	cpu0 := cpuTime()
	start := time.Now()
	errc := make(chan error, o.producers)
	for range o.producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ds := make([]sinks.Delivery, 0, o.batch)
			for {
				first := int(next.Add(int64(o.batch)) - int64(o.batch))
				if first >= o.n {
					return
				}
				ds = ds[:0]
				for i := first; i < min(first+o.batch, o.n); i++ {
					ds = append(ds, sinks.Delivery{EventID: evs[i].ID, Event: evs[i], Route: "bench", Sink: "hook", SinkType: "webhook",
						Target: recv.url, Body: bodies[i], BodyIsEvent: true, ContentType: "application/json"})
				}
				if err := eng.Enqueue(context.Background(), ds); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return 0, 0, err
	}
	persisted := time.Since(start)
	select {
	case <-done:
	case <-time.After(o.timeout):
		return 0, 0, fmt.Errorf("engine: %d of %d received within %s", len(recv.arrivals()), o.n, o.timeout)
	}
	received := time.Since(start)
	// Durable means the attempt is logged too.
	if err := waitSucceeded(s, o.n, start.Add(o.timeout)); err != nil {
		return 0, 0, err
	}
	logged := time.Since(start)
	cpu := cpuTime() - cpu0
	stopProfile()
	rate = float64(o.n) / logged.Seconds()
	fmt.Printf("round %d  engine (durable):     %6d webhooks in %7.3fs = %8.0f /s  (%s CPU per webhook, %.2f cores; all persisted at %.3fs, received at %.3fs, attempts logged at %.3fs)\n",
		round+1, o.n, logged.Seconds(), rate, perItem(cpu, o.n), cpu.Seconds()/logged.Seconds(), persisted.Seconds(), received.Seconds(), logged.Seconds())
	fmt.Printf("round %d  engine / bare loop:   %.0f%%\n", round+1, 100*rate/bareRate)
	if b := recv.bad.Load(); b > 0 {
		return 0, 0, fmt.Errorf("%d requests with a bad signature", b)
	}
	return bareRate, rate, nil
}

// bareLoop posts the signed bodies with -concurrency goroutines and
// returns the rate: the yardstick of each round.
func bareLoop(o options, recv *receiver, evs []event.Envelope, bodies [][]byte, round int) (float64, error) {
	key, _ := webhook.ParseSecret(secret)
	tr := &http.Transport{MaxIdleConns: o.concurrency, MaxIdleConnsPerHost: o.concurrency, IdleConnTimeout: 30 * time.Second}
	client := &http.Client{Transport: tr, Timeout: 15 * time.Second}
	done := recv.expect(len(evs))
	var next atomic.Int64
	var failed atomic.Int64
	start := time.Now()
	cpu0 := cpuTime()
	var wg sync.WaitGroup
	for range o.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(evs) {
					return
				}
				id := delivery.MessageID(evs[i].ID, "hook", recv.url)
				now := time.Now()
				req, _ := http.NewRequest(http.MethodPost, recv.url, bytes.NewReader(bodies[i]))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("User-Agent", "buildbridge-webhook")
				req.Header.Set(webhook.HeaderID, id)
				req.Header.Set(webhook.HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
				req.Header.Set(webhook.HeaderSignature, webhook.Sign([][]byte{key}, id, now, bodies[i]))
				resp, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	select {
	case <-done:
	case <-time.After(o.timeout):
		return 0, fmt.Errorf("bare loop: %d of %d received within %s", len(recv.arrivals()), len(evs), o.timeout)
	}
	bare := time.Since(start)
	cpu := cpuTime() - cpu0
	tr.CloseIdleConnections()
	if failed.Load() > 0 {
		return 0, fmt.Errorf("bare loop: %d requests failed", failed.Load())
	}
	rate := float64(len(evs)) / bare.Seconds()
	fmt.Printf("round %d  bare net/http loop:   %6d webhooks in %7.3fs = %8.0f /s  (%s CPU per webhook, %.2f cores)\n",
		round+1, len(evs), bare.Seconds(), rate, perItem(cpu, len(evs)), cpu.Seconds()/bare.Seconds())
	return rate, nil
}

func waitSucceeded(s *store.DB, n int, deadline time.Time) error {
	for {
		var got int
		if err := s.SQL().QueryRow(`SELECT COUNT(*) FROM deliveries WHERE status = 'succeeded'`).Scan(&got); err != nil {
			return err
		}
		if got >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("engine: %d of %d attempts logged", got, n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func latency(o options, recv *receiver) error {
	s, cleanup, err := openStore(o)
	if err != nil {
		return err
	}
	defer cleanup()
	rules, err := benchRules(o, recv.url)
	if err != nil {
		return err
	}
	cfg, _ := rules.Sink("hook")
	eng, err := newEngine(o, s, cfg)
	if err != nil {
		return err
	}
	defer eng.Close()
	lat, achieved, err := paced(o, recv, func(i int) (string, time.Time, error) {
		ev := testEvent(1_000_000 + i)
		sent := time.Now()
		ds := rules.Match(ev) // the user-channel delivery too: pusher has no implementation here, so it is skipped
		var id string
		for _, d := range ds {
			if d.Sink == "hook" {
				id = delivery.MessageID(d.EventID, d.Sink, d.Target)
			}
		}
		return id, sent, eng.Enqueue(context.Background(), ds)
	})
	if err != nil {
		return err
	}
	fmt.Printf("latency at %d events/s for %s (%d events, %.0f/s achieved): %s  (target p99 < 50ms)\n",
		o.rate, o.duration, len(lat), achieved, percentiles(lat))
	return nil
}

// paced calls send(i) for each of the -rate × -duration events, at -rate,
// and waits for every webhook to arrive. It returns the delays, sorted,
// from the time send reported for each event to its webhook's arrival
// (send returns that webhook's id), and the events sent per second.
func paced(o options, recv *receiver, send func(i int) (id string, sent time.Time, err error)) ([]time.Duration, float64, error) {
	total := int(float64(o.rate) * o.duration.Seconds())
	done := recv.expect(total)
	sent := make([]time.Time, total)
	ids := make([]string, total)
	interval := time.Second / time.Duration(o.rate)
	start := time.Now()
	for i := 0; i < total; i++ {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		var err error
		if ids[i], sent[i], err = send(i); err != nil {
			return nil, 0, err
		}
	}
	select {
	case <-done:
	case <-time.After(o.timeout):
		return nil, 0, fmt.Errorf("%d of %d received within %s", len(recv.arrivals()), total, o.timeout)
	}
	took := time.Since(start)
	got := recv.arrivals()
	lat := make([]time.Duration, 0, total)
	for i, id := range ids {
		lat = append(lat, got[id].Sub(sent[i]))
	}
	slices.Sort(lat)
	return lat, float64(total) / took.Seconds(), nil
}

// percentiles formats the p50, p90, p99 and max of sorted delays.
func percentiles(lat []time.Duration) string {
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  max %s", ms(pct(0.5)), ms(pct(0.9)), ms(pct(0.99)), ms(lat[len(lat)-1]))
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d.Microseconds())/1000) }

func newEngine(o options, s *store.DB, cfg *sinks.Config) (*delivery.Engine, error) {
	allow := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	eng, err := delivery.New(delivery.Config{Store: s, GroupCommitWait: o.groupCommit, RecordDelay: o.recordDelay,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
		NewSink: func(c *sinks.Config) (sinks.Sink, error) {
			if c.Type == "webhook" {
				return webhook.NewSink(c, webhook.Options{Allow: allow})
			}
			return sinks.New(c)
		}})
	if err != nil {
		return nil, err
	}
	if err := eng.Configure([]*sinks.Config{cfg}); err != nil {
		return nil, err
	}
	if err := eng.Start(context.Background()); err != nil {
		return nil, err
	}
	return eng, nil
}

func openStore(o options) (*store.DB, func(), error) {
	if o.postgres != "" {
		s, err := store.Open(context.Background(), store.Config{Postgres: o.postgres})
		if err != nil {
			return nil, nil, err
		}
		// Start from an empty delivery log.
		for _, t := range []string{"delivery_attempts", "deliveries", "delivery_endpoints"} {
			if _, err := s.SQL().Exec(`DELETE FROM ` + t); err != nil {
				s.Close()
				return nil, nil, err
			}
		}
		return s, func() { s.Close() }, nil
	}
	dir, err := os.MkdirTemp("", "bench-delivery")
	if err != nil {
		return nil, nil, err
	}
	s, err := store.Open(context.Background(), store.Config{DataDir: dir})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	return s, func() { s.Close(); os.RemoveAll(dir) }, nil
}

// cpuTime is the CPU time (user and system) the process has used: the
// rounds report it per webhook, so that a rate can be told apart from the
// machine's share the run got.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func perItem(d time.Duration, n int) time.Duration {
	return (d / time.Duration(max(n, 1))).Round(time.Microsecond)
}

var profiles int

// profile starts a CPU profile of one durable run, if -cpuprofile asked
// for it, and returns what stops it.
func profile(o options) (stop func(), err error) {
	if o.cpuProfile == "" {
		return func() {}, nil
	}
	profiles++
	name := o.cpuProfile
	if profiles > 1 {
		name += "." + strconv.Itoa(profiles)
	}
	f, err := os.Create(name)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
