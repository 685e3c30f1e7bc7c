// Command pipeline measures buildbridge's event pipeline: outbox → relay
// → bus → bridge router → consumer, on the embedded bus.
//
// It runs three phases: a relay phase that measures the relay and the bus
// alone (-n rows of an unconsumed topic), a throughput phase that commits -n transitions as
// fast as it can and reports transitions per second end to end, and a
// latency phase that commits transitions at a steady -rate for -duration
// and reports the delay from "row committed and Notify called" to the
// consumer receiving the build-state-changed envelope. Every phase is
// bounded by -timeout.
//
// The outbox is an in-memory one by default; any bridge.Outbox that can
// also append rows (see Outbox in outbox.go) plugs in instead.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/buildbridge/buildbridge/bridge"
	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/bus"
	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/store"
)

type options struct {
	n             int
	rate          int
	duration      time.Duration
	timeout       time.Duration
	dataDir       string
	batch         int
	commitBatch   int
	ackSync       bool
	maxAckPending int
	consumers     int
	cpuProfile    string
	phases        string
	publishOne    bool
	store         string
	postgres      string
	writers       int
}

func main() {
	var o options
	flag.IntVar(&o.n, "n", 20000, "transitions in the throughput phase")
	flag.IntVar(&o.rate, "rate", 200, "transitions per second in the latency phase")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "length of the latency phase")
	flag.DurationVar(&o.timeout, "timeout", 2*time.Minute, "upper bound on each phase")
	flag.StringVar(&o.dataDir, "data", "", "bus data directory (default: a temporary directory, removed at the end)")
	flag.IntVar(&o.batch, "batch", 256, "relay batch size")
	flag.IntVar(&o.commitBatch, "commit-batch", 50, "rows per commit in the throughput phase")
	flag.BoolVar(&o.ackSync, "ack-sync", false, "wait for the server to confirm each consumer ack")
	flag.IntVar(&o.maxAckPending, "max-ack-pending", 256, "bus MaxAckPending")
	flag.IntVar(&o.consumers, "consumers", 1, "build-state-changed consumers (each sees every event)")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of both phases to this file")
	flag.StringVar(&o.phases, "phases", "relay,throughput,latency", "phases to run")
	flag.BoolVar(&o.publishOne, "publish-one", false, "relay publishes one message per Publish call (one round trip each), for comparison")
	flag.StringVar(&o.store, "store", "sqlite", "outbox: sqlite (the real store: each transition a committed build in SQLite), postgres (the real store on -postgres), or memory (relay, bus and router alone)")
	flag.StringVar(&o.postgres, "postgres", os.Getenv("BUILDBRIDGE_TEST_POSTGRES"), "PostgreSQL DSN for -store postgres (use an empty database or schema)")
	flag.IntVar(&o.writers, "writers", 1, "goroutines committing transitions at once in the throughput phase (API requests and runners commit concurrently)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "pipeline:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	if o.n < 1 || o.rate < 1 || o.duration <= 0 || o.batch < 1 || o.commitBatch < 1 || o.consumers < 1 {
		return errors.New("-n, -rate, -duration, -batch, -commit-batch and -consumers must be positive")
	}
	if o.dataDir == "" {
		dir, err := os.MkdirTemp("", "bb-pipeline-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		o.dataDir = dir
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	fmt.Printf("pipeline: GOMAXPROCS=%d, relay batch %d, consumers %d, ack-sync %v, max-ack-pending %d\n",
		runtime.GOMAXPROCS(0), o.batch, o.consumers, o.ackSync, o.maxAckPending)

	p, err := start(o)
	if err != nil {
		return err
	}
	defer p.stop()
	for _, phase := range []string{"relay", "throughput", "latency"} {
		if !slices.Contains(splitComma(o.phases), phase) {
			continue
		}
		var err error
		switch phase {
		case "relay":
			err = p.relayOnly(o)
		case "throughput":
			err = p.throughput(o)
		default:
			err = p.latency(o)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", phase, err)
		}
	}
	return nil
}

// pipeline is the whole chain, running.
type pipeline struct {
	outbox Outbox
	// db and project are set when the outbox is the real store: commits
	// are real builds, and latency is measured from each commit's return.
	db       *store.DB
	project  int64
	commitAt sync.Map // build id → time.Time
	bus      *bus.Bus
	relay    *bridge.Relay
	bridge   *bridge.Bridge
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	recv     *receiver
	seq      int64
}

func start(o options) (*pipeline, error) {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithCancel(context.Background())
	p := &pipeline{outbox: newMemOutbox(), cancel: cancel, recv: newReceiver(o.consumers)}
	var err error
	switch o.store {
	case "memory":
	case "sqlite", "postgres":
		cfg := store.Config{DataDir: o.dataDir + "/store", Logger: logger}
		if o.store == "postgres" {
			if o.postgres == "" {
				cancel()
				return nil, errors.New("-store postgres needs -postgres or BUILDBRIDGE_TEST_POSTGRES")
			}
			cfg.Postgres = o.postgres
		}
		if p.db, err = store.Open(ctx, cfg); err != nil {
			cancel()
			return nil, err
		}
		u, err := p.db.CreateUser(ctx, fmt.Sprintf("bench%d", time.Now().UnixNano()), false)
		if err == nil {
			var pr builds.Project
			pr, err = p.db.CreateProject(ctx, builds.Project{Name: fmt.Sprintf("bench-%d", time.Now().UnixNano()), OwnerID: u.ID, Repo: "/bench", DefaultBranch: "main"})
			p.project = pr.ID
		}
		if err != nil {
			cancel()
			return nil, err
		}
		p.outbox = storeOutbox{p.db}
		p.recv.commitAt = func(id int64) (time.Time, bool) {
			v, ok := p.commitAt.Load(id)
			if !ok {
				return time.Time{}, false
			}
			return v.(time.Time), true
		}
	default:
		cancel()
		return nil, fmt.Errorf("-store %q: want sqlite, postgres or memory", o.store)
	}
	fmt.Printf("outbox: %s\n", o.store)
	t0 := time.Now()
	p.bus, err = bus.Open(ctx, bus.Config{DataDir: o.dataDir, Logger: logger, AckSync: o.ackSync, MaxAckPending: o.maxAckPending})
	if err != nil {
		cancel()
		return nil, err
	}
	fmt.Printf("bus open in %s\n", time.Since(t0).Round(time.Millisecond))
	var relayPub message.Publisher = p.bus.Publisher()
	if o.publishOne {
		relayPub = onePerCall{relayPub}
	}
	p.relay, err = bridge.NewRelay(bridge.RelayConfig{Outbox: p.outbox, Publisher: relayPub, BatchSize: o.batch, Logger: logger})
	if err != nil {
		p.stop()
		return nil, err
	}
	if p.db != nil {
		p.db.SetOnOutbox(p.relay.Notify)
	}
	p.bridge, err = bridge.New(bridge.Config{Subscriber: p.bus.Subscriber, Publisher: p.bus.Publisher(),
		BuildURL: "http://bench/builds/", Logger: logger})
	if err != nil {
		p.stop()
		return nil, err
	}
	for i := range o.consumers {
		if err := p.bridge.AddConsumer(fmt.Sprintf("bench-%d", i), p.recv.consumer(i)); err != nil {
			p.stop()
			return nil, err
		}
	}
	p.wg.Add(2)
	go func() { defer p.wg.Done(); _ = p.relay.Run(ctx) }()
	go func() { defer p.wg.Done(); _ = p.bridge.Run(ctx) }()
	select {
	case <-p.bridge.Running():
	case <-time.After(10 * time.Second):
		p.stop()
		return nil, errors.New("bridge not running after 10s")
	}
	return p, nil
}

func (p *pipeline) stop() {
	p.cancel()
	p.wg.Wait()
	if p.bridge != nil {
		_ = p.bridge.Close()
	}
	_ = p.bus.Close()
	if p.db != nil {
		_ = p.db.Close()
	}
}

// commit appends transitions to the outbox, stamped with the commit time,
// and notifies the relay, as the store's writer does after a commit.
func (p *pipeline) commit(n int) {
	if p.db != nil {
		for range n {
			b, err := p.db.CreateBuild(context.Background(), store.NewBuild{ProjectID: p.project, Ref: "refs/heads/main", Branch: "main",
				SHA: "3f786850e387550fdab836ed7e6dc881de23001b", Author: "Ann Example", Message: "Make the pipeline faster (#1234)"})
			if err != nil {
				fmt.Fprintln(os.Stderr, "commit:", err)
				os.Exit(1)
			}
			p.commitAt.Store(b.ID, time.Now())
		}
		return
	}
	rows := make([]outboxRow, n)
	now := time.Now()
	for i := range rows {
		tr := transition(atomic.AddInt64(&p.seq, 1), now)
		raw, _ := json.Marshal(tr)
		rows[i] = outboxRow{topic: builds.TopicTransition, eventID: tr.EventID, payload: raw}
	}
	p.outbox.Append(rows...)
	p.relay.Notify()
}

// relayOnly measures the relay and the bus alone: -n rows of a topic
// nobody consumes, committed at once, until the outbox is empty.
func (p *pipeline) relayOnly(o options) error {
	if p.db != nil {
		fmt.Println("relay alone: skipped (only with -store memory)")
		return nil
	}
	rows := make([]outboxRow, o.n)
	payload, _ := json.Marshal(transition(0, time.Now()))
	stamp := time.Now().UnixNano()
	for i := range rows {
		rows[i] = outboxRow{topic: "bench.relay", eventID: fmt.Sprintf("relay_%d_%d", stamp, i), payload: payload}
	}
	start := time.Now()
	p.outbox.Append(rows...)
	p.relay.Notify()
	deadline := start.Add(o.timeout)
	for p.outbox.Len() > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d rows left after %s", p.outbox.Len(), o.timeout)
		}
		time.Sleep(100 * time.Microsecond)
	}
	d := time.Since(start)
	fmt.Printf("relay alone: %d rows published and deleted in %s: %.0f rows/s\n",
		o.n, d.Round(time.Millisecond), float64(o.n)/d.Seconds())
	return nil
}

