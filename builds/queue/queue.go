// Package queue runs queued builds: it claims them from the store, hands
// them to a runner, streams their logs into the store and records each
// transition. It also recovers builds a crash left STARTED, and cancels
// running builds on request.
//
// Several hub nodes may share one store (PostgreSQL). Each queue is a node
// with a lease in the store that it renews every NodeTTL/4; the builds it
// claims name it. Recovery, at start and every NodeTTL/4 after, takes back
// only builds whose node's lease has expired or that name no node (and at
// start the node's own, left by its previous run), so a node starting up
// never touches what a live node runs, and the builds of a node that died
// are taken back by the others about NodeTTL later.
package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/builds/runner"
	"github.com/buildbridge/buildbridge/store"
)

// Runner runs one build.
type Runner interface {
	Run(ctx context.Context, spec runner.Spec, log io.Writer) (runner.Outcome, error)
}

// Config configures a Queue.
type Config struct {
	Store  *store.DB
	Runner Runner
	// Concurrency is how many builds run at once (default 2).
	Concurrency int
	// PollInterval is how often idle workers look for queued builds and
	// running builds look for a cancel request (default 1s); Wake makes
	// the first faster.
	PollInterval time.Duration
	// LogFlush is how often buffered log output is written (default 200ms).
	LogFlush time.Duration
	// ShutdownGrace is how long running builds may go on once the queue is
	// asked to stop (default 30s).
	ShutdownGrace time.Duration
	// Requeue re-queues interrupted builds instead of finishing them as
	// errored, both at start-up recovery and at shutdown.
	Requeue bool
	// Node names this queue's node in the store: the builds it claims
	// record it, and Recover takes back the builds that name it. It must
	// differ between the processes sharing a store; kept across restarts,
	// a restarted node takes its interrupted builds back at once instead
	// of after NodeTTL. Default: the host name and a random suffix
	// (store.NewNodeID), new at every start.
	Node string
	// NodeTTL is how long the node's lease lasts without renewal; it is
	// renewed, and other nodes' expired builds are recovered, every
	// NodeTTL/4. A node that dies has its builds recovered about NodeTTL
	// later. Default 10s.
	NodeTTL time.Duration
	// BuildURL prefixes a build id to make its link (BUILDBRIDGE_BUILD_URL).
	BuildURL string
	// OnLog, when set, sees every log chunk as it is stored (the realtime
	// layer sends them to the dashboard).
	OnLog      func(p builds.Project, b builds.Build, offset int64, chunk []byte)
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() {
	if c.Concurrency == 0 {
		c.Concurrency = 2
	}
	if c.PollInterval == 0 {
		c.PollInterval = time.Second
	}
	if c.LogFlush == 0 {
		c.LogFlush = 200 * time.Millisecond
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = 30 * time.Second
	}
	if c.Node == "" {
		c.Node = store.NewNodeID()
	}
	if c.NodeTTL == 0 {
		c.NodeTTL = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports a missing or impossible setting.
func (c *Config) Validate() error {
	switch {
	case c.Store == nil:
		return errors.New("queue: Store is required")
	case c.Runner == nil:
		return errors.New("queue: Runner is required")
	case c.Concurrency < 1:
		return fmt.Errorf("queue: Concurrency must be ≥ 1, got %d", c.Concurrency)
	case c.PollInterval < 10*time.Millisecond:
		return fmt.Errorf("queue: PollInterval must be ≥ 10ms, got %s", c.PollInterval)
	case c.ShutdownGrace < 0:
		return errors.New("queue: ShutdownGrace must not be negative")
	case len(c.Node) > 200:
		return fmt.Errorf("queue: Node must be at most 200 bytes, got %d", len(c.Node))
	case c.NodeTTL < 100*time.Millisecond:
		return fmt.Errorf("queue: NodeTTL must be ≥ 100ms, got %s", c.NodeTTL)
	}
	return nil
}

// Queue runs builds. Create it with New and start it with Run.
type Queue struct {
	cfg  Config
	wake chan struct{}

	mu      sync.Mutex
	running map[int64]context.CancelCauseFunc
	off     bool // DisableWorkers was called

	// renewed is when the node's lease was last renewed (unix ns): workers
	// claim builds only while it is fresh.
	renewed atomic.Int64

	active    prometheus.Gauge
	results   *prometheus.CounterVec
	recovered *prometheus.CounterVec
}

// errCanceled, errShutdown and errLeaseLost tell a runner's context why it
// ended.
var (
	errCanceled  = errors.New("canceled on request")
	errShutdown  = errors.New("server shutting down")
	errLeaseLost = errors.New("another node took the build back: this node's lease had expired")
)

// New makes a queue.
func New(cfg Config) (*Queue, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	q := &Queue{cfg: cfg, wake: make(chan struct{}, 1), running: map[int64]context.CancelCauseFunc{}}
	q.active = prometheus.NewGauge(prometheus.GaugeOpts{Name: "buildbridge_builds_running", Help: "Builds running on this node."})
	q.results = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "buildbridge_builds_finished_total",
		Help: "Builds finished on this node, by result."}, []string{"result"})
	q.recovered = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "buildbridge_builds_recovered_total",
		Help: "Interrupted builds this node took back (their node stopped or lost its lease), by outcome: errored or requeued."}, []string{"outcome"})
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{q.active, q.results, q.recovered} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("queue metrics: %w", err)
			}
		}
	}
	return q, nil
}

