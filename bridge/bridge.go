package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/event"
)

// Config configures a Bridge.
type Config struct {
	// Subscriber returns a subscriber reading through the named durable
	// consumer (bus.Bus.Subscriber). Required. The bridge closes the
	// subscribers it gets.
	Subscriber func(durable string) (message.Subscriber, error)
	// Publisher publishes build-state-changed events. Required. The bridge
	// does not close it.
	Publisher message.Publisher
	// BuildURL is the prefix of a build's page; the build id is appended.
	BuildURL string
	// Durable names the durable consumer of transitions. Default
	// "bridge-transitions".
	Durable string
	// CloseTimeout bounds how long Close waits for handlers to finish.
	// Default 30s.
	CloseTimeout time.Duration
	// MaxBatch is the most events a batch consumer (AddBatchConsumer)
	// gets at once. Default 256; the bus's MaxAckPending bounds batches
	// too.
	MaxBatch int
	// Logger receives the bridge's logs. Default slog.Default().
	Logger *slog.Logger
	// Registerer, when set, gets the bridge's metrics
	// (buildbridge_bridge_*).
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() {
	if c.Durable == "" {
		c.Durable = "bridge-transitions"
	}
	if c.CloseTimeout == 0 {
		c.CloseTimeout = 30 * time.Second
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = 256
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	switch {
	case c.Subscriber == nil:
		return errors.New("bridge: Config.Subscriber is required")
	case c.Publisher == nil:
		return errors.New("bridge: Config.Publisher is required")
	case c.CloseTimeout < 0:
		return fmt.Errorf("bridge: Config.CloseTimeout must not be negative, got %s", c.CloseTimeout)
	case c.MaxBatch < 0:
		return fmt.Errorf("bridge: Config.MaxBatch must not be negative, got %d", c.MaxBatch)
	}
	return nil
}

// Consumer handles one build-state-changed event. Returning an error
// refuses the event: it is delivered again later, with backoff.
type Consumer func(ctx context.Context, ev event.Envelope) error

// Bridge is the watermill router turning transitions into events and
// handing events to consumers.
type Bridge struct {
	cfg    Config
	log    *slog.Logger
	router *message.Router
	m      bridgeMetrics

	mu        sync.Mutex
	subs      []message.Subscriber
	consumers map[string]bool
	runCtx    context.Context // set while Run runs
	runDone   chan struct{}   // closed when Run returns
	started   bool
	routerRan bool // Run went as far as running the router
	closed    bool
	batches   batchLoops
}

// New builds the bridge and provisions the durable consumer of
// transitions, so that no transition published from now on is missed even
// before Run.
func New(cfg Config) (*Bridge, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger.With("component", "bridge")
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: cfg.CloseTimeout}, watermillLogger(log))
	if err != nil {
		return nil, fmt.Errorf("bridge: router: %w", err)
	}
	b := &Bridge{cfg: cfg, log: log, router: router, consumers: map[string]bool{}}
	if b.m, err = newBridgeMetrics(cfg.Registerer); err != nil {
		return nil, err
	}
	sub, err := b.subscriber(cfg.Durable, builds.TopicTransition)
	if err != nil {
		return nil, err
	}
	router.AddHandler("transitions", builds.TopicTransition, sub,
		event.TopicBuildStateChanged, unclosed{cfg.Publisher}, b.handleTransition)
	return b, nil
}

// subscriber gets a subscriber for a durable and provisions its consumer
// of topic when the subscriber can (bus subscribers can).
func (b *Bridge) subscriber(durable, topic string) (message.Subscriber, error) {
	sub, err := b.cfg.Subscriber(durable)
	if err != nil {
		return nil, fmt.Errorf("bridge: subscriber %s: %w", durable, err)
	}
	if init, ok := sub.(message.SubscribeInitializer); ok {
		if err := init.SubscribeInitialize(topic); err != nil {
			_ = sub.Close()
			return nil, fmt.Errorf("bridge: provision consumer %s of %s: %w", durable, topic, err)
		}
	}
	b.mu.Lock()
	b.subs = append(b.subs, sub)
	b.mu.Unlock()
	return sub, nil
}

