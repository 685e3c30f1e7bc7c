package realtime

import (
	"context"
	"encoding/json"
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

	// The kinds below keep the cluster view (see ClusterConfig). Each
	// carries Origin; the state changes carry Seq, which Origin
	// increments by one per change, so that a receiver sees a lost one.

	// KindCounts carries Origin's changed subscription counts per channel
	// (Subs) and per bound user (Counts); 0 means none left.
	KindCounts MessageKind = "counts"
	// KindMemberAdded says that UserID, with UserInfo, is a member of the
	// presence channel Channels[0] on Origin (its first socket there).
	KindMemberAdded MessageKind = "member_added"
	// KindMemberRemoved says that UserID left the presence channel
	// Channels[0] on Origin (its last socket there).
	KindMemberRemoved MessageKind = "member_removed"
	// KindSnapshot is part Part of Parts of Origin's whole state as of
	// Seq: Subs, Counts and Members. It replaces what receivers knew of
	// Origin.
	KindSnapshot MessageKind = "snapshot"
	// KindHeartbeat says that Origin is alive and has sent its changes up
	// to Seq.
	KindHeartbeat MessageKind = "heartbeat"
	// KindHello asks Target (every node when empty) for a snapshot; it
	// also counts as a heartbeat of Origin.
	KindHello MessageKind = "hello"
	// KindGoodbye says that Origin is leaving: receivers forget its state.
	KindGoodbye MessageKind = "goodbye"
)

// Message is what a Broker carries. Brokers that cross process
// boundaries encode it (as JSON, with these field names). Receivers must
// not modify its maps: an in-process broker hands one Message to every
// node.
type Message struct {
	Kind     MessageKind `json:"kind"`
	AppID    string      `json:"app_id"`
	Channels []string    `json:"channels,omitempty"`
	Event    string      `json:"event,omitempty"`
	Data     string      `json:"data,omitempty"`
	// ExcludeSocketID is the socket that must not receive the event.
	ExcludeSocketID string `json:"exclude_socket_id,omitempty"`
	// UserID is the sender of a presence client event, the user of
	// KindTerminateUser, the owner of KindBindSocket or the member of
	// KindMemberAdded and KindMemberRemoved.
	UserID   string          `json:"user_id,omitempty"`
	UserInfo json.RawMessage `json:"user_info,omitempty"`
	SocketID string          `json:"socket_id,omitempty"`
	// Origin names the node that published the message.
	Origin string `json:"origin,omitempty"`
	// Seq numbers Origin's state changes (cluster view kinds).
	Seq uint64 `json:"seq,omitempty"`
	// Target is the node a KindHello asks; empty asks every node.
	Target string `json:"target,omitempty"`
	// Subs are subscriptions per channel, Counts subscriptions per bound
	// user (KindCounts, KindSnapshot).
	Subs   map[string]int `json:"subs,omitempty"`
	Counts map[string]int `json:"counts,omitempty"`
	// Members are the presence members per channel, with their user_info
	// (KindSnapshot).
	Members map[string]map[string]json.RawMessage `json:"members,omitempty"`
	// Part and Parts number the messages of one KindSnapshot.
	Part  int `json:"part,omitempty"`
	Parts int `json:"parts,omitempty"`
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
