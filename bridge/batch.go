package bridge

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/buildbridge/buildbridge/event"
)

// BatchConsumer handles build-state-changed events several at a time, in
// publication order. Returning an error refuses every event of the batch:
// they are all delivered again later, so a consumer must take an event
// twice without harm (the delivery engine de-duplicates by event id).
type BatchConsumer func(ctx context.Context, evs []event.Envelope) error

// batchSubscriber is a subscriber that hands its messages over in
// batches; bus subscribers are (bus.Bus.Subscriber, SubscribeBatches).
type batchSubscriber interface {
	SubscribeBatches(ctx context.Context, topic string, max int) (<-chan []*message.Message, error)
}

type batchConsumer struct {
	name string
	fn   BatchConsumer
	sub  batchSubscriber
}

// batchLoops are the goroutines of the batch consumers. The bridge's mu
// guards every field but wg and once.
type batchLoops struct {
	list    []*batchConsumer
	stop    chan struct{}   // made by Run; closed when the loops must stop taking batches
	ctx     context.Context // the consumers' context: cancelled CloseTimeout after stop
	cancel  context.CancelFunc
	stopped bool
	wg      sync.WaitGroup
	once    sync.Once
	err     error
}

// begin readies the loops for Run and returns the consumers to start.
// Called with the bridge's mu held.
func (l *batchLoops) begin(ctx context.Context) []*batchConsumer {
	l.stop = make(chan struct{})
	// A batch in hand is finished when Run's context ends: the consumers'
	// context ends only CloseTimeout after the stop.
	l.ctx, l.cancel = context.WithCancel(context.WithoutCancel(ctx))
	return slices.Clone(l.list)
}

// AddBatchConsumer adds a durable consumer of build-state-changed events
// that receives them in batches: every event the bus has delivered and
// fn has not seen yet, up to MaxBatch, in publication order. A batch is
// handed over as soon as there is one event (a lone event is not delayed);
// while fn works, the events that arrive wait and form the next batch.
// So a consumer that persists what it receives commits once for many
// events under load.
//
// Otherwise it is AddConsumer's durable consumer: provisioned at once,
// resumed after a restart, a malformed event logged, counted and
// acknowledged (fn does not see it). After fn returns nil every event of
// the batch is acknowledged; after an error none is, and they all come
// back after the bus's backoff, each in a batch of its own (so one event
// fn cannot take does not keep refusing the others). A refused event
// comes back behind the events published after it: order by Seq where it
// matters.
//
// The subscriber (Config.Subscriber) must hand over batches, as bus
// subscribers do.
func (b *Bridge) AddBatchConsumer(name string, fn BatchConsumer) error {
	if fn == nil {
		return fmt.Errorf("bridge: consumer %q: nil function", name)
	}
	sub, err := b.claim(name)
	if err != nil {
		return err
	}
	bsub, ok := sub.(batchSubscriber)
	if !ok {
		b.release(name)
		return fmt.Errorf("bridge: consumer %q: the subscriber (%T) does not hand over batches", name, sub)
	}
	c := &batchConsumer{name: name, fn: fn, sub: bsub}
	b.mu.Lock()
	b.batches.list = append(b.batches.list, c)
	running := b.batches.stop != nil
	b.mu.Unlock()
	if running {
		// Added while running (or stopping: startBatch then does nothing).
		if err := b.startBatch(c); err != nil {
			return fmt.Errorf("bridge: %w", err)
		}
	}
	return nil
}

// startBatch subscribes a batch consumer and starts its loop, unless the
// loops are stopping.
func (b *Bridge) startBatch(c *batchConsumer) error {
	b.mu.Lock()
	l := &b.batches
	if l.stopped {
		b.mu.Unlock()
		return nil
	}
	// Under mu, before stopBatches can mark the loops stopped and wait.
	l.wg.Add(1)
	stop, ctx := l.stop, l.ctx
	b.mu.Unlock()
	// The subscription lives as long as the loop: the loop ends it.
	sctx, cancel := context.WithCancel(context.Background())
	ch, err := c.sub.SubscribeBatches(sctx, event.TopicBuildStateChanged, b.cfg.MaxBatch)
	if err != nil {
		cancel()
		l.wg.Done()
		return fmt.Errorf("consumer %q: %w", c.name, err)
	}
	go func() {
		defer l.wg.Done()
		defer cancel()
		b.batchLoop(ctx, c, ch, stop)
	}()
	return nil
}

// batchLoop hands each batch to its consumer until stop closes or the
// subscription ends. A batch received is always finished: stop is only
// looked at between batches.
func (b *Bridge) batchLoop(ctx context.Context, c *batchConsumer, ch <-chan []*message.Message, stop <-chan struct{}) {
	m, size := b.consumerMetrics(c.name), b.m.batchSize.WithLabelValues(c.name)
	for {
		select {
		case <-stop:
			return
		default:
		}
		select {
		case msgs, ok := <-ch:
			if !ok {
				return
			}
			size.Observe(float64(len(msgs)))
			b.handleBatch(ctx, c, m, msgs)
		case <-stop:
			return
		}
	}
}

// handleBatch decodes a batch, hands its events to the consumer in one
// call, and acknowledges the messages, or refuses them all when the
// consumer failed. Malformed messages are acknowledged either way.
func (b *Bridge) handleBatch(ctx context.Context, c *batchConsumer, m consumerMetrics, msgs []*message.Message) {
	evs := make([]event.Envelope, 0, len(msgs))
	ok := make([]bool, len(msgs)) // decoded: acked or nacked with the batch
	for i, msg := range msgs {
		ev, decoded := b.decodeEvent(c.name, m, msg)
		if !decoded {
			continue
		}
		ok[i] = true
		evs = append(evs, ev)
	}
	var err error
	if len(evs) > 0 {
		start := time.Now()
		err = c.fn(ctx, evs)
		m.took.Observe(time.Since(start).Seconds())
	}
	if err != nil {
		m.errs.Add(float64(len(evs)))
		b.log.Error("consumer refused a batch; its events come back", "consumer", c.name, "events", len(evs),
			"first_event_id", evs[0].ID, "last_event_id", evs[len(evs)-1].ID, "err", err)
	}
	for i, msg := range msgs {
		if err != nil && ok[i] {
			msg.Nack()
		} else {
			msg.Ack()
		}
	}
}

// stopBatches stops the batch loops once: they stop taking batches at
// once and may finish the batch in hand for CloseTimeout, after which
// their context is cancelled. It returns when they have stopped (or did
// not within another CloseTimeout: a consumer ignoring its context).
func (b *Bridge) stopBatches() error {
	l := &b.batches
	l.once.Do(func() {
		b.mu.Lock()
		l.stopped = true
		stop, cancel := l.stop, l.cancel
		b.mu.Unlock()
		if stop == nil {
			return // Run never began
		}
		defer cancel()
		close(stop)
		done := make(chan struct{})
		go func() {
			l.wg.Wait()
			close(done)
		}()
		select {
		case <-done:
			return
		case <-time.After(b.cfg.CloseTimeout):
			b.log.Warn("batch consumers still busy after CloseTimeout; cancelling them", "timeout", b.cfg.CloseTimeout)
		}
		cancel()
		select {
		case <-done:
		case <-time.After(b.cfg.CloseTimeout):
			l.err = fmt.Errorf("bridge: batch consumers did not stop within %s of their context's end", b.cfg.CloseTimeout)
		}
	})
	return l.err
}