func (p *pipeline) throughput(o options) error {
	p.recv.reset(o.n)
	start := time.Now()
	var wg sync.WaitGroup
	var next atomic.Int64
	for range max(o.writers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				sent := int(next.Add(int64(o.commitBatch))) - o.commitBatch
				if sent >= o.n {
					return
				}
				p.commit(min(o.commitBatch, o.n-sent))
				// Keep the outbox from running far ahead of the pipeline:
				// a sustained rate, not a bulk load.
				for p.outbox.Len() > 4*o.batch {
					time.Sleep(200 * time.Microsecond)
				}
			}
		}()
	}
	wg.Wait()
	if err := p.recv.wait(o.timeout); err != nil {
		return err
	}
	d := time.Since(start)
	fmt.Printf("throughput: %d transitions committed by %d writers, relayed, routed and consumed in %s: %.0f transitions/s (duplicates %d)\n",
		o.n, max(o.writers, 1), d.Round(time.Millisecond), float64(o.n)/d.Seconds(), p.recv.duplicates())
	return nil
}

func (p *pipeline) latency(o options) error {
	total := int(o.duration.Seconds() * float64(o.rate))
	p.recv.reset(total)
	interval := time.Second / time.Duration(o.rate)
	next := time.Now()
	for range total {
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		p.commit(1)
		next = next.Add(interval)
	}
	if err := p.recv.wait(o.timeout); err != nil {
		return err
	}
	lat := p.recv.latencies()
	slices.Sort(lat)
	q := func(f float64) time.Duration { return lat[min(len(lat)-1, int(f*float64(len(lat))))] }
	fmt.Printf("latency at %d transitions/s for %s (%d transitions): p50 %s  p90 %s  p99 %s  max %s (duplicates %d)\n",
		o.rate, o.duration, total, q(.50).Round(10*time.Microsecond), q(.90).Round(10*time.Microsecond),
		q(.99).Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond), p.recv.duplicates())
	return nil
}

