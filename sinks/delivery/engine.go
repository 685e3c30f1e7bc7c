// Package delivery is the delivery engine every sink delivers through.
//
// A delivery (event id, sink, target) is persisted before its first
// attempt; every attempt is logged with its duration and the
// destination's answer. Temporary failures are retried on a schedule
// (with jitter, honouring Retry-After) whose due times are in the store,
// so retries survive restarts; after the last attempt, or at once on a
// permanent error, the delivery fails and stays redeliverable.
//
// Each (sink, target) has its own queue, workers, concurrency limit and
// optional rate limit, so a slow or down target never delays another.
// Within a target the deliveries of one build go in seq order; other
// builds do not wait for them. A target that answers 410 Gone, or fails
// without a success for too long, is disabled, and the engine raises an
// endpoint-disabled event that the rules can route.
//
// Several hub nodes may share one store: only the node holding a
// delivery's lease attempts it (see lease.go). The node that creates a
// delivery holds it from the start; a node that dies leaves its
// deliveries to the others once their leases end.
package delivery

import (
	"container/heap"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/store"
)

// Store is the persistence the engine needs; *store.DB implements it.
type Store interface {
	CreateSinkDeliveries(ctx context.Context, list []store.SinkDelivery) ([]store.SinkDelivery, error)
	SinkDelivery(ctx context.Context, id int64) (store.SinkDelivery, error)
	SinkDeliveryPayload(ctx context.Context, id int64) ([]byte, error)
	FreeSinkDeliveries(ctx context.Context, owner string, now time.Time, after int64, limit int) ([]store.SinkDelivery, error)
	PickupSinkDeliveries(ctx context.Context, lease store.SinkLease, now, dueBefore time.Time, limit int) ([]store.SinkDelivery, error)
	RenewSinkLeases(ctx context.Context, lease store.SinkLease, ids []int64) ([]int64, error)
	ReleaseSinkLeases(ctx context.Context, owner string, ids []int64) error
	RecordSinkAttempts(ctx context.Context, owner string, recs []store.SinkAttemptRecord) ([]int64, error)
	WriteSinkBatch(ctx context.Context, b store.SinkBatch) (store.SinkBatchResult, error)
	RedeliverSinkDelivery(ctx context.Context, id int64, at time.Time) (store.SinkDelivery, error)
	RecoverSinkDeliveries(ctx context.Context, f store.SinkRecoverFilter, at time.Time) ([]store.SinkDelivery, error)
	SinkEndpoints(ctx context.Context, sink string) ([]store.SinkEndpoint, error)
	SetSinkEndpointFailing(ctx context.Context, sink, target string, since *time.Time) error
	DisableSinkEndpoint(ctx context.Context, sink, target, reason, eventID string, at time.Time) (bool, int, error)
	EnableSinkEndpoint(ctx context.Context, sink, target string) error
	MarkSinkEndpointNotified(ctx context.Context, sink, target, eventID string) error
	PruneSinkDeliveries(ctx context.Context, before time.Time, limit int) (int64, error)
}

