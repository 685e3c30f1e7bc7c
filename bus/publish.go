package bus

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// publisher publishes watermill messages on JetStream in watermill-nats'
// wire format (payload as data, UUID and metadata as headers), with the
// UUID as the JetStream message id: the same de-duplication as
// watermill-nats' TrackMsgId. Unlike watermill-nats' publisher, which waits
// for each message's ack before sending the next, a Publish of several
// messages sends them all and then waits for their acks: one round trip
// per batch.
type publisher struct {
	b         *Bus
	marshaler wmnats.NATSMarshaler
}

var _ message.Publisher = (*publisher)(nil)

// PublishError is returned by Publish when some messages were not
// acknowledged. The others were stored (or were duplicates) and need not
// be sent again.
type PublishError struct {
	Topic string
	// Failed maps the UUID of each failed message to its error.
	Failed map[string]error
	// Total is the number of messages in the Publish call.
	Total int
}

func (e *PublishError) Error() string {
	ids := make([]string, 0, len(e.Failed))
	for id := range e.Failed {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	first := e.Failed[ids[0]]
	return fmt.Sprintf("bus: publish to %q: %d of %d messages failed (%s: %v)",
		e.Topic, len(e.Failed), e.Total, ids[0], first)
}

// Unwrap returns the failures, so that errors.Is sees their causes.
func (e *PublishError) Unwrap() []error {
	errs := make([]error, 0, len(e.Failed))
	for _, err := range e.Failed {
		errs = append(errs, err)
	}
	return errs
}

// MessageFailed reports whether the message with this UUID failed; the
// relay uses it to delete exactly the rows that were published.
func (e *PublishError) MessageFailed(uuid string) bool {
	_, ok := e.Failed[uuid]
	return ok
}

// Publish sends messages to a topic and waits until JetStream has
// acknowledged each of them or RequestTimeout passed.
func (p *publisher) Publish(topic string, msgs ...*message.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	b := p.b
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.RequestTimeout)
	defer cancel()
	if err := b.EnsureTopic(ctx, topic); err != nil {
		return err
	}
	subject := b.Subject(topic)
	perr := &PublishError{Topic: topic, Failed: map[string]error{}, Total: len(msgs)}

	if len(msgs) == 1 {
		m := msgs[0]
		nm, err := p.marshal(subject, m)
		if err == nil {
			_, err = b.js.PublishMsg(ctx, nm, jetstream.WithMsgID(m.UUID))
		}
		if err != nil {
			perr.Failed[m.UUID] = err
			p.forgetDeletedStream(topic, perr)
			return perr
		}
		return nil
	}

	futures := make([]jetstream.PubAckFuture, len(msgs))
	for i, m := range msgs {
		nm, err := p.marshal(subject, m)
		if err == nil {
			futures[i], err = b.js.PublishMsgAsync(nm, jetstream.WithMsgID(m.UUID))
		}
		if err != nil {
			perr.Failed[m.UUID] = err
		}
	}
	for i, f := range futures {
		if f == nil {
			continue
		}
		select {
		case <-f.Ok():
		case err := <-f.Err():
			perr.Failed[msgs[i].UUID] = err
		case <-ctx.Done():
			// The async publisher times out each future itself; this is
			// a backstop so Publish never blocks past its deadline.
			perr.Failed[msgs[i].UUID] = fmt.Errorf("no ack: %w", ctx.Err())
		}
	}
	if len(perr.Failed) > 0 {
		p.forgetDeletedStream(topic, perr)
		return perr
	}
	return nil
}

// forgetDeletedStream makes the next Publish provision the topic's stream
// again when the server said no stream holds the subject (an operator
// deleted it).
func (p *publisher) forgetDeletedStream(topic string, perr *PublishError) {
	if errors.Is(perr, jetstream.ErrNoStreamResponse) || errors.Is(perr, nats.ErrNoResponders) {
		p.b.mu.Lock()
		delete(p.b.topics, topic)
		p.b.mu.Unlock()
	}
}

func (p *publisher) marshal(subject string, m *message.Message) (*nats.Msg, error) {
	if strings.TrimSpace(m.UUID) == "" {
		return nil, errors.New("message has no UUID (the bus de-duplicates on it)")
	}
	return p.marshaler.Marshal(subject, m)
}

// Close does nothing: the connection belongs to the Bus. (watermill's
// router closes a handler's publisher when the handler stops.)
func (p *publisher) Close() error { return nil }
