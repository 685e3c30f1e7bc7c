package sources

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/store"
)

// Store is what the ingester needs of the store.
type Store interface {
	IngestPush(ctx context.Context, d store.Delivery, reqs []store.PushBuild, supersede bool) (store.PushOutcome, error)
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
	// Retention is how long delivery ids are remembered for
	// de-duplication (default 30 days). A redelivery older than that
	// builds again.
	Retention time.Duration
	// PruneEvery is how often forgotten delivery ids are deleted (default
	// 1h); the request that finds the time has come does it.
	PruneEvery time.Duration
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
	}
	return nil
}

// Ingester turns pushes into queued builds. It is safe for concurrent use.
type Ingester struct {
	cfg Config

	mu        sync.Mutex
	nextPrune time.Time
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
	out, err := in.cfg.Store.IngestPush(ctx, store.Delivery{ProjectID: p.ID, Source: push.Source, ID: push.DeliveryID},
		reqs, p.Settings.SupersedeQueued)
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
