// Package queue runs queued builds: it claims them from the store, hands
// them to a runner, streams their logs into the store and records each
// transition. It also recovers builds a crash left STARTED, and cancels
// running builds on request.
package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
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

	depth   prometheus.GaugeFunc
	active  prometheus.Gauge
	results *prometheus.CounterVec
}

// errCanceled and errShutdown tell a runner's context why it ended.
var (
	errCanceled = errors.New("canceled on request")
	errShutdown = errors.New("server shutting down")
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
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{q.active, q.results} {
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

// Recover deals with builds a crash left STARTED, except those a remote
// runner holds a lease on (the lease reaper judges those): they finish as
// errored with a reason, or are re-queued when Requeue is set. Call it
// once before Run, on the only node whose embedded runner runs builds.
func (q *Queue) Recover(ctx context.Context) (int, error) {
	list, err := q.cfg.Store.ListBuilds(ctx, store.BuildFilter{State: builds.Started, Limit: 500})
	if err != nil {
		return 0, fmt.Errorf("recover builds: %w", err)
	}
	// Builds a remote runner holds are the lease reaper's to judge.
	leased, err := q.cfg.Store.LeasedBuilds(ctx)
	if err != nil {
		return 0, fmt.Errorf("recover builds: %w", err)
	}
	n := 0
	for _, b := range list {
		if leased[b.ID] {
			continue
		}
		n++
		if err := q.interrupt(ctx, b.ID, "the server stopped while the build was running"); err != nil {
			return 0, err
		}
		q.cfg.Logger.Warn("recovered interrupted build", "build_id", b.ID, "requeued", q.cfg.Requeue)
	}
	return n, nil
}

func (q *Queue) interrupt(ctx context.Context, id int64, why string) error {
	var err error
	if q.cfg.Requeue {
		_, err = q.cfg.Store.Transition(ctx, id, builds.Queued, nil)
	} else {
		_, err = q.cfg.Store.Transition(ctx, id, builds.Finished, func(b *builds.Build) error {
			b.Result, b.Reason = builds.Errored, why
			return nil
		})
	}
	if err != nil {
		return fmt.Errorf("interrupt build %d: %w", id, err)
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

func (q *Queue) worker(ctx context.Context) {
	t := time.NewTicker(q.cfg.PollInterval)
	defer t.Stop()
	for ctx.Err() == nil {
		b, err := q.cfg.Store.ClaimQueued(ctx)
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
	stopWatch := q.watchCancel(ctx, b.ID, cancel)
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
	if cause := context.Cause(ctx); errors.Is(cause, errShutdown) {
		if err := q.interrupt(context.Background(), b.ID, "the server shut down while the build was running"); err != nil {
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
		return nil
	})
	if err != nil {
		log.Error("record finished build", "err", err)
		return
	}
	q.results.WithLabelValues(string(out.Result)).Inc()
	log.Info("build finished", "result", out.Result, "reason", out.Reason)
}

// watchCancel polls the store for a cancel request made on another node
// (or while this node's in-memory signal was missed).
func (q *Queue) watchCancel(ctx context.Context, id int64, cancel context.CancelCauseFunc) func() {
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
				if b, err := q.cfg.Store.Build(ctx, id); err == nil && b.CancelRequested {
					cancel(errCanceled)
					return
				}
			}
		}
	}()
	return func() { close(stop); <-done }
}

func (q *Queue) spec(b builds.Build, p builds.Project) runner.Spec {
	env := map[string]string{
		"BUILDBRIDGE_BUILD_ID":      strconv.FormatInt(b.ID, 10),
		"BUILDBRIDGE_BUILD_NUMBER":  strconv.FormatInt(b.Number, 10),
		"BUILDBRIDGE_PROJECT":       p.Name,
		"BUILDBRIDGE_REPO":          p.Repo,
		"BUILDBRIDGE_REF":           b.Ref,
		"BUILDBRIDGE_BRANCH":        b.Branch,
		"BUILDBRIDGE_SHA":           b.SHA,
		"BUILDBRIDGE_COMMIT_AUTHOR": b.Author,
	}
	if q.cfg.BuildURL != "" {
		env["BUILDBRIDGE_BUILD_URL"] = q.cfg.BuildURL + strconv.FormatInt(b.ID, 10)
	}
	return runner.Spec{BuildID: b.ID, Repo: p.Repo, SHA: b.SHA, Ref: b.Ref, Steps: p.Steps, Timeout: p.Timeout, Env: env}
}