// Config configures an Engine.
type Config struct {
	// Store persists deliveries and attempts. Required.
	Store Store
	// NewSink makes a sink instance from its configuration (default
	// sinks.New).
	NewSink func(c *sinks.Config) (sinks.Sink, error)
	// Policy is the default delivery policy; the policy settings of a
	// sink's configuration override it (PolicyFromConfig).
	Policy Policy
	// Emit receives the events the engine raises (endpoint-disabled). It
	// must persist their deliveries before returning nil: normally it
	// matches the rules and calls Enqueue. An event whose Emit failed is
	// emitted again later, with the same id.
	Emit func(ctx context.Context, ev event.Envelope) error
	// AttemptTimeout bounds one attempt, whatever the sink's own timeout
	// (default 60s).
	AttemptTimeout time.Duration
	// MaxResponseBody caps the response body kept per attempt (default
	// 4 KiB).
	MaxResponseBody int
	// NodeID names this node in the deliveries' leases. Nodes sharing a
	// store need different ones; a node should keep its id across
	// restarts, so that it takes back at once what it held when it
	// stopped (another id waits for those leases to end). Default: the
	// host name and a random suffix.
	NodeID string
	// LeaseTTL is how long a delivery's lease lasts unless renewed
	// (default 30s): a node that dies leaves the deliveries it held to
	// the others after this long. RenewInterval is how often the node
	// renews the leases it holds, all in one statement (default
	// LeaseTTL/3).
	LeaseTTL, RenewInterval time.Duration
	// ResyncInterval is how often the store is searched for pending
	// deliveries that no node holds, due for StaleAfter at least: left by
	// a node that died (once their leases end) or by a failed store write
	// (default LeaseTTL/3 and LeaseTTL/3). Finding none costs one indexed
	// read. StaleAfter leaves a node the time to take up its own retries
	// when they come due. Endpoint-disabled events not yet emitted are
	// searched for every minute.
	ResyncInterval, StaleAfter time.Duration
	// Retention is how long a finished delivery (succeeded or failed) is
	// kept, with its attempts and payload, counted from its creation
	// (default 30 days; negative: forever). Pending deliveries stay
	// whatever their age. PruneInterval is how often the old ones are
	// deleted (default 1h; every node does it, which is harmless).
	Retention, PruneInterval time.Duration
	// ShutdownGrace is how long Close lets attempts in flight finish
	// before cancelling them (default 2s). A cancelled attempt is not
	// logged and is made again after the restart, with the same id.
	ShutdownGrace time.Duration
	// RecordDelay is how long an attempt record may wait to share a
	// transaction with others and with new deliveries (default 20ms).
	// Records are not what callers wait for; fewer, larger transactions
	// are what lets the store keep up.
	RecordDelay time.Duration
	// GroupCommitWait is how long, under load, new deliveries wait for
	// others to share their transaction (default 1ms; negative: never).
	// An idle engine commits at once.
	GroupCommitWait time.Duration
	// Now and AfterFunc are the clock (default time.Now and
	// time.AfterFunc); tests replace them. AfterFunc returns its timer's
	// Stop.
	Now       func() time.Time
	AfterFunc func(d time.Duration, f func()) (stop func() bool)
	// Rand returns a uniform number in [0, 1) for the jitter.
	Rand       func() float64
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() {
	if c.NewSink == nil {
		c.NewSink = sinks.New
	}
	c.Policy.setDefaults()
	if c.AttemptTimeout == 0 {
		c.AttemptTimeout = time.Minute
	}
	if c.MaxResponseBody == 0 {
		c.MaxResponseBody = 4 << 10
	}
	if c.NodeID == "" {
		c.NodeID = store.NewNodeID()
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 30 * time.Second
	}
	if c.RenewInterval == 0 {
		c.RenewInterval = c.LeaseTTL / 3
	}
	if c.ResyncInterval == 0 {
		c.ResyncInterval = c.LeaseTTL / 3
	}
	if c.StaleAfter == 0 {
		c.StaleAfter = c.LeaseTTL / 3
	}
	if c.GroupCommitWait == 0 {
		c.GroupCommitWait = time.Millisecond
	}
	if c.RecordDelay == 0 {
		c.RecordDelay = 20 * time.Millisecond
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = 2 * time.Second
	}
	if c.Retention == 0 {
		c.Retention = 30 * 24 * time.Hour
	}
	if c.PruneInterval == 0 {
		c.PruneInterval = time.Hour
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.AfterFunc == nil {
		c.AfterFunc = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	if c.Rand == nil {
		c.Rand = rand.Float64
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports the first missing or impossible setting.
func (c *Config) Validate() error {
	switch {
	case c.Store == nil:
		return errors.New("delivery: Config.Store is required")
	case c.AttemptTimeout < 0:
		return errors.New("delivery: Config.AttemptTimeout must not be negative")
	case c.MaxResponseBody < 0:
		return errors.New("delivery: Config.MaxResponseBody must not be negative")
	case c.ResyncInterval < 0 || c.StaleAfter < 0 || c.ShutdownGrace < 0 || c.RecordDelay < 0:
		return errors.New("delivery: Config.ResyncInterval, StaleAfter, ShutdownGrace and RecordDelay must not be negative")
	case c.LeaseTTL < 0 || c.RenewInterval < 0:
		return errors.New("delivery: Config.LeaseTTL and RenewInterval must not be negative")
	case c.Retention > 0 && c.Retention < time.Minute:
		return fmt.Errorf("delivery: Config.Retention must be at least 1m (or negative: forever), got %s", c.Retention)
	case c.PruneInterval < 0:
		return errors.New("delivery: Config.PruneInterval must not be negative")
	case c.RenewInterval >= c.LeaseTTL:
		return fmt.Errorf("delivery: Config.RenewInterval (%s) must be shorter than LeaseTTL (%s)", c.RenewInterval, c.LeaseTTL)
	}
	if err := c.Policy.Validate(); err != nil {
		return fmt.Errorf("delivery: Config.Policy: %w", err)
	}
	return nil
}

// ErrEndpointDisabled is returned (wrapped) when a delivery to a
// disabled endpoint is redelivered.
var ErrEndpointDisabled = errors.New("endpoint disabled")

// ErrClosed is returned by Start after Close.
var ErrClosed = errors.New("delivery engine closed")

// Engine delivers through the configured sinks. Its methods are safe for
// concurrent use.
type Engine struct {
	cfg Config
	log *slog.Logger
	m   *metrics

	mu         sync.Mutex
	sinks      map[string]*sinkEntry
	targets    map[tkey]*target
	items      map[int64]*item
	unrecorded map[int64]bool // finished in memory, not yet written
	wakes      wakeHeap
	timerAt    time.Time
	stopTimer  func() bool
	skipped    map[string]bool
	started    bool
	running    bool
	closed     bool
	// abandoned are deliveries still leased to this node that it stopped
	// holding (attempts cancelled by Close): released at Close.
	abandoned []int64
	leaseGen  uint64 // numbers the leases taken, see item.leaseGen

	preparing      atomic.Int64 // Enqueue calls preparing rows to send to the writer
	wake           chan struct{}
	recMu          sync.RWMutex // guards sends on recs against its close
	recs           chan recOp   // to the writer: new deliveries, attempt records, barriers
	recOpen        bool
	bg             context.Context
	stopBG         context.CancelFunc
	attemptCtx     context.Context
	cancelAttempts context.CancelFunc
	workers        sync.WaitGroup
	background     sync.WaitGroup
	// leaseNow is the clock of the leases: real time, whatever Now is,
	// since other nodes compare the leases with theirs.
	leaseNow func() time.Time
}

type tkey struct{ sink, target string }

// dkey identifies a delivery.
type dkey struct{ event, sink, target string }

// sinkEntry is one configured sink instance; refs counts attempts in
// flight, so a sink replaced by a reload is closed once they end.
type sinkEntry struct {
	name, typ string
	sink      sinks.Sink
	err       error
	policy    Policy
	refs      int
	retired   bool
}

// New makes an engine. Configure gives it its sinks and Start starts it;
// Enqueue persists deliveries at any time.
func New(cfg Config) (*Engine, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e := &Engine{cfg: cfg, log: cfg.Logger.With("component", "delivery"),
		sinks: map[string]*sinkEntry{}, targets: map[tkey]*target{}, items: map[int64]*item{},
		unrecorded: map[int64]bool{}, skipped: map[string]bool{},
		wake: make(chan struct{}, 1), recs: make(chan recOp, 1024), leaseNow: time.Now}
	e.bg, e.stopBG = context.WithCancel(context.Background())
	e.attemptCtx, e.cancelAttempts = context.WithCancel(context.Background())
	var err error
	if e.m, err = newMetrics(e, cfg.Registerer); err != nil {
		return nil, err
	}
	return e, nil
}

// Configure replaces the sink instances with those of cfgs (the rules'
// sinks). A type without an implementation is not an error: deliveries
// to its sinks are skipped. A sink that cannot be made is reported in the
// returned error, and its deliveries fail temporarily (and are retried)
// until a configuration that works replaces it; the other sinks are
// configured anyway. Replaced instances are closed once their attempts in
// flight end.
func (e *Engine) Configure(cfgs []*sinks.Config) error {
	next := make(map[string]*sinkEntry, len(cfgs))
	var errs []error
	for _, c := range cfgs {
		ent := &sinkEntry{name: c.Name, typ: c.Type}
		var err error
		if ent.policy, err = PolicyFromConfig(c, e.cfg.Policy); err != nil {
			errs = append(errs, err)
			ent.policy = e.cfg.Policy
		}
		s, err := e.cfg.NewSink(c)
		switch {
		case err == nil:
			ent.sink = s
		case errors.Is(err, sinks.ErrNotImplemented):
			ent.err = err
		default:
			ent.err = err
			errs = append(errs, err)
		}
		next[c.Name] = ent
	}
	e.mu.Lock()
	old := e.sinks
	e.sinks = next
	var closeNow []*sinkEntry
	for _, ent := range old {
		ent.retired = true
		if ent.refs == 0 {
			closeNow = append(closeNow, ent)
		}
	}
	now := e.cfg.Now()
	for _, t := range e.targets {
		if ent := next[t.sink]; ent != nil && !ent.policy.usesSameRate(t.limiter) {
			t.limiter = nil
		}
		e.kick(t, now)
	}
	e.mu.Unlock()
	for _, ent := range closeNow {
		e.closeSink(ent)
	}
	return errors.Join(errs...)
}

func (p *Policy) usesSameRate(b *bucket) bool {
	if b == nil {
		return p.Rate <= 0
	}
	return b.rate == p.Rate && b.burst == float64(p.Burst)
}

func (e *Engine) closeSink(ent *sinkEntry) {
	if ent.sink == nil {
		return
	}
	if err := ent.sink.Close(); err != nil {
		e.log.Warn("closing a sink", "sink", ent.name, "err", err)
	}
}

// Start loads the endpoints' state and the pending deliveries no other
// node holds from the store and starts delivering. The engine runs until
// Close.
func (e *Engine) Start(ctx context.Context) error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return ErrClosed
	}
	if e.started {
		e.mu.Unlock()
		return errors.New("delivery: Start called twice")
	}
	e.started = true
	e.mu.Unlock()

	eps, err := e.cfg.Store.SinkEndpoints(ctx, "")
	if err != nil {
		return fmt.Errorf("delivery: load endpoints: %w", err)
	}
	e.mu.Lock()
	for _, ep := range eps {
		t := e.target(ep.Sink, ep.Target)
		if ep.DisabledAt != nil {
			t.disabled, t.reason = true, ep.Reason
		}
		if ep.FailingSince != nil {
			t.failing = *ep.FailingSince
		}
	}
	e.mu.Unlock()
	n, err := e.loadPending(ctx)
	if err != nil {
		return err
	}
	if n > 0 {
		e.log.Info("pending deliveries loaded", "count", n)
	}
	e.log.Debug("delivery leases", "node", e.cfg.NodeID, "ttl", e.cfg.LeaseTTL)

	// The writer first: the first attempts' records go to it.
	e.recMu.Lock()
	e.recOpen = true
	e.recMu.Unlock()
	e.background.Add(4)
	go e.writer()
	go e.schedule()
	go e.renew()
	e.mu.Lock()
	e.running = true
	now := e.cfg.Now()
	for _, t := range e.targets {
		e.kick(t, now)
	}
	e.mu.Unlock()
	go e.resync()
	return nil
}

// Close stops the engine: no new attempt starts, attempts in flight get
// ShutdownGrace to end, attempt logs are written, sinks are closed.
// Pending deliveries stay in the store for the next Start, their leases
// released so that another node takes them over at once.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed, e.running = true, false
	if e.stopTimer != nil {
		e.stopTimer()
	}
	e.mu.Unlock()
	e.stopBG()
	done := make(chan struct{})
	go func() { e.workers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(e.cfg.ShutdownGrace):
		e.cancelAttempts()
		<-done
	}
	e.cancelAttempts()
	e.recMu.Lock()
	if e.recOpen {
		e.recOpen = false
		close(e.recs)
	}
	e.recMu.Unlock()
	e.background.Wait()
	e.releaseAll()
	e.mu.Lock()
	var ents []*sinkEntry
	for _, ent := range e.sinks {
		ents = append(ents, ent)
	}
	e.sinks = map[string]*sinkEntry{}
	e.mu.Unlock()
	for _, ent := range ents {
		e.closeSink(ent)
	}
	return nil
}

// legacyCheckAge is the age from which an event's deliveries are also
// looked up by the message ids of earlier versions: a fresh event cannot
// have been handled before; an older one may be the bus's redelivery of
// an event an earlier version (before an upgrade, or another node in a
// rolling one) stored already.
const legacyCheckAge = 10 * time.Second

// Enqueue persists deliveries and schedules their first attempt. It
// returns only once they are stored, so a caller acknowledging an event
// after a nil return loses nothing; an error means nothing more than
// what may have been stored is known, and the caller retries. Deliveries
// already stored for the same (event id, sink, target) are skipped, so a
// redelivered event sends nothing twice. Deliveries of sink types without
// an implementation are skipped (logged once per sink).
func (e *Engine) Enqueue(ctx context.Context, ds []sinks.Delivery) error {
	if len(ds) == 0 {
		return nil
	}
	e.preparing.Add(1)
	sent := false
	defer func() {
		if !sent {
			e.preparing.Add(-1)
		}
	}()
	now := e.cfg.Now()
	rows := make([]store.SinkDelivery, 0, len(ds))
	byKey := make(map[dkey]*sinks.Delivery, len(ds))
	e.mu.Lock()
	for i := range ds {
		d := &ds[i]
		if d.EventID == "" || d.Sink == "" || d.Target == "" {
			e.log.Error("delivery without an event id, sink or target dropped", "event_id", d.EventID, "sink", d.Sink, "target", d.Target)
			continue
		}
		if e.unimplemented(d) {
			continue
		}
		row := store.SinkDelivery{MessageID: MessageID(d.EventID, d.Sink, d.Target), EventID: d.EventID, EventType: d.Event.Type,
			Sink: d.Sink, SinkType: d.SinkType, Target: d.Target, Route: d.Route, Seq: d.Event.Seq}
		if d.Event.Project != nil {
			row.OwnerID = d.Event.Project.OwnerID
		}
		if d.Event.Build != nil {
			row.BuildID = d.Event.Build.ID
		}
		if d.Event.Time.Before(now.Add(-legacyCheckAge)) {
			row.LegacyMessageID = legacyMessageID(d.EventID, d.Sink, d.Target)
		}
		due := now.Add(e.policyFor(d.Sink).Schedule[0])
		row.NextAt = &due
		if t := e.targets[tkey{d.Sink, d.Target}]; t != nil && t.disabled {
			row.Status, row.LastError = store.DeliveryFailed, "endpoint disabled: "+t.reason
		}
		rows = append(rows, row)
		byKey[dkey{d.EventID, d.Sink, d.Target}] = d
	}
	e.mu.Unlock()
	for i := range rows {
		p, err := encodePayload(byKey[dkey{rows[i].EventID, rows[i].Sink, rows[i].Target}])
		if err != nil {
			return err
		}
		rows[i].Payload = p
	}
	if len(rows) == 0 {
		return nil
	}
	sent = true
	if err := e.create(ctx, rows, byKey); err != nil {
		return fmt.Errorf("delivery: persist: %w", err)
	}
	return nil
}

// admit queues the deliveries just created, with their messages (and the
// leases they were created with).
func (e *Engine) admit(ctx context.Context, created []store.SinkDelivery, msgs map[dkey]*sinks.Delivery) {
	var refused []*item
	e.mu.Lock()
	now := e.cfg.Now()
	for i := range created {
		row := &created[i]
		if row.Status != store.DeliveryPending {
			e.m.dead.WithLabelValues(row.Sink, row.Target).Inc()
			continue
		}
		if e.closed {
			continue // in the store for the next start
		}
		it := itemFrom(row)
		it.d = msgs[dkey{row.EventID, row.Sink, row.Target}]
		e.leased(it, row)
		if !e.add(it, now) {
			refused = append(refused, it)
		}
	}
	e.mu.Unlock()
	e.failDisabled(ctx, refused)
}

// unimplemented reports (and logs once per sink) a delivery of a sink
// type without an implementation. Called with e.mu held.
func (e *Engine) unimplemented(d *sinks.Delivery) bool {
	skip := false
	if ent := e.sinks[d.Sink]; ent != nil {
		skip = errors.Is(ent.err, sinks.ErrNotImplemented)
	} else if t, ok := sinks.Lookup(d.SinkType); ok && t.New == nil {
		skip = true
	}
	if !skip {
		return false
	}
	e.m.skipped.WithLabelValues(d.Sink, d.SinkType).Inc()
	if !e.skipped[d.Sink] {
		e.skipped[d.Sink] = true
		e.log.Warn("deliveries to this sink are skipped: its type has no implementation in this build (logged once)",
			"sink", d.Sink, "type", d.SinkType)
	}
	return true
}

func itemFrom(row *store.SinkDelivery) *item {
	it := &item{id: row.ID, msgID: row.MessageID, eventID: row.EventID, sink: row.Sink, target: row.Target,
		sinkType: row.SinkType, eventType: row.EventType,
		buildID: row.BuildID, seq: row.Seq, created: row.CreatedAt, tries: row.Tries, attempts: row.Attempts, heapIdx: -1}
	if row.NextAt != nil {
		it.due = *row.NextAt
	}
	return it
}

// target returns the queue of a (sink, target), made on first use.
// Called with e.mu held.
func (e *Engine) target(sink, name string) *target {
	k := tkey{sink, name}
	t := e.targets[k]
	if t == nil {
		t = newTarget(sink, name)
		e.targets[k] = t
	}
	return t
}

// add queues an item unless its target is disabled (it reports false:
// the caller fails it in the store). Called with e.mu held.
func (e *Engine) add(it *item, now time.Time) bool {
	if e.items[it.id] != nil {
		return true
	}
	t := e.target(it.sink, it.target)
	if t.disabled {
		it.t = t
		return false
	}
	t.add(it)
	e.items[it.id] = it
	e.kick(t, now)
	return true
}

// failDisabled records items refused by disabled targets as failed.
func (e *Engine) failDisabled(ctx context.Context, list []*item) {
	if len(list) == 0 {
		return
	}
	recs := make([]store.SinkAttemptRecord, len(list))
	for i, it := range list {
		recs[i] = store.SinkAttemptRecord{Attempt: store.SinkAttempt{DeliveryID: it.id, Error: "endpoint disabled: " + it.t.reasonOr()},
			Status: store.DeliveryFailed, Tries: it.tries}
		e.m.dead.WithLabelValues(it.sink, it.t.name).Inc()
	}
	// Like DisableSinkEndpoint, whoever holds their leases.
	if _, err := e.cfg.Store.RecordSinkAttempts(ctx, "", recs); err != nil {
		e.log.Error("failing deliveries of a disabled endpoint", "count", len(list), "err", err)
	}
}

// policyFor is the policy of a sink. Called with e.mu held.
func (e *Engine) policyFor(sink string) *Policy {
	if ent := e.sinks[sink]; ent != nil {
		return &ent.policy
	}
	return &e.cfg.Policy
}

// kick starts workers for a target with due deliveries, or registers a
// wake-up for its next one. Called with e.mu held.
func (e *Engine) kick(t *target, now time.Time) {
	if !e.running || t.disabled {
		return
	}
	due, ok := t.next()
	if !ok {
		return
	}
	if due.After(now) {
		if t.workers == 0 {
			e.wakeAt(t, due, now)
		}
		return
	}
	n := min(e.policyFor(t.sink).Concurrency-t.workers, len(t.ready))
	for range n {
		t.workers++
		e.workers.Add(1)
		go e.work(t)
	}
}

// wakeAt registers a wake-up of t at at. Called with e.mu held.
func (e *Engine) wakeAt(t *target, at, now time.Time) {
	if !t.wakeAt.IsZero() && !at.Before(t.wakeAt) {
		return
	}
	t.wakeAt = at
	heap.Push(&e.wakes, wake{at: at, t: t})
	e.arm(at, now)
}

// arm sets the one timer to the earliest wake-up. Called with e.mu held.
func (e *Engine) arm(at, now time.Time) {
	if !e.timerAt.IsZero() && !at.Before(e.timerAt) {
		return
	}
	if e.stopTimer != nil {
		e.stopTimer()
	}
	e.timerAt = at
	e.stopTimer = e.cfg.AfterFunc(at.Sub(now), e.signal)
}

func (e *Engine) signal() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// schedule wakes targets when their next delivery is due.
func (e *Engine) schedule() {
	defer e.background.Done()
	for {
		select {
		case <-e.bg.Done():
			return
		case <-e.wake:
		}
		e.mu.Lock()
		now := e.cfg.Now()
		e.timerAt = time.Time{}
		for len(e.wakes) > 0 && !e.wakes[0].at.After(now) {
			w := heap.Pop(&e.wakes).(wake)
			if w.t.wakeAt.Equal(w.at) {
				w.t.wakeAt = time.Time{}
			}
			e.kick(w.t, now)
		}
		if len(e.wakes) > 0 {
			e.arm(e.wakes[0].at, now)
		}
		e.mu.Unlock()
	}
}

// work attempts a target's due deliveries one after another, until none
// is due.
func (e *Engine) work(t *target) {
	defer e.workers.Done()
	for {
		e.mu.Lock()
		now := e.cfg.Now()
		pol := *e.policyFor(t.sink)
		var it *item
		if e.running && !t.disabled && t.workers <= pol.Concurrency {
			it = t.popDue(now)
		}
		if it == nil {
			t.workers--
			if e.running && t.workers == 0 {
				if due, ok := t.next(); ok {
					e.wakeAt(t, due, now)
				}
			}
			e.mu.Unlock()
			return
		}
		it.inflight = true
		t.inflight++
		ent := e.sinks[it.sink]
		if ent != nil {
			ent.refs++
		}
		var wait time.Duration
		if pol.Rate > 0 {
			if t.limiter == nil {
				t.limiter = &bucket{rate: pol.Rate, burst: float64(pol.Burst)}
			}
			wait = t.limiter.take(now)
		}
		// A delivery this node did not create, or whose lease may be
		// about to end, is claimed first: another node may hold it.
		claim, seen := !e.holds(it, e.leaseNow()), it.attempts
		e.mu.Unlock()

		if claim && !e.claim(t, it, ent, seen) {
			continue
		}
		res := e.attempt(it, ent, wait)
		fx := e.finish(t, it, ent, &pol, res)
		e.apply(fx)
	}
}

// result is what one attempt gave.
type result struct {
	at      time.Time
	took    time.Duration
	resp    Response
	err     error
	aborted bool // cancelled by Close: not logged, made again after a restart
}

func (e *Engine) attempt(it *item, ent *sinkEntry, wait time.Duration) result {
	ctx := e.attemptCtx
	if wait > 0 && !e.sleep(ctx, wait) {
		return result{aborted: true}
	}
	res := result{at: e.cfg.Now()}
	if it.d == nil {
		raw, err := e.cfg.Store.SinkDeliveryPayload(ctx, it.id)
		if err == nil {
			row := store.SinkDelivery{ID: it.id, EventID: it.eventID, Sink: it.sink, SinkType: it.sinkType, Target: it.target}
			var d *sinks.Delivery
			if d, err = decodePayload(&row, raw); err == nil {
				it.d = d
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return result{aborted: true}
			}
			res.err = fmt.Errorf("loading the delivery: %w", err)
			return res
		}
	}
	switch {
	case ent == nil:
		res.err = fmt.Errorf("sink %q is not in the rules in force", it.sink)
		return res
	case ent.sink == nil:
		res.err = ent.err
		return res
	}
	actx, cancel := context.WithTimeout(ctx, e.cfg.AttemptTimeout)
	defer cancel()
	start := time.Now()
	if s, ok := ent.sink.(Sender); ok {
		res.resp, res.err = s.Send(actx, Attempt{Delivery: *it.d, ID: it.msgID, Number: it.attempts + 1})
	} else {
		res.err = ent.sink.Deliver(actx, *it.d)
	}
	res.took = time.Since(start)
	if res.err != nil && ctx.Err() != nil {
		return result{aborted: true}
	}
	if len(res.resp.Body) > e.cfg.MaxResponseBody {
		res.resp.Body = res.resp.Body[:e.cfg.MaxResponseBody]
	}
	return res
}

// sleep waits d on the engine's clock; false when ctx ended first.
func (e *Engine) sleep(ctx context.Context, d time.Duration) bool {
	ch := make(chan struct{})
	stop := e.cfg.AfterFunc(d, func() { close(ch) })
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		stop()
		return false
	}
}

// effects are what finishing an attempt does outside the engine's lock.
type effects struct {
	rec       *store.SinkAttemptRecord
	t         *target
	failing   *time.Time // set the endpoint's failing-since
	healthy   bool       // clear it
	disable   string     // the endpoint was disabled for this reason: persist it
	dropped   []*item    // the items that disabling took out of the queue
	closeSink *sinkEntry
	requeue   *item // a retry, queued again after its record is sent
}

// finish applies an attempt's result to the item and its target.
func (e *Engine) finish(t *target, it *item, ent *sinkEntry, pol *Policy, res result) effects {
	e.mu.Lock()
	defer e.mu.Unlock()
	fx := effects{t: t}
	it.inflight = false
	t.inflight--
	if ent != nil {
		ent.refs--
		if ent.retired && ent.refs == 0 {
			fx.closeSink = ent
		}
	}
	if res.aborted {
		// Still pending in the store: the next start attempts it again,
		// or another node once Close releases its lease.
		t.remove(it)
		delete(e.items, it.id)
		if !it.lease.IsZero() {
			e.abandoned = append(e.abandoned, it.id)
		}
		return fx
	}
	it.lease = time.Time{} // the record releases it
	now := e.cfg.Now()
	it.attempts++
	it.tries++
	a := store.SinkAttempt{DeliveryID: it.id, Number: it.attempts, Time: res.at, Duration: res.took, StatusCode: res.resp.StatusCode,
		Header: res.resp.Header, Body: res.resp.Body}
	rec := &store.SinkAttemptRecord{Tries: it.tries}
	labels := []string{it.sink, t.name}
	e.m.attempts.WithLabelValues(labels...).Inc()
	e.m.latency.WithLabelValues(labels...).Observe(res.took.Seconds())
	c := classify(res.err)
	if res.err != nil {
		a.Error = res.err.Error()
	}
	switch {
	case res.err == nil:
		a.Outcome, rec.Status = store.OutcomeSuccess, store.DeliverySucceeded
		e.m.successes.WithLabelValues(labels...).Inc()
		if !t.failing.IsZero() {
			t.failing, fx.healthy = time.Time{}, true
		}
	case t.disabled:
		a.Outcome, rec.Status = store.OutcomeFailed, store.DeliveryFailed
		a.Error += "; endpoint disabled: " + t.reason
	case c.Gone:
		a.Outcome, rec.Status = store.OutcomeGone, store.DeliveryFailed
		fx.disable = a.Error
		fx.dropped = e.markDisabled(t, fx.disable)
	case c.Permanent:
		a.Outcome, rec.Status = store.OutcomePermanent, store.DeliveryFailed
	case it.tries >= len(pol.Schedule):
		a.Outcome, rec.Status = store.OutcomeFailed, store.DeliveryFailed
	default:
		delay := pol.delay(it.tries, e.cfg.Rand())
		if c.RetryAfter > 0 {
			delay = pol.clampRetryAfter(c.RetryAfter)
		}
		due := now.Add(delay)
		a.Outcome, rec.Status, rec.NextAt = store.OutcomeRetry, store.DeliveryPending, &due
	}
	if res.err != nil {
		kind := "temporary"
		switch {
		case c.Gone:
			kind = "gone"
		case c.Permanent:
			kind = "permanent"
		}
		e.m.failures.WithLabelValues(it.sink, t.name, kind).Inc()
		if t.failing.IsZero() {
			t.failing = res.at
			since := t.failing
			fx.failing = &since
		}
		if fx.disable == "" && !t.disabled && pol.DisableAfter > 0 && now.Sub(t.failing) >= pol.DisableAfter {
			fx.disable = fmt.Sprintf("failing without a success since %s (%s); last error: %s",
				t.failing.UTC().Format(time.RFC3339), now.Sub(t.failing).Round(time.Second), a.Error)
			fx.dropped = e.markDisabled(t, fx.disable)
			if rec.Status == store.DeliveryPending {
				a.Outcome, rec.Status, rec.NextAt = store.OutcomeFailed, store.DeliveryFailed, nil
			}
		}
	}
	rec.Attempt = a
	fx.rec = rec
	if rec.Status == store.DeliveryPending {
		// Queued again once the record is on its way to the writer
		// (apply): a claim of the retry must reach the store after it.
		it.due = *rec.NextAt
		fx.requeue = it
	} else {
		if rec.Status == store.DeliveryFailed {
			e.m.dead.WithLabelValues(labels...).Inc()
		}
		t.remove(it)
		delete(e.items, it.id)
		e.unrecorded[it.id] = true
	}
	return fx
}

// apply carries out an attempt's effects, outside the lock.
func (e *Engine) apply(fx effects) {
	if fx.rec != nil {
		e.send(recOp{rec: *fx.rec})
	}
	if it := fx.requeue; it != nil {
		e.mu.Lock()
		if e.items[it.id] == it && !it.inflight && it.heapIdx < 0 {
			it.t.requeue(it)
		}
		e.mu.Unlock()
	}
	ctx := e.bg
	if fx.failing != nil || fx.healthy {
		if err := e.cfg.Store.SetSinkEndpointFailing(ctx, fx.t.sink, fx.t.name, fx.failing); err != nil && ctx.Err() == nil {
			e.log.Error("recording an endpoint's health", "sink", fx.t.sink, "target", fx.t.name, "err", err)
		}
	}
	if fx.disable != "" {
		if err := e.persistDisable(ctx, fx.t, fx.disable, fx.dropped); err != nil && ctx.Err() == nil {
			e.log.Error("disabling an endpoint", "sink", fx.t.sink, "target", fx.t.name, "err", err)
		}
	}
	if fx.closeSink != nil {
		e.closeSink(fx.closeSink)
	}
}

// recOp is work for the writer: deliveries to create (the result goes
// to reply), an attempt record to write, a lease to claim, or a barrier
// (done is closed once everything sent before it is written).
type recOp struct {
	create []store.SinkDelivery
	msgs   map[dkey]*sinks.Delivery
	reply  chan error
	rec    store.SinkAttemptRecord
	claim  *claimOp
	done   chan struct{}
}

// send hands an op to the writer; false when it is not running.
func (e *Engine) send(op recOp) bool {
	e.recMu.RLock()
	defer e.recMu.RUnlock()
	if !e.recOpen {
		return false
	}
	e.recs <- op
	return true
}

// flush waits until the records sent so far are written.
func (e *Engine) flush(ctx context.Context) {
	done := make(chan struct{})
	if !e.send(recOp{done: done}) {
		return
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// create persists new deliveries and queues those created. It goes
// through the writer, so that concurrent callers share a transaction
// (directly when the writer is not running). The writer queues what it
// created even when the caller has given up waiting, so nothing stored
// is left unattempted.
// The caller counts itself in e.preparing; the writer (or create, when
// the writer is not running) counts it out.
func (e *Engine) create(ctx context.Context, rows []store.SinkDelivery, msgs map[dkey]*sinks.Delivery) error {
	reply := make(chan error, 1)
	if !e.send(recOp{create: rows, msgs: msgs, reply: reply}) {
		e.preparing.Add(-1)
		created, err := e.cfg.Store.CreateSinkDeliveries(ctx, rows)
		if err == nil {
			e.admit(ctx, created, msgs)
		}
		return err
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// writer is the engine's one writer to the store: what is waiting when
// it looks (new deliveries of several callers, attempt records of many
// targets) goes in one transaction of each kind, so writes do not queue
// for the database's lock one by one.
func (e *Engine) writer() {
	defer e.background.Done()
	const maxRecs = 512
	var (
		recs     []store.SinkAttemptRecord
		creates  []recOp
		claims   []*claimOp
		barriers []chan struct{}
		oldest   time.Time // of the records waiting
		closed   bool
		last     time.Time // end of the last transaction
	)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	add := func(op recOp) {
		switch {
		case op.reply != nil:
			e.preparing.Add(-1)
			creates = append(creates, op)
		case op.done != nil:
			barriers = append(barriers, op.done)
		case op.claim != nil:
			claims = append(claims, op.claim)
		default:
			if len(recs) == 0 {
				oldest = time.Now()
			}
			recs = append(recs, op.rec)
		}
	}
	for !closed {
		// Wait for work; records alone may wait RecordDelay to share a
		// transaction with the next deliveries created.
		if len(recs) == 0 {
			op, ok := <-e.recs
			if !ok {
				return
			}
			add(op)
		} else {
			timer.Reset(max(e.cfg.RecordDelay-time.Since(oldest), 0))
			select {
			case op, ok := <-e.recs:
				if ok {
					add(op)
				} else {
					closed = true
				}
			case <-timer.C:
			}
			timer.Stop()
		}
		drain := func() {
			for !closed && len(recs) < maxRecs && len(creates) < 256 && len(claims) < 256 {
				select {
				case op, ok := <-e.recs:
					if !ok {
						closed = true
						return
					}
					add(op)
				default:
					return
				}
			}
		}
		drain()
		// Group commit: under load (a transaction just ended), new
		// deliveries wait a moment for those being prepared by other
		// callers, to share their commit.
		if w := e.cfg.GroupCommitWait; w > 0 && len(creates) > 0 && len(creates) < 64 && !closed && time.Since(last) < 2*w &&
			e.preparing.Load() > 0 {
			timer.Reset(w)
		gather:
			for len(creates) < 64 && len(recs) < maxRecs && e.preparing.Load() > 0 {
				select {
				case op, ok := <-e.recs:
					if !ok {
						closed = true
						break gather
					}
					add(op)
				case <-timer.C:
					break gather
				}
			}
			timer.Stop()
			drain()
		}
		if len(creates) == 0 && len(claims) == 0 && len(barriers) == 0 && len(recs) < maxRecs && !closed &&
			time.Since(oldest) < e.cfg.RecordDelay {
			continue
		}
		e.writeBatch(creates, recs, claims)
		last = time.Now()
		for _, b := range barriers {
			close(b)
		}
		recs, creates, claims, barriers = recs[:0], creates[:0], claims[:0], barriers[:0]
	}
}

// writeBatch persists the deliveries of several Enqueue calls and queues
// them, writes attempt records and claims leases, in one transaction;
// when it fails, the parts are tried apart (a failed create is reported
// to its callers, who retry; records are retried here; a failed claim is
// reported to its worker, which tries again later).
func (e *Engine) writeBatch(creates []recOp, recs []store.SinkAttemptRecord, claims []*claimOp) {
	var all []store.SinkDelivery
	msgs := map[dkey]*sinks.Delivery{}
	for _, op := range creates {
		all = append(all, op.create...)
		for k, v := range op.msgs {
			msgs[k] = v
		}
	}
	b := store.SinkBatch{Creates: all, Records: recs}
	b.Lease, b.Now = e.lease()
	for _, c := range claims {
		b.Claims = append(b.Claims, store.SinkClaim{ID: c.id, Attempts: c.attempts})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := e.cfg.Store.WriteSinkBatch(ctx, b)
	createErr, claimErr := err, err
	if err != nil {
		if len(all) > 0 && (len(recs) > 0 || len(claims) > 0) {
			var r store.SinkBatchResult
			r, createErr = e.cfg.Store.WriteSinkBatch(ctx, store.SinkBatch{Creates: all, Lease: b.Lease, Now: b.Now})
			res.Created = r.Created
		}
		if len(recs) > 0 {
			e.write(recs)
		}
	} else if len(recs) > 0 {
		e.recorded(recs, res.Refused)
	}
	if createErr == nil && len(all) > 0 {
		e.admit(ctx, res.Created, msgs)
	}
	for _, op := range creates {
		op.reply <- createErr
	}
	granted := make(map[int64]*store.SinkDelivery, len(res.Claimed))
	for i := range res.Claimed {
		granted[res.Claimed[i].ID] = &res.Claimed[i]
	}
	for _, c := range claims {
		c.reply <- claimResult{row: granted[c.id], err: claimErr}
	}
}

func (e *Engine) write(batch []store.SinkAttemptRecord) {
	var err error
	var refused []int64
	for try := 0; try < 5; try++ {
		if try > 0 {
			time.Sleep(time.Duration(50<<try) * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		refused, err = e.cfg.Store.RecordSinkAttempts(ctx, e.cfg.NodeID, batch)
		cancel()
		if err == nil {
			break
		}
	}
	if err != nil {
		// The deliveries stay as they were in the store: pending ones are
		// attempted again (resync, or the next start), with the same id.
		e.log.Error("attempt log not written; those deliveries will be attempted again", "count", len(batch), "err", err)
	}
	e.recorded(batch, refused)
}

// recorded forgets the finished deliveries whose records were written,
// and the deliveries whose records were refused: another node took them
// over when their leases ended (this node stalled, or lost the store for
// longer than LeaseTTL); the attempt this node made is not logged, and
// the other node's state stands.
func (e *Engine) recorded(batch []store.SinkAttemptRecord, refused []int64) {
	e.mu.Lock()
	for _, r := range batch {
		delete(e.unrecorded, r.Attempt.DeliveryID)
	}
	for _, id := range refused {
		if it := e.items[id]; it != nil && !it.inflight {
			it.t.remove(it)
			delete(e.items, id)
		}
	}
	e.mu.Unlock()
	if len(refused) > 0 {
		e.m.refused.Add(float64(len(refused)))
		e.log.Warn("attempt records refused: another node took these deliveries over after their leases ended; "+
			"the destination may see them again, with the same message id", "count", len(refused), "delivery_ids", refused)
	}
}

// loadPending adds the store's pending deliveries that no other node
// holds. They are claimed one by one when they come due.
func (e *Engine) loadPending(ctx context.Context) (int, error) {
	var after int64
	n := 0
	for {
		rows, err := e.cfg.Store.FreeSinkDeliveries(ctx, e.cfg.NodeID, e.leaseNow(), after, 1000)
		if err != nil {
			return n, fmt.Errorf("delivery: load pending deliveries: %w", err)
		}
		if len(rows) == 0 {
			return n, nil
		}
		var refused []*item
		e.mu.Lock()
		now := e.cfg.Now()
		for i := range rows {
			row := &rows[i]
			after = row.ID
			if e.items[row.ID] != nil || e.unrecorded[row.ID] || e.closed {
				continue
			}
			it := itemFrom(row)
			if it.due.IsZero() {
				it.due = now
			}
			if !e.add(it, now) {
				refused = append(refused, it)
				continue
			}
			n++
		}
		e.mu.Unlock()
		e.failDisabled(ctx, refused)
	}
}

// resync takes over, every ResyncInterval, the pending deliveries no
// node holds, and emits endpoint-disabled events not yet emitted.
func (e *Engine) resync() {
	defer e.background.Done()
	tick := time.NewTicker(e.cfg.ResyncInterval)
	defer tick.Stop()
	var notified, pruned time.Time
	for {
		if time.Since(notified) >= time.Minute {
			e.notifyPending(e.bg)
			notified = time.Now()
		}
		if e.cfg.Retention > 0 && time.Since(pruned) >= e.cfg.PruneInterval {
			e.prune(e.bg)
			pruned = time.Now()
		}
		select {
		case <-e.bg.Done():
			return
		case <-tick.C:
		}
		n, err := e.pickup(e.bg)
		if err != nil && e.bg.Err() == nil {
			e.log.Error("resync", "err", err)
		}
		if n > 0 {
			e.log.Warn("deliveries no node held taken over from the store (a node stopped, or a store write failed)", "count", n)
		}
	}
}

// pruneBatch is how many deliveries one statement of a prune deletes: on
// SQLite each batch holds the write lock while it runs.
const pruneBatch = 500

// prune deletes the finished deliveries older than the retention, a
// batch at a time.
func (e *Engine) prune(ctx context.Context) {
	before := e.cfg.Now().Add(-e.cfg.Retention)
	var total int64
	for ctx.Err() == nil {
		n, err := e.cfg.Store.PruneSinkDeliveries(ctx, before, pruneBatch)
		if err != nil {
			if ctx.Err() == nil {
				e.log.Error("pruning old deliveries", "err", err)
			}
			break
		}
		total += n
		e.m.pruned.Add(float64(n))
		if n < pruneBatch {
			break
		}
	}
	if total > 0 {
		e.log.Info("old deliveries pruned", "count", total, "created_before", before, "retention", e.cfg.Retention)
	}
}

// notifyPending emits the endpoint-disabled events whose deliveries were
// not persisted yet.
func (e *Engine) notifyPending(ctx context.Context) {
	eps, err := e.cfg.Store.SinkEndpoints(ctx, "")
	if err != nil {
		if ctx.Err() == nil {
			e.log.Error("endpoints", "err", err)
		}
		return
	}
	for _, ep := range eps {
		if ep.DisabledAt != nil && ep.NotifiedAt == nil && ep.EventID != "" {
			e.notify(ctx, ep)
		}
	}
}

// markDisabled marks a target disabled and takes its queued items out;
// nil when it was disabled already. Called with e.mu held.
func (e *Engine) markDisabled(t *target, reason string) []*item {
	if t.disabled {
		return nil
	}
	t.disabled, t.reason = true, reason
	dropped := []*item{}
	for id, it := range e.items {
		if it.t == t && !it.inflight {
			t.remove(it)
			delete(e.items, id)
			dropped = append(dropped, it)
		}
	}
	return dropped
}

// disable disables a target: its queued deliveries fail, new ones fail
// at once, and an endpoint-disabled event is emitted.
func (e *Engine) disable(ctx context.Context, t *target, reason string) error {
	e.mu.Lock()
	dropped := e.markDisabled(t, reason)
	e.mu.Unlock()
	if dropped == nil {
		return nil
	}
	return e.persistDisable(ctx, t, reason, dropped)
}

// persistDisable stores a disabling marked in memory (undoing it when
// the store fails) and emits the endpoint-disabled event.
func (e *Engine) persistDisable(ctx context.Context, t *target, reason string, dropped []*item) error {
	// Attempt records of this target sent before must not land after
	// the transaction that fails its pending deliveries.
	e.flush(ctx)
	e.mu.Lock()
	failing := t.failing
	e.mu.Unlock()
	at := e.cfg.Now().UTC().Truncate(time.Millisecond)
	id := endpointEventID(t.sink, t.name, at)
	changed, n, err := e.cfg.Store.DisableSinkEndpoint(ctx, t.sink, t.name, reason, id, at)
	if err != nil {
		e.mu.Lock()
		t.disabled, t.reason = false, ""
		now := e.cfg.Now()
		for _, it := range dropped {
			t.add(it)
			e.items[it.id] = it
		}
		e.kick(t, now)
		e.mu.Unlock()
		return err
	}
	e.m.dead.WithLabelValues(t.sink, t.name).Add(float64(n))
	e.log.Warn("endpoint disabled; its pending deliveries failed (recover them after enabling it)",
		"sink", t.sink, "target", t.name, "reason", reason, "failed", n)
	if changed {
		ep := store.SinkEndpoint{Sink: t.sink, Target: t.name, DisabledAt: &at, Reason: reason, EventID: id}
		if !failing.IsZero() {
			ep.FailingSince = &failing
		}
		e.notify(ctx, ep)
	}
	return nil
}

func endpointEventID(sink, target string, at time.Time) string {
	sum := sha256.Sum256([]byte(event.TypeEndpointDisabled + "\x00" + sink + "\x00" + target + "\x00" + strconv.FormatInt(at.UnixMilli(), 10)))
	return "evt_" + hex.EncodeToString(sum[:13])
}

// EndpointDisabled is the Data of an endpoint-disabled event.
type EndpointDisabled struct {
	Sink         string     `json:"sink"`
	SinkType     string     `json:"sink_type"`
	Target       string     `json:"target"`
	Reason       string     `json:"reason"`
	DisabledAt   time.Time  `json:"disabled_at"`
	FailingSince *time.Time `json:"failing_since"`
}

// notify emits an endpoint's endpoint-disabled event and records that
// it was handed on; on failure the next resync emits it again.
func (e *Engine) notify(ctx context.Context, ep store.SinkEndpoint) {
	e.mu.Lock()
	typ := ""
	if ent := e.sinks[ep.Sink]; ent != nil {
		typ = ent.typ
	}
	e.mu.Unlock()
	data, err := json.Marshal(EndpointDisabled{Sink: ep.Sink, SinkType: typ, Target: ep.Target, Reason: ep.Reason,
		DisabledAt: *ep.DisabledAt, FailingSince: ep.FailingSince})
	if err != nil {
		e.log.Error("encoding an endpoint-disabled event", "err", err)
		return
	}
	ev := event.Envelope{ID: ep.EventID, Type: event.TypeEndpointDisabled, Time: *ep.DisabledAt, Data: data}
	if e.cfg.Emit != nil {
		if err := e.cfg.Emit(ctx, ev); err != nil {
			if ctx.Err() == nil {
				e.log.Error("emitting endpoint-disabled; retried at the next resync", "event_id", ev.ID, "err", err)
			}
			return
		}
	}
	if err := e.cfg.Store.MarkSinkEndpointNotified(ctx, ep.Sink, ep.Target, ep.EventID); err != nil && ctx.Err() == nil {
		e.log.Error("recording an emitted endpoint-disabled event", "event_id", ev.ID, "err", err)
	}
}

// Redeliver makes a delivery pending again, due now, with a new round of
// its retry schedule. A delivery to a disabled endpoint is refused with
// ErrEndpointDisabled.
func (e *Engine) Redeliver(ctx context.Context, id int64) (store.SinkDelivery, error) {
	row, err := e.cfg.Store.SinkDelivery(ctx, id)
	if err != nil {
		return row, err
	}
	e.mu.Lock()
	t := e.targets[tkey{row.Sink, row.Target}]
	disabled := t != nil && t.disabled
	e.mu.Unlock()
	if disabled {
		return row, fmt.Errorf("delivery %d: %w (%s %s): enable it first", id, ErrEndpointDisabled, row.Sink, row.Target)
	}
	now := e.cfg.Now()
	row, err = e.cfg.Store.RedeliverSinkDelivery(ctx, id, now)
	if err != nil {
		return row, err
	}
	var refused []*item
	e.mu.Lock()
	if it := e.items[id]; it != nil {
		if !it.inflight {
			it.tries = 0
			it.t.reschedule(it, now)
			e.kick(it.t, now)
		}
	} else if !e.closed {
		it := itemFrom(&row)
		if !e.add(it, now) {
			refused = append(refused, it)
		}
	}
	e.mu.Unlock()
	e.failDisabled(ctx, refused)
	return row, nil
}

// Recover redelivers every failed delivery of a sink that failed since
// the given time (of one owner when ownerID is not 0), except those of
// disabled endpoints, and returns them.
func (e *Engine) Recover(ctx context.Context, sink string, since time.Time, ownerID int64) ([]store.SinkDelivery, error) {
	now := e.cfg.Now()
	rows, err := e.cfg.Store.RecoverSinkDeliveries(ctx, store.SinkRecoverFilter{Sink: sink, Since: since, OwnerID: ownerID}, now)
	if err != nil {
		return nil, err
	}
	var refused []*item
	e.mu.Lock()
	for i := range rows {
		it := itemFrom(&rows[i])
		if e.closed {
			break
		}
		if !e.add(it, now) {
			refused = append(refused, it)
		}
	}
	e.mu.Unlock()
	e.failDisabled(ctx, refused)
	return rows, nil
}

// DisableEndpoint disables an endpoint by hand: its pending deliveries
// fail and an endpoint-disabled event is emitted.
func (e *Engine) DisableEndpoint(ctx context.Context, sink, target, reason string) error {
	e.mu.Lock()
	t := e.target(sink, target)
	e.mu.Unlock()
	return e.disable(ctx, t, reason)
}

// EnableEndpoint enables an endpoint again and forgets its failures.
// Deliveries that failed meanwhile stay failed: Recover them.
func (e *Engine) EnableEndpoint(ctx context.Context, sink, target string) error {
	if err := e.cfg.Store.EnableSinkEndpoint(ctx, sink, target); err != nil {
		return err
	}
	e.mu.Lock()
	if t := e.targets[tkey{sink, target}]; t != nil {
		t.disabled, t.reason, t.failing = false, "", time.Time{}
	}
	e.mu.Unlock()
	return nil
}

// targetStats is one target's state for the metrics.
type targetStats struct {
	sink, target           string
	pending, retries, held int
	oldest                 time.Duration
	disabled               bool
}

func (e *Engine) stats() []targetStats {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.cfg.Now()
	idx := make(map[*target]int, len(e.targets))
	out := make([]targetStats, 0, len(e.targets))
	for _, t := range e.targets {
		idx[t] = len(out)
		out = append(out, targetStats{sink: t.sink, target: t.name, disabled: t.disabled})
	}
	for _, it := range e.items {
		s := &out[idx[it.t]]
		s.pending++
		if it.tries > 0 {
			s.retries++
		}
		if !it.lease.IsZero() {
			s.held++
		}
		if age := now.Sub(it.created); age > s.oldest {
			s.oldest = age
		}
	}
	return out
}

func (t *target) reasonOr() string {
	if t == nil || t.reason == "" {
		return "disabled"
	}
	return t.reason
}