// onePerCall publishes a batch one message at a time.
type onePerCall struct{ message.Publisher }

func (p onePerCall) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		if err := p.Publisher.Publish(topic, m); err != nil {
			return err
		}
	}
	return nil
}

// transition is a realistic FINISHED transition, about 600 bytes of JSON.
func transition(seq int64, now time.Time) builds.Transition {
	started := now.Add(-42 * time.Second)
	return builds.Transition{
		EventID: fmt.Sprintf("evt_%012d_%d", seq, now.UnixNano()), Seq: seq, Time: now,
		From: builds.Started, To: builds.Finished,
		Build: builds.Build{ID: seq, ProjectID: 1 + seq%20, Number: seq, State: builds.Finished, Result: builds.Passed,
			Ref: "refs/heads/main", Branch: "main", SHA: "3f786850e387550fdab836ed7e6dc881de23001b",
			Author: "Ann Example", AuthorEmail: "ann@example.com", Message: "Make the pipeline faster (#1234)",
			CreatedAt: started.Add(-time.Second), StartedAt: &started, FinishedAt: &now},
		Project:  builds.ProjectRef{ID: 1 + seq%20, Name: fmt.Sprintf("project-%d", seq%20), OwnerID: 1},
		Previous: &builds.Previous{Number: seq - 1, Result: builds.Failed},
	}
}

