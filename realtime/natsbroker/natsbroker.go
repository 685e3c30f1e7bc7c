// Package natsbroker is a realtime.Broker over NATS core pub/sub: every
// buildbridge node publishes its realtime messages to NATS and receives
// every node's, so that an event published on one node reaches the
// WebSocket subscribers of all of them.
//
// Delivery is at most once, like NATS core: a node that is disconnected
// or too slow misses messages (and logs it). That suits live events,
// which clients do not replay; the realtime cluster view notices a lost
// change of another node's state and asks for a snapshot (see
// realtime.ClusterConfig).
package natsbroker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/buildbridge/buildbridge/realtime"
)

// DefaultSubjectPrefix is the default subject prefix; messages of app X
// go to <prefix>app.X.
const DefaultSubjectPrefix = "buildbridge.realtime."

// DefaultBufferSize is how many received messages may wait for delivery.
const DefaultBufferSize = 8192

// flushTimeout bounds the wait for the server to confirm a subscription.
const flushTimeout = 5 * time.Second

// Config configures a Broker.
type Config struct {
	// Conn is the NATS connection. The Broker does not close it.
	Conn *nats.Conn
	// SubjectPrefix is prepended to every subject; it must end with '.'.
	// Default "buildbridge.realtime.".
	SubjectPrefix string
	// BufferSize bounds received messages waiting for the handler; beyond
	// it NATS drops messages for this subscriber. Default 8192.
	BufferSize int
	// Logger receives structured logs. Nil means slog.Default().
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.SubjectPrefix == "" {
		c.SubjectPrefix = DefaultSubjectPrefix
	}
	if c.BufferSize == 0 {
		c.BufferSize = DefaultBufferSize
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports the first configuration error, naming the field.
func (c *Config) Validate() error {
	switch {
	case c.Conn == nil:
		return errors.New("natsbroker: Conn: required")
	case !strings.HasSuffix(c.SubjectPrefix, ".") || strings.ContainsAny(c.SubjectPrefix, " \t\r\n*>"):
		return fmt.Errorf("natsbroker: SubjectPrefix: %q must end with '.' and hold no spaces or wildcards", c.SubjectPrefix)
	case c.BufferSize < 0:
		return errors.New("natsbroker: BufferSize: must be positive")
	}
	return nil
}

// Broker is a realtime.Broker over NATS core pub/sub.
type Broker struct {
	cfg Config
	log *slog.Logger
}

var _ realtime.Broker = (*Broker)(nil)

// New returns a Broker on cfg.Conn.
func New(cfg Config) (*Broker, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Broker{cfg: cfg, log: cfg.Logger}, nil
}

// subject returns the subject of an app's messages. App ids are checked
// by realtime.Config to be subject-safe tokens; anything else is refused.
func (b *Broker) subject(appID string) (string, error) {
	if appID == "" || strings.ContainsAny(appID, ". \t\r\n*>") {
		return "", fmt.Errorf("natsbroker: app id %q cannot be a subject token", appID)
	}
	return b.cfg.SubjectPrefix + "app." + appID, nil
}

// Publish sends m to every subscribed node, this one included.
func (b *Broker) Publish(ctx context.Context, m realtime.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	subj, err := b.subject(m.AppID)
	if err != nil {
		return err
	}
	data, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("natsbroker: encode message: %w", err)
	}
	if err := b.cfg.Conn.Publish(subj, data); err != nil {
		return fmt.Errorf("natsbroker: publish to %s: %w", subj, err)
	}
	return nil
}

// Subscribe delivers every node's messages to h, in order per publisher,
// on one goroutine that the returned function stops and waits for.
func (b *Broker) Subscribe(h func(realtime.Message)) (func() error, error) {
	ch := make(chan *nats.Msg, b.cfg.BufferSize)
	subj := b.cfg.SubjectPrefix + "app.*"
	sub, err := b.cfg.Conn.ChanSubscribe(subj, ch)
	if err != nil {
		return nil, fmt.Errorf("natsbroker: subscribe to %s: %w", subj, err)
	}
	// A round trip makes the server register the subscription before
	// Subscribe returns, so that the node gets the answers to what it
	// publishes next (the cluster view's hello). A connection that is
	// reconnecting subscribes again when it is back.
	if err := b.cfg.Conn.FlushTimeout(flushTimeout); err != nil {
		b.log.Warn("natsbroker: subscription not confirmed yet", "subject", subj, "err", err)
	}
	// The channel is the buffer: when it is full NATS drops messages for
	// this subscription (a slow consumer) rather than stalling the
	// connection.
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case msg := <-ch:
				var m realtime.Message
				if err := json.Unmarshal(msg.Data, &m); err != nil {
					b.log.Warn("natsbroker: undecodable message dropped", "subject", msg.Subject, "err", err)
					continue
				}
				h(m)
			}
		}
	}()
	var once sync.Once
	return func() error {
		var err error
		once.Do(func() {
			err = sub.Unsubscribe()
			if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrBadSubscription) {
				err = nil
			}
			close(stop)
			<-done
		})
		if err != nil {
			return fmt.Errorf("natsbroker: unsubscribe: %w", err)
		}
		return nil
	}, nil
}
