package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// SubscribeBatches provisions the durable consumer of topic (as
// Subscribe does) and hands its messages over in batches: a consumer
// that commits what it receives can then commit many messages at once
// instead of one at a time.
//
// Each batch holds every message the server has delivered and nobody has
// taken yet, up to max, in delivery order; a batch is handed over as soon
// as there is one message, without waiting for more, so a lone message is
// not delayed. The next batch is formed once every message of the
// previous one is acked or nacked (or AckWait passed): what arrived in the
// meantime goes together. The server delivers at most MaxAckPending
// messages not yet acked, which bounds a batch too.
//
// Every message must be acked or nacked, as with Subscribe: a nacked
// message comes back after the backoff between RetryMin and RetryMax. A
// message delivered again (refused, or not acked within AckWait) comes in
// a batch of its own, so that a message its consumer cannot take does not
// keep refusing the messages that happened to share its batch.
//
// Several subscriptions of one durable, in this process or in others,
// share its messages as with Subscribe (the consumer's deliver group);
// they may mix Subscribe and SubscribeBatches.
//
// The channel closes when ctx is done or the subscriber closes. Messages
// delivered and not yet handed over are then given back to the server at
// once (nack without delay); a batch already handed over is still acked
// or nacked as its consumer says, until the subscriber closes.
func (s *subscriber) SubscribeBatches(ctx context.Context, topic string, max int) (<-chan []*message.Message, error) {
	if max < 1 {
		return nil, fmt.Errorf("bus: subscribe %s to %q in batches: max %d, want at least 1", s.durable, topic, max)
	}
	if err := s.SubscribeInitialize(topic); err != nil {
		return nil, err
	}
	s.mu.Lock()
	select {
	case <-s.closing:
		s.mu.Unlock()
		return nil, ErrClosed
	default:
	}
	s.batchWG.Add(1)
	s.mu.Unlock()
	out, err := s.subscribeBatches(ctx, topic, max)
	if err != nil {
		s.batchWG.Done()
		return nil, fmt.Errorf("bus: subscribe %s to %q in batches: %w", s.durable, topic, err)
	}
	return out, nil
}

func (s *subscriber) subscribeBatches(ctx context.Context, topic string, max int) (<-chan []*message.Message, error) {
	b := s.b
	js, err := jetstream.New(s.nc, jetstream.WithDefaultTimeout(b.cfg.RequestTimeout))
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, b.cfg.RequestTimeout)
	defer cancel()
	cons, err := js.PushConsumer(rctx, b.Stream(topic), s.durable)
	if err != nil {
		return nil, err
	}
	bs := &batchSub{
		s: s, ctx: ctx, max: max,
		log:    b.log.With("durable", s.durable, "topic", topic),
		delay:  backoff{min: b.cfg.RetryMin, max: b.cfg.RetryMax},
		out:    make(chan []*message.Message),
		notify: make(chan struct{}, 1),
	}
	bs.cc, err = cons.Consume(bs.receive, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		bs.log.Error("bus batch subscription", "err", err)
	}))
	if err != nil {
		return nil, err
	}
	go bs.run()
	return bs.out, nil
}

// batchSub is one SubscribeBatches subscription. The NATS client's
// delivery goroutine appends to queue; run forms the batches, hands them
// over and relays their acks, and is owned by the subscriber (batchWG).
type batchSub struct {
	s     *subscriber
	ctx   context.Context
	max   int
	log   *slog.Logger
	delay backoff
	cc    jetstream.ConsumeContext
	out   chan []*message.Message

	mu     sync.Mutex
	queue  []jetstream.Msg
	notify chan struct{} // a message was queued
}

func (bs *batchSub) receive(m jetstream.Msg) {
	bs.mu.Lock()
	bs.queue = append(bs.queue, m)
	bs.mu.Unlock()
	select {
	case bs.notify <- struct{}{}:
	default:
	}
}

func (bs *batchSub) run() {
	defer bs.s.batchWG.Done()
	defer close(bs.out)
	defer bs.stop()
	for {
		batch := bs.take()
		if batch == nil {
			return
		}
		msgs := make([]*message.Message, len(batch))
		var um wmnats.NATSMarshaler
		for i, m := range batch {
			// The NATS marshaler reads the UUID and metadata from the
			// headers; it has no failure of its own.
			wm, _ := um.Unmarshal(&nats.Msg{Subject: m.Subject(), Reply: m.Reply(), Header: m.Headers(), Data: m.Data()})
			wm.SetContext(bs.ctx)
			msgs[i] = wm
		}
		select {
		case bs.out <- msgs:
		case <-bs.ctx.Done():
			bs.putBack(batch)
			return
		case <-bs.s.closing:
			bs.putBack(batch)
			return
		}
		if !bs.relayAcks(batch, msgs) {
			return
		}
	}
}