// receiver records what the consumers receive.
type receiver struct {
	mu        sync.Mutex
	consumers int
	want      int
	seen      map[string]int // event id → deliveries to all consumers
	complete  int            // events seen by every consumer
	dups      int
	lat       []time.Duration
	done      chan struct{}
	// commitAt, when set, gives the commit time of a build's transition;
	// otherwise latency is measured from the event's time.
	commitAt func(buildID int64) (time.Time, bool)
}

func newReceiver(consumers int) *receiver { return &receiver{consumers: consumers} }

func (r *receiver) reset(want int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.want, r.seen, r.complete, r.dups, r.lat = want, map[string]int{}, 0, 0, make([]time.Duration, 0, want*r.consumers)
	r.done = make(chan struct{})
}

func (r *receiver) consumer(int) bridge.Consumer {
	return func(_ context.Context, ev event.Envelope) error {
		lat := time.Since(ev.Time)
		if r.commitAt != nil && ev.Build != nil {
			// CreateBuild returns a moment after its commit; a consumer
			// can see the event before the benchmark stamps it.
			if at, ok := r.commitAt(ev.Build.ID); ok {
				lat = time.Since(at)
			}
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.seen == nil {
			return nil
		}
		r.seen[ev.ID]++
		if r.seen[ev.ID] > r.consumers {
			r.dups++
			return nil
		}
		r.lat = append(r.lat, lat)
		if r.seen[ev.ID] == r.consumers {
			r.complete++
			if r.complete == r.want {
				close(r.done)
			}
		}
		return nil
	}
}

func (r *receiver) wait(timeout time.Duration) error {
	r.mu.Lock()
	done := r.done
	r.mu.Unlock()
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
		r.mu.Lock()
		defer r.mu.Unlock()
		return fmt.Errorf("only %d of %d events reached every consumer within %s", r.complete, r.want, timeout)
	}
}

func (r *receiver) latencies() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.lat)
}

func (r *receiver) duplicates() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dups
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return out
}