// handleTransition turns one transition into its build-state-changed
// envelope, published with the event id as message id: a redelivered
// transition gives the same message, which the bus de-duplicates.
func (b *Bridge) handleTransition(msg *message.Message) ([]*message.Message, error) {
	var t builds.Transition
	err := json.Unmarshal(msg.Payload, &t)
	if err == nil {
		err = checkTransition(t)
	}
	if err != nil {
		// A poison message must not block the stream: log it, count it,
		// acknowledge it.
		b.m.malformed.WithLabelValues("transitions").Inc()
		b.log.Error("malformed transition dropped", "message_uuid", msg.UUID, "err", err,
			"payload", truncate(msg.Payload, 512))
		return nil, nil
	}
	ev := event.FromTransition(t, b.cfg.BuildURL)
	raw, err := json.Marshal(ev)
	if err != nil {
		b.m.malformed.WithLabelValues("transitions").Inc()
		b.log.Error("transition cannot be encoded as an event; dropped", "event_id", t.EventID, "err", err)
		return nil, nil
	}
	out := message.NewMessage(ev.ID, raw)
	out.Metadata.Set("type", ev.Type)
	b.m.events.Inc()
	return []*message.Message{out}, nil
}

func checkTransition(t builds.Transition) error {
	switch {
	case t.EventID == "":
		return errors.New("no event_id")
	case !t.To.Valid():
		return fmt.Errorf("invalid state %q", t.To)
	case !t.Build.State.Valid():
		return fmt.Errorf("invalid build state %q", t.Build.State)
	case t.Build.Result != "" && !t.Build.Result.Valid():
		return fmt.Errorf("invalid result %q", t.Build.Result)
	}
	return nil
}

// AddConsumer adds a durable consumer of build-state-changed events,
// named name (letters, digits, '-', '_'). Its durable consumer is
// provisioned at once: it receives every event published from now on,
// and after a restart resumes where it stopped. A malformed event is
// logged, counted and acknowledged; an error from fn makes the event come
// back later, with a growing delay (the bus's RetryMin to RetryMax).
// A consumer handles one event at a time, in publication order, except
// that a refused event comes back behind the events published after it:
// order by Seq where it matters.
func (b *Bridge) AddConsumer(name string, fn Consumer) error {
	if fn == nil {
		return fmt.Errorf("bridge: consumer %q: nil function", name)
	}
	sub, err := b.claim(name)
	if err != nil {
		return err
	}
	b.router.AddConsumerHandler("consumer-"+name, event.TopicBuildStateChanged, sub, b.consume(name, fn))

	b.mu.Lock()
	ctx, runDone := b.runCtx, b.runDone
	b.mu.Unlock()
	if ctx == nil {
		return nil // Run starts it
	}
	// Added while running: start it once the router runs.
	select {
	case <-b.router.Running():
		if err := b.router.RunHandlers(ctx); err != nil {
			return fmt.Errorf("bridge: start consumer %q: %w", name, err)
		}
	case <-runDone:
	case <-ctx.Done():
	}
	return nil
}

// claim reserves a consumer name (names are durable consumers, so each
// is used once) and makes its subscriber of build-state-changed events.
func (b *Bridge) claim(name string) (message.Subscriber, error) {
	if name == "" {
		return nil, errors.New("bridge: consumer name is empty")
	}
	b.mu.Lock()
	dup, closed := b.consumers[name], b.closed
	if !dup && !closed {
		b.consumers[name] = true
	}
	b.mu.Unlock()
	switch {
	case closed:
		return nil, errors.New("bridge: closed")
	case dup:
		return nil, fmt.Errorf("bridge: consumer %q added twice", name)
	}
	sub, err := b.subscriber(name, event.TopicBuildStateChanged)
	if err != nil {
		b.release(name)
		return nil, err
	}
	return sub, nil
}

func (b *Bridge) release(name string) {
	b.mu.Lock()
	delete(b.consumers, name)
	b.mu.Unlock()
}

func (b *Bridge) consume(name string, fn Consumer) message.NoPublishHandlerFunc {
	m := b.consumerMetrics(name)
	return func(msg *message.Message) error {
		ev, ok := b.decodeEvent(name, m, msg)
		if !ok {
			return nil
		}
		start := time.Now()
		err := fn(msg.Context(), ev)
		m.took.Observe(time.Since(start).Seconds())
		if err != nil {
			m.errs.Inc()
			// The router logs it and nacks the message.
			return fmt.Errorf("consumer %s: event %s: %w", name, ev.ID, err)
		}
		return nil
	}
}