// take waits for delivered messages and takes the next batch: a message
// delivered again alone, or the run of first deliveries at the head of
// the queue, up to max. It returns nil when the subscription ends.
func (bs *batchSub) take() []jetstream.Msg {
	for {
		bs.mu.Lock()
		if len(bs.queue) > 0 {
			n := 1
			if !redelivered(bs.queue[0]) {
				for n < len(bs.queue) && n < bs.max && !redelivered(bs.queue[n]) {
					n++
				}
			}
			batch := bs.queue[:n:n]
			if bs.queue = bs.queue[n:]; len(bs.queue) == 0 {
				bs.queue = nil
			}
			bs.mu.Unlock()
			return batch
		}
		bs.mu.Unlock()
		select {
		case <-bs.notify:
		case <-bs.ctx.Done():
			return nil
		case <-bs.s.closing:
			return nil
		}
	}
}

// putBack returns a batch not handed over to the head of the queue, for
// stop to give back once the subscription has ended (given back before,
// the server could deliver it to this subscription again, too late).
func (bs *batchSub) putBack(batch []jetstream.Msg) {
	bs.mu.Lock()
	bs.queue = append(batch, bs.queue...)
	bs.mu.Unlock()
}

func redelivered(m jetstream.Msg) bool {
	md, err := m.Metadata()
	return err == nil && md.NumDelivered > 1
}

// relayAcks passes the consumer's ack or nack of each message of a batch
// on to the server. It gives up after AckWait (the server delivers the
// rest again) and reports false when the subscriber closes.
func (bs *batchSub) relayAcks(batch []jetstream.Msg, msgs []*message.Message) bool {
	timeout := time.NewTimer(bs.s.b.cfg.AckWait)
	defer timeout.Stop()
	for i, wm := range msgs {
		select {
		case <-wm.Acked():
			bs.ack(batch[i])
		case <-wm.Nacked():
			bs.nak(batch[i])
		case <-timeout.C:
			bs.log.Warn("batch not acknowledged within AckWait; the server delivers the rest again",
				"acked", i, "batch", len(msgs))
			return true
		case <-bs.s.closing:
			return false
		}
	}
	return true
}

func (bs *batchSub) ack(m jetstream.Msg) {
	var err error
	if bs.s.b.cfg.AckSync {
		ctx, cancel := context.WithTimeout(context.Background(), bs.s.b.cfg.RequestTimeout)
		err = m.DoubleAck(ctx)
		cancel()
	} else {
		err = m.Ack()
	}
	if err != nil {
		// The server delivers the message again after AckWait.
		bs.log.Error("bus ack", "err", err)
	}
}

func (bs *batchSub) nak(m jetstream.Msg) {
	var delay time.Duration
	if md, err := m.Metadata(); err == nil {
		delay = bs.delay.WaitTime(md.NumDelivered)
	}
	if err := m.NakWithDelay(delay); err != nil {
		bs.log.Error("bus nack", "err", err)
	}
}

// nakNow gives messages back to the server for immediate redelivery (to
// another subscription of the durable, or to this node after a restart).
func (bs *batchSub) nakNow(batch []jetstream.Msg) {
	for _, m := range batch {
		if err := m.Nak(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			bs.log.Warn("bus nack on stop; the message comes back after AckWait", "err", err)
		}
	}
}

// stop ends the NATS subscription, letting the messages the client holds
// reach the queue, and then gives back everything not handed over: after
// the subscription ended, so that the server delivers it to another
// subscription of the durable (or to this node after a restart) rather
// than to this one.
func (bs *batchSub) stop() {
	bs.cc.Drain()
	select {
	case <-bs.cc.Closed():
	case <-time.After(bs.s.b.cfg.CloseTimeout):
		bs.log.Warn("bus batch subscription not drained", "after", bs.s.b.cfg.CloseTimeout)
	}
	bs.mu.Lock()
	left := bs.queue
	bs.queue = nil
	bs.mu.Unlock()
	bs.nakNow(left)
}