// Wake tells idle workers that a build was queued.
func (q *Queue) Wake() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Cancel stops a build running on this node. The caller has recorded the
// cancel request in the store; a build running elsewhere sees it there.
func (q *Queue) Cancel(buildID int64) {
	q.mu.Lock()
	cancel := q.running[buildID]
	q.mu.Unlock()
	if cancel != nil {
		cancel(errCanceled)
	}
}

// Recover deals with builds a crash left STARTED: they finish as errored
// with a reason, or are re-queued when Requeue is set. It takes back this
// node's own builds (what its previous run left: Node stays the same
// across restarts when the caller keeps it, as serve does in the data
// directory) and those of nodes whose lease has expired, and leaves alone
// the builds of a node whose lease is current (a node that runs them) and
// those a remote runner holds (the lease reaper judges those). On SQLite,
// one node per store, every other node's builds are taken back at once.
// Call it once before Run; Run goes on recovering expired nodes' builds.
func (q *Queue) Recover(ctx context.Context) (int, error) {
	return q.recover(ctx, true, q.cfg.Store.Dialect() == "sqlite")
}

// recover takes back the builds OrphanedBuilds lists, 500 at most per call.
func (q *Queue) recover(ctx context.Context, startup, everyOther bool) (int, error) {
	list, err := q.cfg.Store.OrphanedBuilds(ctx, q.cfg.Node, startup, everyOther, 500)
	if err != nil {
		return 0, fmt.Errorf("recover builds: %w", err)
	}
	n := 0
	for _, o := range list {
		mine := o.Node == q.cfg.Node
		why := "the server stopped while the build was running"
		if o.Node != "" && !mine && !everyOther {
			why = fmt.Sprintf("node %s stopped while the build was running", o.Node)
			if o.Expired != nil {
				why += " (its lease expired at " + o.Expired.Format(time.RFC3339) + ")"
			}
		}
		b, err := q.cfg.Store.RecoverBuild(ctx, o, everyOther || mine, q.cfg.Requeue, why)
		if errors.Is(err, store.ErrNodeAlive) || errors.Is(err, builds.ErrTransition) {
			continue // renewed, finished or recovered elsewhere meanwhile
		}
		if err != nil {
			return n, err
		}
		n++
		outcome := "errored"
		if b.State == builds.Queued {
			outcome = "requeued"
		}
		q.recovered.WithLabelValues(outcome).Inc()
		q.cfg.Logger.Warn("recovered interrupted build", "build_id", b.ID, "from_node", o.Node, "outcome", outcome, "reason", why)
	}
	return n, nil
}

// interrupt ends a build this node runs and cannot finish (shutdown):
// errored, or re-queued with Requeue. It changes nothing, and returns
// store.ErrNodeAlive, when the build is no longer this node's.
func (q *Queue) interrupt(ctx context.Context, id int64, why string) error {
	_, err := q.cfg.Store.RecoverBuild(ctx, store.OrphanBuild{ID: id, Node: q.cfg.Node}, true, q.cfg.Requeue, why)
	if err != nil {
		return fmt.Errorf("interrupt build %d: %w", id, err)
	}
	return nil
}

