// Package bus is buildbridge's message bus: NATS JetStream, either an
// embedded server running inside the process (the default) or an external
// cluster, exposed as watermill publishers and subscribers.
//
// Every topic is one JetStream stream keeping its messages for MaxAge (or
// until MaxBytes). Streams and durable consumers are provisioned
// explicitly by the bus, never by watermill's auto-provisioning, so that
// stopping a subscriber never deletes its consumer and a restart resumes
// where the consumer left off. A durable consumer starts with the messages
// published after it was first created: provision it (Bus.EnsureConsumer,
// or the subscriber's SubscribeInitialize) before anything is published
// for it.
//
// Retention is by limits, not by interest: with interest retention every
// ack of a consumer that keeps up empties the stream's last block file,
// which the server then deletes and creates again: about 40% of the CPU
// samples of the pipeline benchmark (bench/pipeline) went there. Published messages carry their watermill UUID as the
// JetStream message id, so a message published twice within
// DuplicateWindow is stored once.
package bus

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/event"
)

// DefaultTopics are provisioned by every Open.
var DefaultTopics = []string{builds.TopicTransition, event.TopicBuildStateChanged}

// Config configures a Bus. The zero value plus DataDir is a working
// embedded bus.
type Config struct {
	// URL of an external NATS server with JetStream, e.g.
	// nats://127.0.0.1:4222. Empty runs an embedded server.
	URL string
	// DataDir is where the embedded server keeps its JetStream store.
	// Required when URL is empty, ignored otherwise.
	DataDir string
	// Namespace prefixes every subject, stream and deliver subject, so that
	// several deployments or test runs can share one NATS account.
	// Letters, digits, '-' and '_', starting with a letter or digit.
	// Default "buildbridge".
	Namespace string
	// Name is the NATS connection name. Default "buildbridge".
	Name string
	// Topics are provisioned at Open in addition to DefaultTopics. Other
	// topics are provisioned when first published or subscribed to.
	Topics []string
	// DuplicateWindow is how long a stream remembers message ids for
	// de-duplication. Default 2m.
	DuplicateWindow time.Duration
	// MaxAge is how long a stream keeps a message: the longest a consumer
	// can be down without missing anything. Default 72h.
	MaxAge time.Duration
	// MaxBytes caps each stream's size; the oldest messages go first.
	// Default 0: no cap but MaxAge.
	MaxBytes int64
	// AckWait is how long a consumer has to acknowledge a message before
	// it is delivered again. Default 30s.
	AckWait time.Duration
	// MaxAckPending bounds the messages delivered to a consumer and not
	// yet acknowledged. Default 256.
	MaxAckPending int
	// RetryMin and RetryMax bound the exponential delay before a message
	// that a handler refused (nack) is delivered again. Defaults 1s and 5m.
	RetryMin, RetryMax time.Duration
	// AckSync makes subscribers wait for the server to confirm each
	// acknowledgement (one more round trip per message). Default false:
	// acks are sent without waiting; a lost ack means one redelivery.
	AckSync bool
	// StartTimeout bounds the embedded server's start. Default 10s.
	StartTimeout time.Duration
	// ConnectTimeout bounds the connection to an external server.
	// Default 5s.
	ConnectTimeout time.Duration
	// RequestTimeout bounds JetStream API calls and publish acks.
	// Default 5s.
	RequestTimeout time.Duration
	// ReconnectWait is the pause between reconnection attempts to an
	// external server; the bus reconnects forever. Default 2s.
	ReconnectWait time.Duration
	// CloseTimeout bounds how long a subscriber's Close waits for messages
	// in flight. Default 30s.
	CloseTimeout time.Duration
	// Logger receives the bus's logs. Default slog.Default().
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Namespace == "" {
		c.Namespace = "buildbridge"
	}
	if c.Name == "" {
		c.Name = "buildbridge"
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = 2 * time.Minute
	}
	if c.MaxAge == 0 {
		c.MaxAge = 72 * time.Hour
	}
	if c.AckWait == 0 {
		c.AckWait = 30 * time.Second
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = 256
	}
	if c.RetryMin == 0 {
		c.RetryMin = time.Second
	}
	if c.RetryMax == 0 {
		c.RetryMax = 5 * time.Minute
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 10 * time.Second
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 5 * time.Second
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 5 * time.Second
	}
	if c.ReconnectWait == 0 {
		c.ReconnectWait = 2 * time.Second
	}
	if c.CloseTimeout == 0 {
		c.CloseTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	if c.URL == "" && c.DataDir == "" {
		return errors.New("bus: DataDir is required for the embedded server (URL is empty)")
	}
	if !validNamespace(c.Namespace) {
		return fmt.Errorf("bus: Namespace %q: want letters, digits, '-' and '_', starting with a letter or digit, at most %d characters", c.Namespace, maxNameLen)
	}
	for _, t := range c.Topics {
		if err := validTopic(t); err != nil {
			return fmt.Errorf("bus: Topics: %w", err)
		}
	}
	positive := []struct {
		name string
		d    time.Duration
	}{
		{"DuplicateWindow", c.DuplicateWindow}, {"MaxAge", c.MaxAge}, {"AckWait", c.AckWait},
		{"RetryMin", c.RetryMin}, {"RetryMax", c.RetryMax}, {"StartTimeout", c.StartTimeout},
		{"ConnectTimeout", c.ConnectTimeout}, {"RequestTimeout", c.RequestTimeout},
		{"ReconnectWait", c.ReconnectWait}, {"CloseTimeout", c.CloseTimeout},
	}
	for _, p := range positive {
		if p.d < 0 {
			return fmt.Errorf("bus: %s must not be negative, got %s", p.name, p.d)
		}
	}
	if c.DuplicateWindow > c.MaxAge {
		return fmt.Errorf("bus: DuplicateWindow (%s) must not exceed MaxAge (%s)", c.DuplicateWindow, c.MaxAge)
	}
	if c.RetryMin > c.RetryMax {
		return fmt.Errorf("bus: RetryMin (%s) must not exceed RetryMax (%s)", c.RetryMin, c.RetryMax)
	}
	if c.MaxBytes < 0 {
		return fmt.Errorf("bus: MaxBytes must not be negative, got %d", c.MaxBytes)
	}
	if c.MaxAckPending < 1 {
		return fmt.Errorf("bus: MaxAckPending must be at least 1, got %d", c.MaxAckPending)
	}
	return nil
}

// Bus is an open connection to the message bus. It is safe for concurrent
// use.
type Bus struct {
	cfg Config
	log *slog.Logger
	srv *server.Server // nil for an external server
	nc  *nats.Conn     // management, publishing and Ping
	js  jetstream.JetStream
	pub *publisher

	mu      sync.Mutex
	topics  map[string]bool // topics whose stream is provisioned
	subs    map[*subscriber]struct{}
	closed  bool
	closeMu sync.Mutex // serializes Close
	done    bool
	doneErr error
}

// Open starts the embedded server (or connects to cfg.URL), and provisions
// the streams of DefaultTopics and cfg.Topics.
func Open(ctx context.Context, cfg Config) (*Bus, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b := &Bus{
		cfg:    cfg,
		log:    cfg.Logger.With("component", "bus"),
		topics: map[string]bool{},
		subs:   map[*subscriber]struct{}{},
	}
	if cfg.URL == "" {
		if err := b.startServer(); err != nil {
			return nil, err
		}
	}
	nc, err := b.connect(cfg.Name)
	if err != nil {
		b.stopServer()
		return nil, err
	}
	b.nc = nc
	b.js, err = jetstream.New(nc,
		jetstream.WithDefaultTimeout(cfg.RequestTimeout),
		jetstream.WithPublishAsyncTimeout(cfg.RequestTimeout),
		jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		b.nc.Close()
		b.stopServer()
		return nil, fmt.Errorf("bus: jetstream: %w", err)
	}
	b.pub = &publisher{b: b}
	for _, t := range append(append([]string{}, DefaultTopics...), cfg.Topics...) {
		if err := b.EnsureTopic(ctx, t); err != nil {
			b.nc.Close()
			b.stopServer()
			return nil, err
		}
	}
	if b.srv != nil {
		b.log.Info("embedded bus started", "data_dir", cfg.DataDir, "namespace", cfg.Namespace)
	} else {
		b.log.Info("bus connected", "url", nc.ConnectedUrlRedacted(), "namespace", cfg.Namespace)
	}
	return b, nil
}

func (b *Bus) startServer() error {
	if err := os.MkdirAll(b.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("bus: DataDir: %w", err)
	}
	opts := &server.Options{
		ServerName: b.cfg.Name,
		DontListen: true, // in-process connections only: no TCP port
		JetStream:  true,
		StoreDir:   b.cfg.DataDir,
		NoSigs:     true,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("bus: embedded server: %w", err)
	}
	srv.SetLoggerV2(serverLogger{b.log.With("component", "nats-server")}, false, false, false)
	go srv.Start()
	if !srv.ReadyForConnections(b.cfg.StartTimeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return fmt.Errorf("bus: embedded server not ready after %s", b.cfg.StartTimeout)
	}
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		srv.WaitForShutdown()
		return fmt.Errorf("bus: embedded server started without JetStream (DataDir %s)", b.cfg.DataDir)
	}
	b.srv = srv
	return nil
}