// consumerMetrics are one consumer's series.
type consumerMetrics struct {
	errs, malformed prometheus.Counter
	took, age       prometheus.Observer
}

func (b *Bridge) consumerMetrics(name string) consumerMetrics {
	return consumerMetrics{
		errs:      b.m.consumerErrors.WithLabelValues(name),
		malformed: b.m.malformed.WithLabelValues("consumer-" + name),
		took:      b.m.consumerTime.WithLabelValues(name),
		age:       b.m.eventAge.WithLabelValues(name),
	}
}

// decodeEvent decodes the event a consumer receives and observes its age.
// A malformed event is logged and counted, and reported not ok: the
// caller acknowledges it without handing it over.
func (b *Bridge) decodeEvent(name string, m consumerMetrics, msg *message.Message) (event.Envelope, bool) {
	var ev event.Envelope
	if err := json.Unmarshal(msg.Payload, &ev); err != nil || ev.ID == "" {
		if err == nil {
			err = errors.New("no id")
		}
		m.malformed.Inc()
		b.log.Error("malformed event dropped", "consumer", name, "message_uuid", msg.UUID, "err", err,
			"payload", truncate(msg.Payload, 512))
		return ev, false
	}
	if !ev.Time.IsZero() {
		m.age.Observe(time.Since(ev.Time).Seconds())
	}
	return ev, true
}

// Run runs the router and the batch consumers until ctx is done or Close
// is called. It returns nil after a clean stop.
func (b *Bridge) Run(ctx context.Context) error {
	b.mu.Lock()
	if b.closed || b.started {
		b.mu.Unlock()
		return errors.New("bridge: Run called on a closed or already running bridge")
	}
	b.started = true
	b.runCtx = ctx
	stop := make(chan struct{})
	b.runDone = stop
	batches := b.batches.begin(ctx)
	b.mu.Unlock()

	defer close(stop)
	defer func() {
		b.mu.Lock()
		b.runCtx = nil
		b.mu.Unlock()
	}()
	// Batch consumers subscribe before the router runs, so that Running
	// means every consumer receives.
	for _, c := range batches {
		if err := b.startBatch(c); err != nil {
			b.stopBatches()
			return fmt.Errorf("bridge: %w", err)
		}
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		b.stopBatches()
		return nil
	}
	b.routerRan = true
	b.mu.Unlock()
	go func() {
		select {
		case <-ctx.Done():
			if err := b.router.Close(); err != nil {
				b.log.Error("bridge close", "err", err)
			}
		case <-stop:
		}
	}()
	err := b.router.Run(ctx)
	b.stopBatches()
	if err != nil {
		return fmt.Errorf("bridge: %w", err)
	}
	return nil
}

// Running is closed once Run has started every handler.
func (b *Bridge) Running() chan struct{} { return b.router.Running() }

// Close stops the router and the batch consumers, waiting up to
// CloseTimeout for handlers, and closes the bridge's subscribers. The
// durable consumers are kept.
func (b *Bridge) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	subs, ran := b.subs, b.routerRan
	b.mu.Unlock()
	var errs []error
	// A router that never ran would wait CloseTimeout for handlers that
	// never started.
	if ran {
		if err := b.router.Close(); err != nil {
			errs = append(errs, fmt.Errorf("bridge: router: %w", err))
		}
	}
	// Before the subscribers close: a batch in hand is finished and
	// acknowledged.
	if err := b.stopBatches(); err != nil {
		errs = append(errs, err)
	}
	for _, s := range subs {
		if err := s.Close(); err != nil {
			errs = append(errs, fmt.Errorf("bridge: close subscriber: %w", err))
		}
	}
	return errors.Join(errs...)
}

// unclosed keeps the router from closing a publisher the bridge does not
// own (watermill closes a handler's publisher when the handler stops).
type unclosed struct{ message.Publisher }

func (unclosed) Close() error { return nil }

func truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "…"
}

// watermillLogger adapts slog for watermill one level down: watermill logs
// every handler start and stop at Info.
func watermillLogger(l *slog.Logger) watermill.LoggerAdapter {
	return watermill.NewSlogLoggerWithLevelMapping(l, map[slog.Level]slog.Level{
		slog.LevelInfo:  slog.LevelDebug,
		slog.LevelDebug: watermill.LevelTrace,
	})
}
