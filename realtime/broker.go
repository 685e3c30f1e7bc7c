package realtime

import (
	"context"
	"errors"
	"sync"
)

// A Broker carries Messages between the Servers of a cluster. Publish
// sends a message to every subscribed Server, the publishing one
// included; messages from one publisher arrive in the order published.
type Broker interface {
	Publish(ctx context.Context, m Message) error
	// Subscribe registers h for every message published by any node and
	// returns a function that stops the delivery. h must not block for
	// long: it runs on the broker's delivery goroutine.
	Subscribe(h func(Message)) (unsubscribe func() error, err error)
}

// MessageKind says what a Message asks the nodes to do.
type MessageKind string

// Message kinds.
const (
	// KindEvent delivers Event with Data on Channels.
	KindEvent MessageKind = "event"
	// KindTerminateUser closes the connections signed in as UserID.
	KindTerminateUser MessageKind = "terminate_user"
	// KindBindSocket binds SocketID to UserID (see Server.BindSocket).
	KindBindSocket MessageKind = "bind_socket"
	// KindOwnerCounts carries Origin's subscription counts per bound user.
	KindOwnerCounts MessageKind = "owner_counts"
)

// Message is what a Broker carries. Brokers that cross process
// boundaries encode it (as JSON, with these field names).
type Message struct {
	Kind     MessageKind `json:"kind"`
	AppID    string      `json:"app_id"`
	Channels []string    `json:"channels,omitempty"`
	Event    string      `json:"event,omitempty"`
	Data     string      `json:"data,omitempty"`
	// ExcludeSocketID is the socket that must not receive the event.
	ExcludeSocketID string `json:"exclude_socket_id,omitempty"`
	// UserID is the sender of a presence client event, the user of
	// KindTerminateUser or the owner of KindBindSocket.
	UserID   string `json:"user_id,omitempty"`
	SocketID string `json:"socket_id,omitempty"`
	// Origin names the node that published the message. With
	// OriginDelivered set, that node has delivered it to its own
	// connections already (presence changes, delivered under the lock
	// that orders them) and skips it.
	Origin          string `json:"origin,omitempty"`
	OriginDelivered bool   `json:"origin_delivered,omitempty"`
	// Counts are Origin's live subscriptions per bound user
	// (KindOwnerCounts): changed ones, or with Full all of them, replacing
	// what Origin sent before. Receivers must not modify the map.
	Counts map[string]int `json:"counts,omitempty"`
	Full   bool           `json:"full,omitempty"`
}

// ErrBrokerClosed is returned by a closed MemoryBroker.
var ErrBrokerClosed = errors.New("realtime: broker closed")

// MemoryBroker is the in-process Broker. It delivers synchronously, on
// the publishing goroutine. Several Servers sharing one MemoryBroker form
// a cluster inside one process.
type MemoryBroker struct {
	mu       sync.RWMutex
	handlers map[int]func(Message)
	next     int
	closed   bool
}

// NewMemoryBroker returns an empty in-process broker.
func NewMemoryBroker() *MemoryBroker {
	return &MemoryBroker{handlers: make(map[int]func(Message))}
}

// Publish hands m to every subscriber before returning.
func (b *MemoryBroker) Publish(_ context.Context, m Message) error {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return ErrBrokerClosed
	}
	for _, h := range b.handlers {
		h(m)
	}
	return nil
}

// Subscribe registers h.
func (b *MemoryBroker) Subscribe(h func(Message)) (func() error, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrBrokerClosed
	}
	id := b.next
	b.next++
	b.handlers[id] = h
	return func() error {
		b.mu.Lock()
		delete(b.handlers, id)
		b.mu.Unlock()
		return nil
	}, nil
}

// Close stops all delivery.
func (b *MemoryBroker) Close() error {
	b.mu.Lock()
	b.closed = true
	clear(b.handlers)
	b.mu.Unlock()
	return nil
}