func (b *Bus) stopServer() {
	if b.srv != nil {
		b.srv.Shutdown()
		b.srv.WaitForShutdown()
	}
}

// connect opens one NATS connection. Each subscriber gets its own because
// watermill's subscriber drains its connection when it closes.
func (b *Bus) connect(name string) (*nats.Conn, error) {
	log := b.log.With("conn", name)
	opts := []nats.Option{
		nats.Name(name),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			log.Error("nats async error", "subject", subj, "err", err)
		}),
	}
	if b.srv != nil {
		opts = append(opts, nats.InProcessServer(b.srv))
		nc, err := nats.Connect("", opts...)
		if err != nil {
			return nil, fmt.Errorf("bus: connect to embedded server: %w", err)
		}
		return nc, nil
	}
	opts = append(opts,
		nats.Timeout(b.cfg.ConnectTimeout),
		nats.MaxReconnects(-1), // reconnect forever
		nats.ReconnectWait(b.cfg.ReconnectWait),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("bus disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("bus reconnected", "url", nc.ConnectedUrlRedacted())
		}),
	)
	nc, err := nats.Connect(b.cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("bus: connect to %s: %w", redactURL(b.cfg.URL), err)
	}
	return nc, nil
}

// Namespace is the prefix of the bus's subjects and streams.
func (b *Bus) Namespace() string { return b.cfg.Namespace }