// sameClaim refuses to finish a build claimed again since this node's
// claim at startedAt (recovered elsewhere, re-queued and claimed).
func sameClaim(b *builds.Build, startedAt *time.Time) error {
	if startedAt != nil && (b.StartedAt == nil || !b.StartedAt.Equal(*startedAt)) {
		return errLeaseLost
	}
	return nil
}

// DisableWorkers makes Run start no worker: builds are left to remote
// runners, while Wake and Cancel stay harmless. Call it before Run.
func (q *Queue) DisableWorkers() {
	q.mu.Lock()
	q.off = true
	q.mu.Unlock()
}

// Run runs workers until ctx is done, then gives running builds
// ShutdownGrace to finish before stopping them. It returns when every
// worker has stopped.
func (q *Queue) Run(ctx context.Context) error {
	q.mu.Lock()
	workers := q.cfg.Concurrency
	if q.off {
		workers = 0
	}
	q.mu.Unlock()
	// The lease is kept until the last build has ended: running builds go
	// on for up to ShutdownGrace after ctx is done.
	kctx, stopKeeper := context.WithCancel(context.Background())
	keeperDone := make(chan struct{})
	go func() { defer close(keeperDone); q.keep(kctx) }()
	defer func() {
		stopKeeper()
		<-keeperDone
		// Gone from the store: nothing of this node's is left running, and
		// what it left STARTED is anybody's to recover at once.
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := q.cfg.Store.RemoveNode(rctx, q.cfg.Node); err != nil {
			q.cfg.Logger.Warn("remove node lease", "node", q.cfg.Node, "err", err)
		}
	}()
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q.worker(ctx)
		}()
	}
	<-ctx.Done()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-time.After(q.cfg.ShutdownGrace):
	}
	q.mu.Lock()
	for _, cancel := range q.running {
		cancel(errShutdown)
	}
	q.mu.Unlock()
	<-done
	return nil
}

