package bus

import (
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
)

// Broadcast sends data to every Listen(topic) handler of every process on
// the bus, this one included. It is core NATS: at most once and not
// stored, for notices a node can also pick up by itself (a rules file to
// reread), never for events.
func (b *Bus) Broadcast(topic string, data []byte) error {
	if err := validTopic(topic); err != nil {
		return fmt.Errorf("bus: broadcast: %w", err)
	}
	if b.isClosed() {
		return ErrClosed
	}
	if err := b.nc.Publish(b.broadcastSubject(topic), data); err != nil {
		return fmt.Errorf("bus: broadcast %s: %w", topic, err)
	}
	return nil
}

// Listen calls fn with the data of every Broadcast on topic, one at a
// time, until stop is called or the bus closes.
func (b *Bus) Listen(topic string, fn func(data []byte)) (stop func(), err error) {
	if err := validTopic(topic); err != nil {
		return nil, fmt.Errorf("bus: listen: %w", err)
	}
	if fn == nil {
		return nil, errors.New("bus: listen: nil handler")
	}
	if b.isClosed() {
		return nil, ErrClosed
	}
	sub, err := b.nc.Subscribe(b.broadcastSubject(topic), func(m *nats.Msg) { fn(m.Data) })
	if err != nil {
		return nil, fmt.Errorf("bus: listen %s: %w", topic, err)
	}
	// The server must know the subscription before a Broadcast that
	// follows Listen may count on reaching it.
	if err := b.nc.Flush(); err != nil {
		sub.Unsubscribe()
		return nil, fmt.Errorf("bus: listen %s: %w", topic, err)
	}
	return func() { sub.Unsubscribe() }, nil
}

// broadcastSubject is outside the streams' subjects (Subject), so that no
// stream stores a broadcast.
func (b *Bus) broadcastSubject(topic string) string {
	return b.cfg.Namespace + "._broadcast." + topic
}