// Subject is the NATS subject a topic is published on.
func (b *Bus) Subject(topic string) string { return b.cfg.Namespace + "." + topic }

// Stream is the name of the JetStream stream holding a topic.
func (b *Bus) Stream(topic string) string { return streamName(b.cfg.Namespace, topic) }

// EnsureTopic creates or updates the stream of a topic. Publishing and
// subscribing call it for topics not yet seen; call it directly to
// provision a topic ahead of time.
func (b *Bus) EnsureTopic(ctx context.Context, topic string) error {
	if err := validTopic(topic); err != nil {
		return fmt.Errorf("bus: %w", err)
	}
	b.mu.Lock()
	done, closed := b.topics[topic], b.closed
	b.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if done {
		return nil
	}
	name, subject := b.Stream(topic), b.Subject(topic)
	// A stream of this name holding another subject means two topics
	// mapped to one name ("a.b" and "a_b"): refuse rather than mix them.
	if s, err := b.js.Stream(ctx, name); err == nil {
		if subj := s.CachedInfo().Config.Subjects; len(subj) != 1 || subj[0] != subject {
			return fmt.Errorf("bus: topic %q: stream %s already holds subjects %v", topic, name, subj)
		}
	} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("bus: topic %q: stream info: %w", topic, err)
	}
	sc := jetstream.StreamConfig{
		Name:        name,
		Description: "buildbridge topic " + topic,
		Subjects:    []string{subject},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      b.cfg.MaxAge,
		MaxBytes:    cmp.Or(b.cfg.MaxBytes, -1),
		Duplicates:  b.cfg.DuplicateWindow,
		Discard:     jetstream.DiscardOld,
	}
	if _, err := b.js.CreateOrUpdateStream(ctx, sc); err != nil {
		return fmt.Errorf("bus: topic %q: provision stream %s: %w", topic, name, err)
	}
	b.mu.Lock()
	b.topics[topic] = true
	b.mu.Unlock()
	return nil
}

