package bus

import (
	"context"
	"fmt"
	"sync"
	"time"

	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
)

// subscriber is a watermill-nats JetStream subscriber bound to durable
// consumers that the bus provisions itself. Because watermill-nats did not
// create them, nats.go never deletes them when the subscription ends.
type subscriber struct {
	b       *Bus
	durable string
	nc      *nats.Conn
	wm      *wmnats.Subscriber

	mu      sync.Mutex     // orders SubscribeBatches' batchWG.Add before Close's Wait
	closing chan struct{}  // closed by Close, under mu: SubscribeBatches' goroutines stop
	batchWG sync.WaitGroup // SubscribeBatches' goroutines

	closeOnce sync.Once
	closeErr  error
}

var (
	_ message.Subscriber           = (*subscriber)(nil)
	_ message.SubscribeInitializer = (*subscriber)(nil)
)

// Subscriber returns a subscriber reading each topic it subscribes to
// through the durable consumer of that name (one per topic). Several
// subscribers with the same durable name, in this process or in others
// sharing the bus, share the messages. Messages must be acked or nacked;
// a nacked message comes back after an exponential delay between RetryMin
// and RetryMax, one not acked within AckWait comes back at once. The
// subscriber also hands messages over in batches (SubscribeBatches).
func (b *Bus) Subscriber(durable string) (message.Subscriber, error) {
	if err := validDurable(durable); err != nil {
		return nil, fmt.Errorf("bus: %w", err)
	}
	if b.isClosed() {
		return nil, ErrClosed
	}
	nc, err := b.connect(b.cfg.Name + "-" + durable)
	if err != nil {
		return nil, err
	}
	ns := b.cfg.Namespace
	wm, err := wmnats.NewSubscriberWithNatsConn(nc, wmnats.SubscriberSubscriptionConfig{
		Unmarshaler:      &wmnats.NATSMarshaler{},
		SubscribersCount: 1, // one at a time keeps the stream's order
		AckWaitTimeout:   b.cfg.AckWait,
		CloseTimeout:     b.cfg.CloseTimeout,
		SubscribeTimeout: b.cfg.RequestTimeout,
		SubjectCalculator: func(queueGroup, topic string) *wmnats.SubjectDetail {
			return &wmnats.SubjectDetail{Primary: ns + "." + topic, QueueGroup: queueGroup}
		},
		NakDelay:         backoff{min: b.cfg.RetryMin, max: b.cfg.RetryMax},
		QueueGroupPrefix: durable, // the consumers' deliver group
		JetStream: wmnats.JetStreamConfig{
			AutoProvision: false,
			AckAsync:      !b.cfg.AckSync,
			DurablePrefix: durable,
			// The default names the durable after the prefix alone; say so
			// explicitly rather than depend on it.
			DurableCalculator: func(prefix, _ string) string { return prefix },
			// Without ManualAck nats.go acks every message when the
			// callback returns, also one that watermill discarded while
			// closing: that message would be lost.
			SubscribeOptions: []nats.SubOpt{nats.ManualAck()},
		},
	}, watermillLogger(b.log.With("durable", durable)))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("bus: subscriber %s: %w", durable, err)
	}
	s := &subscriber{b: b, durable: durable, nc: nc, wm: wm, closing: make(chan struct{})}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		nc.Close()
		return nil, ErrClosed
	}
	b.subs[s] = struct{}{}
	return s, nil
}

// SubscribeInitialize provisions the topic's stream and this subscriber's
// durable consumer of it. Subscribe calls it; calling it earlier makes the
// consumer keep every message published from then on.
func (s *subscriber) SubscribeInitialize(topic string) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.b.cfg.RequestTimeout)
	defer cancel()
	return s.b.EnsureConsumer(ctx, topic, s.durable)
}

// Subscribe provisions the durable consumer of topic and starts receiving
// its messages. The channel closes when ctx is done or the subscriber
// closes.
func (s *subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if err := s.SubscribeInitialize(topic); err != nil {
		return nil, err
	}
	ch, err := s.wm.Subscribe(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("bus: subscribe %s to %q: %w", s.durable, topic, err)
	}
	return ch, nil
}

// Close ends the subscriptions (the durable consumers stay) and closes the
// subscriber's connection. Messages delivered and not yet acked come back
// after AckWait (those a batch subscription held and had not handed over
// come back at once). Close is idempotent.
func (s *subscriber) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		close(s.closing)
		s.mu.Unlock()
		s.batchWG.Wait() // each gives back what it holds, bounded by CloseTimeout
		if err := s.wm.Close(); err != nil {
			s.closeErr = fmt.Errorf("bus: close subscriber %s: %w", s.durable, err)
		}
		// watermill drains the connection without waiting for the drain.
		deadline := time.Now().Add(s.b.cfg.CloseTimeout)
		for !s.nc.IsClosed() && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		s.nc.Close()
		s.b.mu.Lock()
		delete(s.b.subs, s)
		s.b.mu.Unlock()
	})
	return s.closeErr
}

// backoff is the delay before a nacked message is delivered again:
// min·2^(n-1), capped at max, for the n-th delivery.
type backoff struct{ min, max time.Duration }

var _ wmnats.Delay = backoff{}

func (d backoff) WaitTime(delivered uint64) time.Duration {
	w := d.min
	for i := uint64(1); i < delivered && w < d.max; i++ {
		w *= 2
	}
	return min(w, d.max)
}
