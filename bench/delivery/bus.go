package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/buildbridge/buildbridge/bridge"
	"github.com/buildbridge/buildbridge/bus"
	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/routes"
	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/sinks/delivery"
	"github.com/buildbridge/buildbridge/store"
)

// busPath is the hub's path from the bus to the receiver: events on an
// embedded bus (in a temporary directory), the bridge's batch consumer,
// the rules, Enqueue, the engine and the webhook sink. Only the relay is
// left out: the bench publishes the events as the relay does, in
// Publish calls of -publish-batch.
type busPath struct {
	bus    *bus.Bus
	br     *bridge.Bridge
	eng    *delivery.Engine
	store  *store.DB
	rules  *routes.Rules
	closes []func()

	// gate, when set, holds the consumer until it is closed.
	gate chan struct{}

	mu    sync.Mutex
	sizes []int // events per batch handed to the consumer
}

func benchRules(o options, url string) (*routes.Rules, error) {
	return routes.Parse("bench-rules.yaml", []byte(`sinks:
  hook:
    type: webhook
    url: `+url+`
    secret: `+secret+`
    concurrency: `+strconv.Itoa(o.concurrency)+`
routes:
  - name: finished builds
    match:
      state: FINISHED
    to: [hook]
`), routes.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
}

// openBusPath opens the path; gate, if not nil, holds the consumer until
// it is closed.
func openBusPath(o options, recv *receiver, gate chan struct{}) (*busPath, error) {
	p := &busPath{gate: gate}
	ok := false
	defer func() {
		if !ok {
			p.close()
		}
	}()
	var err error
	if p.rules, err = benchRules(o, recv.url); err != nil {
		return nil, err
	}
	s, cleanup, err := openStore(o)
	if err != nil {
		return nil, err
	}
	p.store = s
	p.closes = append(p.closes, cleanup)
	cfg, _ := p.rules.Sink("hook")
	if p.eng, err = newEngine(o, s, cfg); err != nil {
		return nil, err
	}
	p.closes = append(p.closes, func() { p.eng.Close() })
	dir, err := os.MkdirTemp("", "bench-delivery-bus")
	if err != nil {
		return nil, err
	}
	p.closes = append(p.closes, func() { os.RemoveAll(dir) })
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	if p.bus, err = bus.Open(context.Background(), bus.Config{DataDir: dir, Logger: quiet, MaxAckPending: o.maxAckPend}); err != nil {
		return nil, err
	}
	p.closes = append(p.closes, func() { p.bus.Close() })
	if p.br, err = bridge.New(bridge.Config{Subscriber: p.bus.Subscriber, Publisher: p.bus.Publisher(),
		Logger: quiet, MaxBatch: o.maxBatch}); err != nil {
		return nil, err
	}
	if err := p.br.AddBatchConsumer("deliveries", p.consume); err != nil {
		p.br.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- p.br.Run(ctx) }()
	p.closes = append(p.closes, func() {
		cancel()
		<-runErr
		p.br.Close()
	})
	select {
	case <-p.br.Running():
	case err := <-runErr:
		return nil, err
	case <-time.After(10 * time.Second):
		return nil, errors.New("bridge not running after 10s")
	}
	ok = true
	return p, nil
}

// consume is the hub's deliveries consumer (cmd/buildbridge): the
// deliveries of every event of the batch in one Enqueue.
func (p *busPath) consume(ctx context.Context, evs []event.Envelope) error {
	if p.gate != nil {
		select {
		case <-p.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	p.mu.Lock()
	p.sizes = append(p.sizes, len(evs))
	p.mu.Unlock()
	var ds []sinks.Delivery
	for _, ev := range evs {
		ds = append(ds, p.rules.Match(ev)...)
	}
	return p.eng.Enqueue(ctx, ds)
}

func (p *busPath) batchSizes() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.sizes)
}

// close stops the bridge before the engine and the bus, the store last.
func (p *busPath) close() {
	for i := len(p.closes) - 1; i >= 0; i-- {
		p.closes[i]()
	}
	p.closes = nil
}

// publish publishes events as the relay does: the event id as message id,
// the envelope as payload.
func (p *busPath) publish(evs []event.Envelope) error {
	msgs := make([]*message.Message, len(evs))
	for i, ev := range evs {
		raw, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		msgs[i] = message.NewMessage(ev.ID, raw)
		msgs[i].Metadata.Set("type", ev.Type)
	}
	return p.bus.Publisher().Publish(event.TopicBuildStateChanged, msgs...)
}

// sameBodies checks that the rules render, for an event that went
// through the bus, the very body the bare loop posts.
func (p *busPath) sameBodies(ev event.Envelope, body []byte) error {
	raw, _ := json.Marshal(ev)
	var back event.Envelope
	if err := json.Unmarshal(raw, &back); err != nil {
		return err
	}
	for _, d := range p.rules.Match(back) {
		if d.Sink == "hook" {
			if !bytes.Equal(d.Body, body) {
				return fmt.Errorf("the rules render another body than the bare loop posts:\n%s\n%s", d.Body, body)
			}
			return nil
		}
	}
	return errors.New("the rules give the event no webhook delivery")
}

// busThroughput runs the bare loop and the bus path in turn, -rounds
// times, on the same bodies and the same receiver.
func busThroughput(o options, recv *receiver) error {
	var bareRates, rates, ratios []float64
	var sizes []int
	for r := range o.rounds {
		b, e, sz, err := busRound(o, recv, r)
		if err != nil {
			return err
		}
		bareRates, rates, ratios = append(bareRates, b), append(rates, e), append(ratios, e/b)
		sizes = append(sizes, sz...)
	}
	fmt.Printf("bus path: median of %d rounds: bare %.0f /s, bus → engine %.0f /s, engine / bare %.0f%% (rounds %s; target ≥ 50%%)\n",
		o.rounds, median(bareRates), median(rates), 100*median(ratios), percents(ratios))
	fmt.Printf("bus path: batch sizes over all rounds: %s\n", describeSizes(sizes))
	return nil
}

func percents(v []float64) string {
	var out []string
	for _, x := range v {
		out = append(out, fmt.Sprintf("%.0f", 100*x))
	}
	return fmt.Sprint(out)
}

func busRound(o options, recv *receiver, round int) (bareRate, rate float64, sizes []int, err error) {
	evs, bodies := testEvents(10_000_000+round*o.n, o.n)
	if bareRate, err = bareLoop(o, recv, evs, bodies, round); err != nil {
		return 0, 0, nil, err
	}

	publishAll := func(p *busPath) error {
		for i := 0; i < len(evs); i += o.publishBatch {
			if err := p.publish(evs[i:min(i+o.publishBatch, len(evs))]); err != nil {
				return fmt.Errorf("publish: %w", err)
			}
		}
		return nil
	}
	// With -prepublish the events are in the stream before the clock
	// starts (the consumer held back meanwhile), as the bare loop's are
	// made before its clock starts: the clock then measures the consumer
	// and the engine, not the publisher, which is the relay's work.
	var gate chan struct{}
	if o.prepublish {
		gate = make(chan struct{})
	}
	p, err := openBusPath(o, recv, gate)
	if err != nil {
		return 0, 0, nil, err
	}
	defer p.close()
	if err := p.sameBodies(evs[0], bodies[0]); err != nil {
		return 0, 0, nil, err
	}
	if o.prepublish {
		if err := publishAll(p); err != nil {
			return 0, 0, nil, err
		}
	}
	done := recv.expect(o.n)
	stopProfile, err := profile(o)
	if err != nil {
		return 0, 0, nil, err
	}
	defer stopProfile()
	cpu0 := cpuTime()
	start := time.Now()
	if gate != nil {
		close(gate)
	}
	pubErr := make(chan error, 1)
	var published time.Duration
	go func() {
		defer close(pubErr)
		if !o.prepublish {
			if err := publishAll(p); err != nil {
				pubErr <- err
				return
			}
		}
		published = time.Since(start)
	}()
	select {
	case <-done:
	case err := <-pubErr:
		if err != nil {
			return 0, 0, nil, fmt.Errorf("publish: %w", err)
		}
		select {
		case <-done:
		case <-time.After(o.timeout):
			return 0, 0, nil, fmt.Errorf("bus path: %d of %d received within %s", len(recv.arrivals()), o.n, o.timeout)
		}
	case <-time.After(o.timeout):
		return 0, 0, nil, fmt.Errorf("bus path: %d of %d received within %s", len(recv.arrivals()), o.n, o.timeout)
	}
	received := time.Since(start)
	if err := <-pubErr; err != nil {
		return 0, 0, nil, fmt.Errorf("publish: %w", err)
	}
	if err := waitSucceeded(p.store, o.n, start.Add(o.timeout)); err != nil {
		return 0, 0, nil, err
	}
	logged := time.Since(start)
	cpu := cpuTime() - cpu0
	stopProfile()
	rate = float64(o.n) / logged.Seconds()
	sizes = p.batchSizes()
	fmt.Printf("round %d  bus → engine (durable): %6d webhooks in %7.3fs = %8.0f /s  (%s CPU per webhook, %.2f cores; published at %.3fs, received at %.3fs, attempts logged at %.3fs; %d batches, %s)\n",
		round+1, o.n, logged.Seconds(), rate, perItem(cpu, o.n), cpu.Seconds()/logged.Seconds(), published.Seconds(), received.Seconds(), logged.Seconds(), len(sizes), describeSizes(sizes))
	fmt.Printf("round %d  bus → engine / bare loop: %.0f%%\n", round+1, 100*rate/bareRate)
	if b := recv.bad.Load(); b > 0 {
		return 0, 0, nil, fmt.Errorf("%d requests with a bad signature", b)
	}
	return bareRate, rate, sizes, nil
}

// describeSizes summarizes batch sizes: mean, percentiles weighted by
// events (the batch the median event went in) and by batches.
func describeSizes(sizes []int) string {
	if len(sizes) == 0 {
		return "no batches"
	}
	s := slices.Sorted(slices.Values(sizes))
	total := 0
	for _, n := range s {
		total += n
	}
	// The batch size the event at fraction f of all events went in.
	byEvent := func(f float64) int {
		seen, want := 0, int(f*float64(total))
		for _, n := range s {
			if seen += n; seen > want {
				return n
			}
		}
		return s[len(s)-1]
	}
	buckets := []int{1, 2, 4, 8, 16, 32, 64, 128, 256}
	var hist []string
	for i, lo := range buckets {
		hi := 1 << 30
		if i+1 < len(buckets) {
			hi = buckets[i+1]
		}
		c := 0
		for _, n := range s {
			if n >= lo && n < hi {
				c++
			}
		}
		if c > 0 {
			label := strconv.Itoa(lo)
			if hi-lo > 1 {
				label = fmt.Sprintf("%d–%d", lo, min(hi-1, 1<<20))
			}
			if hi == 1<<30 {
				label = fmt.Sprintf("≥%d", lo)
			}
			hist = append(hist, fmt.Sprintf("%s: %d", label, c))
		}
	}
	return fmt.Sprintf("mean %.1f events/batch, median batch %d, max %d; per event: median %d, p10 %d, p90 %d; batches by size {%s}",
		float64(total)/float64(len(s)), s[len(s)/2], s[len(s)-1], byEvent(0.5), byEvent(0.1), byEvent(0.9), strings.Join(hist, ", "))
}

// busLatency publishes events one by one at -rate for -duration, as the
// relay does when transitions come one at a time, and reports the delay
// from the publish to the receiver's handler.
func busLatency(o options, recv *receiver) error {
	p, err := openBusPath(o, recv, nil)
	if err != nil {
		return err
	}
	defer p.close()
	lat, achieved, err := paced(o, recv, func(i int) (string, time.Time, error) {
		ev := testEvent(20_000_000 + i)
		id := delivery.MessageID(ev.ID, "hook", recv.url)
		sent := time.Now()
		return id, sent, p.publish([]event.Envelope{ev})
	})
	if err != nil {
		return err
	}
	fmt.Printf("bus path latency at %d events/s for %s (%d events, %.0f/s achieved), publish → webhook received: %s  (target p99 < 50ms)\n",
		o.rate, o.duration, len(lat), achieved, percentiles(lat))
	fmt.Printf("bus path latency: batch sizes: %s\n", describeSizes(p.batchSizes()))
	return nil
}