// EnsureConsumer creates or updates the durable consumer of a topic. A
// new consumer receives the messages published from its creation on; an
// existing one keeps its position. A subscriber does it on Subscribe.
func (b *Bus) EnsureConsumer(ctx context.Context, topic, durable string) error {
	if err := validDurable(durable); err != nil {
		return fmt.Errorf("bus: %w", err)
	}
	if err := b.EnsureTopic(ctx, topic); err != nil {
		return err
	}
	stream := b.Stream(topic)
	cc := jetstream.ConsumerConfig{
		Durable:        durable,
		Description:    "buildbridge consumer " + durable + " of " + topic,
		DeliverPolicy:  jetstream.DeliverNewPolicy, // not the stream's whole history
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        b.cfg.AckWait,
		MaxDeliver:     -1,
		MaxAckPending:  b.cfg.MaxAckPending,
		FilterSubject:  b.Subject(topic),
		DeliverSubject: deliverSubject(stream, durable),
		// A deliver group lets several processes share the consumer
		// (scale-out); watermill subscribes with the same queue name.
		DeliverGroup: durable,
	}
	// The start position cannot change once set: keep the existing one.
	if c, err := b.js.PushConsumer(ctx, stream, durable); err == nil {
		old := c.CachedInfo().Config
		cc.DeliverPolicy, cc.OptStartSeq, cc.OptStartTime = old.DeliverPolicy, old.OptStartSeq, old.OptStartTime
	} else if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("bus: consumer %s of topic %q: %w", durable, topic, err)
	}
	if _, err := b.js.CreateOrUpdatePushConsumer(ctx, stream, cc); err != nil {
		return fmt.Errorf("bus: consumer %s of topic %q: %w", durable, topic, err)
	}
	return nil
}

// Publisher is the bus's publisher. Publish blocks until JetStream
// acknowledged every message (stored or recognized as a duplicate). Its
// Close does nothing: the publisher lives as long as the Bus.
func (b *Bus) Publisher() message.Publisher { return b.pub }

// Ping checks that the bus answers and JetStream is available.
func (b *Bus) Ping(ctx context.Context) error {
	if b.isClosed() {
		return ErrClosed
	}
	if st := b.nc.Status(); st != nats.CONNECTED {
		return fmt.Errorf("bus: connection %s", st)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, b.cfg.RequestTimeout)
		defer cancel()
	}
	if _, err := b.js.AccountInfo(ctx); err != nil {
		return fmt.Errorf("bus: jetstream: %w", err)
	}
	return nil
}

// ErrClosed is returned by a closed Bus.
var ErrClosed = errors.New("bus: closed")

func (b *Bus) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// Close closes the subscribers still open, drains the bus's connection and
// stops the embedded server. Durable consumers are kept. Close is
// idempotent.
func (b *Bus) Close() error {
	b.closeMu.Lock()
	defer b.closeMu.Unlock()
	if b.done {
		return b.doneErr
	}
	b.mu.Lock()
	b.closed = true
	subs := make([]*subscriber, 0, len(b.subs))
	for s := range b.subs {
		subs = append(subs, s)
	}
	b.mu.Unlock()

	var errs []error
	for _, s := range subs {
		if err := s.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := drain(b.nc, b.cfg.CloseTimeout); err != nil {
		errs = append(errs, fmt.Errorf("bus: drain: %w", err))
	}
	b.stopServer()
	b.done, b.doneErr = true, errors.Join(errs...)
	if b.doneErr == nil {
		b.log.Info("bus closed")
	}
	return b.doneErr
}

// drain drains a connection and waits until it is closed.
func drain(nc *nats.Conn, timeout time.Duration) error {
	if nc.IsClosed() {
		return nil
	}
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		nc.Close()
		if errors.Is(err, nats.ErrConnectionClosed) {
			return nil
		}
		return err
	}
	select {
	case <-closed:
		return nil
	case <-time.After(timeout):
		nc.Close()
		return fmt.Errorf("not drained after %s", timeout)
	}
}

// watermillLogger adapts slog for watermill, one level down: watermill
// logs every subscription and handler start at Info.
func watermillLogger(l *slog.Logger) watermill.LoggerAdapter {
	return watermill.NewSlogLoggerWithLevelMapping(l, map[slog.Level]slog.Level{
		slog.LevelInfo:  slog.LevelDebug,
		slog.LevelDebug: watermill.LevelTrace,
	})
}