// keep renews the node's lease and recovers the builds of nodes whose
// lease expired, every NodeTTL/4 until ctx is done.
func (q *Queue) keep(ctx context.Context) {
	every := q.cfg.NodeTTL / 4
	t := time.NewTicker(every)
	defer t.Stop()
	renewFailing := false
	for {
		if err := q.cfg.Store.RenewNode(ctx, q.cfg.Node, q.cfg.NodeTTL); err != nil {
			if ctx.Err() != nil {
				return
			}
			if !renewFailing {
				q.cfg.Logger.Error("renew node lease: this node claims no build until it succeeds", "node", q.cfg.Node, "err", err)
				renewFailing = true
			}
		} else {
			if renewFailing {
				q.cfg.Logger.Info("node lease renewed again", "node", q.cfg.Node)
				renewFailing = false
			}
			if q.renewed.Swap(time.Now().UnixNano()) == 0 {
				q.Wake() // the first renewal lets the workers claim
			}
			if _, err := q.recover(ctx, false, false); err != nil && ctx.Err() == nil {
				q.cfg.Logger.Error("recover builds of expired nodes", "err", err)
			}
			if err := q.cfg.Store.PruneNodes(ctx, time.Now().Add(-time.Hour)); err != nil && ctx.Err() == nil {
				q.cfg.Logger.Warn("prune expired nodes", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// leased reports whether the node's lease was renewed recently enough to
// claim a build: with half the TTL left, another node cannot take the
// build back before the next renewal has had two chances.
func (q *Queue) leased() bool {
	last := q.renewed.Load()
	return last != 0 && time.Since(time.Unix(0, last)) < q.cfg.NodeTTL/2
}

func (q *Queue) worker(ctx context.Context) {
	t := time.NewTicker(q.cfg.PollInterval)
	defer t.Stop()
	for ctx.Err() == nil {
		if !q.leased() {
			select {
			case <-ctx.Done():
			case <-q.wake:
			case <-t.C:
			}
			continue
		}
		b, err := q.cfg.Store.ClaimQueuedOn(ctx, q.cfg.Node)
		switch {
		case err == nil:
			q.Wake() // another queued build may wait for another worker
			q.execute(b)
			continue
		case errors.Is(err, store.ErrNotFound), ctx.Err() != nil:
		default:
			q.cfg.Logger.Error("claim build", "err", err)
		}
		select {
		case <-ctx.Done():
		case <-q.wake:
		case <-t.C:
		}
	}
}

// execute runs one claimed build to its end. It deliberately does not use
// the queue's context: a shutdown lets it finish within the grace period.
func (q *Queue) execute(b builds.Build) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	q.mu.Lock()
	q.running[b.ID] = cancel
	q.mu.Unlock()
	q.active.Inc()
	defer func() {
		q.mu.Lock()
		delete(q.running, b.ID)
		q.mu.Unlock()
		q.active.Dec()
	}()
	log := q.cfg.Logger.With("build_id", b.ID, "number", b.Number)
	stopWatch := q.watchCancel(ctx, b, cancel)
	defer stopWatch()

	p, err := q.cfg.Store.ProjectByID(ctx, b.ProjectID)
	var out runner.Outcome
	var onLog func(builds.Build, int64, []byte)
	if q.cfg.OnLog != nil {
		onLog = func(b builds.Build, off int64, chunk []byte) { q.cfg.OnLog(p, b, off, chunk) }
	}
	lw := newLogWriter(q.cfg.Store, b, q.cfg.LogFlush, onLog, log)
	if err == nil {
		out, err = q.cfg.Runner.Run(ctx, q.spec(b, p), lw)
	}
	lw.Close()
	if err != nil {
		out = runner.Outcome{Result: builds.Errored, Reason: "runner failure: " + err.Error()}
	}
	if cause := context.Cause(ctx); errors.Is(cause, errLeaseLost) {
		log.Warn("build stopped: another node took it back while this node's lease had expired")
		return
	} else if errors.Is(cause, errShutdown) {
		if err := q.interrupt(context.Background(), b.ID, "the server shut down while the build was running"); errors.Is(err, store.ErrNodeAlive) {
			log.Warn("build stopped at shutdown was already taken back by another node")
		} else if err != nil {
			log.Error("record interrupted build", "err", err)
		}
		return
	} else if errors.Is(cause, errCanceled) && out.Result != builds.Passed {
		out.Result = builds.Canceled
	}
	if len(out.Artifacts) > 0 {
		arts := make([]store.Artifact, len(out.Artifacts))
		for i, a := range out.Artifacts {
			arts[i] = store.Artifact{Path: a.Path, Size: a.Size, SHA256: a.SHA256}
		}
		if err := q.cfg.Store.AddArtifacts(context.Background(), b.ID, arts); err != nil {
			log.Error("record artifacts", "err", err)
		}
	}
	_, err = q.cfg.Store.Transition(context.Background(), b.ID, builds.Finished, func(fb *builds.Build) error {
		fb.Result, fb.Reason = out.Result, out.Reason
		if out.Result == builds.Canceled && fb.Reason == "" {
			fb.Reason = "canceled"
		}
		return sameClaim(fb, b.StartedAt)
	})
	if errors.Is(err, errLeaseLost) || errors.Is(err, builds.ErrTransition) {
		log.Warn("build result dropped: another node took the build back while this node's lease had expired", "result", out.Result)
		return
	}
	if err != nil {
		log.Error("record finished build", "err", err)
		return
	}
	q.results.WithLabelValues(string(out.Result)).Inc()
	log.Info("build finished", "result", out.Result, "reason", out.Reason)
}

// watchCancel polls the store for a cancel request made on another node
// (or while this node's in-memory signal was missed), and for the build
// taken back by another node (this node's lease expired meanwhile).
func (q *Queue) watchCancel(ctx context.Context, claimed builds.Build, cancel context.CancelCauseFunc) func() {
	id := claimed.ID
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(q.cfg.PollInterval)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				b, err := q.cfg.Store.Build(ctx, id)
				if err != nil {
					continue
				}
				if b.State != builds.Started || sameClaim(&b, claimed.StartedAt) != nil {
					cancel(errLeaseLost)
					return
				}
				if b.CancelRequested {
					cancel(errCanceled)
					return
				}
			}
		}
	}()
	return func() { close(stop); <-done }
}

func (q *Queue) spec(b builds.Build, p builds.Project) runner.Spec {
	return runner.Spec{BuildID: b.ID, Repo: p.Repo, SHA: b.SHA, Ref: b.Ref, Steps: p.Steps, Timeout: p.Timeout, Env: builds.Env(b, p, q.cfg.BuildURL)}
}
