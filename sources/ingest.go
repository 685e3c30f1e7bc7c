package sources

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/store"
)

// Store is what the ingester needs of the store.
type Store interface {
	IngestPushes(ctx context.Context, reqs []store.PushRequest) ([]store.PushOutcome, []error, error)
	PruneDeliveries(ctx context.Context, olderThan time.Duration) (int64, error)
}

// Scheduler is told when builds were queued.
type Scheduler interface {
	Wake()
}

// Config configures an Ingester.
type Config struct {
	Store     Store
	Scheduler Scheduler
	Logger    *slog.Logger
	// Metrics records group commits (nil: not recorded).
	Metrics *Metrics
	// Retention is how long delivery ids are remembered for
	// de-duplication (default 30 days). A redelivery older than that
	// builds again.
	Retention time.Duration
	// PruneEvery is how often forgotten delivery ids are deleted (default
	// 1h); the request that finds the time has come does it.
	PruneEvery time.Duration
	// MaxBatch bounds how many pushes arriving together are committed in
	// one transaction (default 64).
	MaxBatch int
	// CommitTimeout bounds one commit (default 30s). A commit serves
	// several requests, so no single request's context can cancel it.
	CommitTimeout time.Duration
	// Now is the clock of the pruning schedule (default time.Now); the
	// store's clock dates the deliveries.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Retention == 0 {
		c.Retention = 30 * 24 * time.Hour
	}
	if c.PruneEvery == 0 {
		c.PruneEvery = time.Hour
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = 64
	}
	if c.CommitTimeout == 0 {
		c.CommitTimeout = 30 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate reports a missing or impossible setting.
func (c *Config) Validate() error {
	switch {
	case c.Store == nil:
		return errors.New("sources: Store is required")
	case c.Scheduler == nil:
		return errors.New("sources: Scheduler is required")
	case c.Retention < time.Hour:
		return fmt.Errorf("sources: Retention must be at least 1h, got %s", c.Retention)
	case c.PruneEvery < time.Second:
		return fmt.Errorf("sources: PruneEvery must be at least 1s, got %s", c.PruneEvery)
	case c.MaxBatch < 1:
		return fmt.Errorf("sources: MaxBatch must be at least 1, got %d", c.MaxBatch)
	case c.CommitTimeout <= 0:
		return fmt.Errorf("sources: CommitTimeout must be positive, got %s", c.CommitTimeout)
	}
	return nil
}

// Ingester turns pushes into queued builds. It is safe for concurrent use.
//
// Pushes that arrive while a commit is under way are committed together
// by the next one (group commit): with SQLite's single writer, one
// transaction for a burst of webhooks beats a queue of transactions
// waiting on the write lock, in throughput and in latency. There is no
// background goroutine: the first caller to find no commit under way
// commits, then hands over to the oldest waiting caller.
type Ingester struct {
	cfg Config

	mu        sync.Mutex
	nextPrune time.Time
	queue     []*pending
	leading   bool
}

// pending is one push waiting to be committed.
type pending struct {
	req     store.PushRequest
	out     store.PushOutcome
	err     error
	done    chan struct{} // closed when out and err are set
	promote chan struct{} // closed when this caller is to commit next
}

// New returns an Ingester.
func New(cfg Config) (*Ingester, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Ingester{cfg: cfg}, nil
}

// Result is what Ingest did with a push.
type Result struct {
	// Duplicate: the delivery was ingested before and nothing was done.
	Duplicate  bool
	Builds     []builds.Build
	Skipped    []Skip
	Superseded []builds.Build
}

// Ingest plans the builds of a push for a project and commits them with
// the push's delivery id, in one transaction.
func (in *Ingester) Ingest(ctx context.Context, p builds.Project, push Push) (Result, error) {
	reqs, skipped := Plan(p, push)
	out, err := in.commit(ctx, store.PushRequest{Delivery: store.Delivery{ProjectID: p.ID, Source: push.Source, ID: push.DeliveryID},
		Builds: reqs, Supersede: p.Settings.SupersedeQueued})
	if err != nil {
		return Result{}, err
	}
	in.prune(ctx)
	if out.Duplicate {
		in.cfg.Logger.Info("push already ingested", "source", push.Source, "project", p.Name, "delivery", push.DeliveryID)
		return Result{Duplicate: true}, nil
	}
	if len(out.Builds) > 0 {
		in.cfg.Scheduler.Wake()
	}
	for _, b := range out.Builds {
		in.cfg.Logger.Info("build queued by a push", "source", push.Source, "project", p.Name, "build", b.ID,
			"number", b.Number, "ref", b.Ref, "sha", b.SHA, "delivery", push.DeliveryID)
	}
	for _, b := range out.Superseded {
		in.cfg.Logger.Info("queued build superseded", "project", p.Name, "build", b.ID, "branch", b.Branch, "reason", b.Reason)
	}
	return Result{Builds: out.Builds, Skipped: skipped, Superseded: out.Superseded}, nil
}

// commit queues a push for the next commit and waits for its outcome,
// committing itself when no commit is under way.
func (in *Ingester) commit(ctx context.Context, req store.PushRequest) (store.PushOutcome, error) {
	p := &pending{req: req, done: make(chan struct{}), promote: make(chan struct{})}
	in.mu.Lock()
	in.queue = append(in.queue, p)
	lead := !in.leading
	in.leading = true
	in.mu.Unlock()
	if !lead {
		// No early return on ctx: the push may be committed anyway, and
		// the commit is bounded by CommitTimeout.
		select {
		case <-p.done:
			return p.out, p.err
		case <-p.promote:
		}
	}
	in.lead(ctx)
	<-p.done
	return p.out, p.err
}

// lead commits the oldest pushes waiting, the leader's own first among
// them, then makes the oldest push still waiting the next leader.
func (in *Ingester) lead(ctx context.Context) {
	// Let requests that are being read and checked right now join this
	// commit: when nothing else is runnable this returns at once.
	runtime.Gosched()
	in.mu.Lock()
	n := min(len(in.queue), in.cfg.MaxBatch)
	batch := append([]*pending(nil), in.queue[:n]...)
	in.queue = append(in.queue[:0], in.queue[n:]...)
	in.mu.Unlock()

	defer func() {
		// Whatever happened, every caller of the batch gets an answer and
		// someone goes on committing.
		rec := recover()
		for _, p := range batch {
			select {
			case <-p.done:
			default:
				p.err = fmt.Errorf("sources: commit failed: %v", rec)
				close(p.done)
			}
		}
		in.mu.Lock()
		if len(in.queue) > 0 {
			close(in.queue[0].promote)
		} else {
			in.leading = false
		}
		in.mu.Unlock()
		if rec != nil {
			panic(rec)
		}
	}()

	reqs := make([]store.PushRequest, len(batch))
	for i, p := range batch {
		reqs[i] = p.req
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), in.cfg.CommitTimeout)
	defer cancel()
	start := time.Now()
	outs, errs, err := in.cfg.Store.IngestPushes(cctx, reqs)
	in.cfg.Metrics.Commit(len(reqs), time.Since(start))
	for i, p := range batch {
		if err != nil {
			p.err = err
		} else {
			p.out, p.err = outs[i], errs[i]
		}
		close(p.done)
	}
}

// prune deletes delivery ids past their retention, at most once per
// PruneEvery; one caller does it while the others go on.
func (in *Ingester) prune(ctx context.Context) {
	now := in.cfg.Now()
	in.mu.Lock()
	due := !now.Before(in.nextPrune)
	if due {
		in.nextPrune = now.Add(in.cfg.PruneEvery)
	}
	in.mu.Unlock()
	if !due {
		return
	}
	n, err := in.cfg.Store.PruneDeliveries(ctx, in.cfg.Retention)
	if err != nil {
		in.cfg.Logger.Warn("pruning old delivery ids failed", "err", err)
		return
	}
	if n > 0 {
		in.cfg.Logger.Debug("old delivery ids pruned", "count", n)
	}
}
