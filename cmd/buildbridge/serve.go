package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/buildbridge/buildbridge/api"
	"github.com/buildbridge/buildbridge/bridge"
	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/builds/queue"
	"github.com/buildbridge/buildbridge/builds/runner"
	"github.com/buildbridge/buildbridge/bus"
	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/realtime"
	"github.com/buildbridge/buildbridge/store"
)

func init() { subcommands = append(subcommands, newServeCmd) }

func newServeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the hub: API, build queue, bus, realtime server",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd.Flags(), getenv)
			if err != nil {
				return err
			}
			logger := newLogger(cfg, cmd.ErrOrStderr())
			h, err := newHub(cmd.Context(), cfg, logger)
			if err != nil {
				return err
			}
			return h.run(cmd.Context(), cmd.OutOrStdout())
		},
	}
	addConfigFlags(cmd.Flags())
	return cmd
}

func newLogger(cfg Config, w io.Writer) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(cfg.LogLevel)) // validated already
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// hub is one running buildbridge server and everything it owns.
type hub struct {
	cfg   Config
	log   *slog.Logger
	reg   *prometheus.Registry
	store *store.DB
	bus   *bus.Bus
	relay *bridge.Relay
	br    *bridge.Bridge
	queue *queue.Queue
	api   *api.API
	rt    *realtime.Server
	mux   *http.ServeMux

	// emit routes an event raised inside the hub (endpoint-disabled,
	// usage-threshold, system-alert, …) through the rules to its sinks;
	// set by the delivery feature. Ids must be stable: emitting an event
	// twice delivers it once.
	emit func(ctx context.Context, ev event.Envelope) error
	// onLog, when a feature sets it, sees each stored chunk of build log.
	onLog func(p builds.Project, b builds.Build, offset int64, chunk []byte)
	// onShutdown runs, in order, once the HTTP server has stopped
	// accepting requests: features close what they hold (WebSockets …).
	onShutdown []func(context.Context)
	// onRulesReload runs after every successful reload of the rules file
	// (file change, SIGHUP, the API, another node's request), for the
	// features that keep their own part of it.
	onRulesReload []func()

	// node names this process among the nodes sharing the store: in the
	// builds its embedded runner claims, the relay's lock, the delivery
	// leases and /readyz. It is kept in the data directory.
	node       string
	adminToken string // set on first start only
	ln         net.Listener
	ready      chan struct{}
}

// newHub opens the store and the bus and builds every part of the server,
// without starting anything that runs in the background.
func newHub(ctx context.Context, cfg Config, logger *slog.Logger) (h *hub, err error) {
	if cfg.ArtifactsDir == "" {
		cfg.ArtifactsDir = filepath.Join(cfg.Data, "artifacts")
	}
	h = &hub{cfg: cfg, log: logger, reg: prometheus.NewRegistry(), mux: http.NewServeMux(), ready: make(chan struct{})}
	built := h // the error returns below leave h nil
	defer func() {
		if err != nil {
			built.close()
		}
	}()
	h.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := os.MkdirAll(cfg.Data, 0o700); err != nil {
		return nil, fmt.Errorf("data directory %s: %w", cfg.Data, err)
	}
	h.store, err = store.Open(ctx, store.Config{DataDir: cfg.Data, Postgres: cfg.Postgres, Logger: logger})
	if err != nil {
		return nil, err
	}
	if err := h.firstStart(ctx); err != nil {
		return nil, err
	}
	h.bus, err = bus.Open(ctx, bus.Config{URL: cfg.NATSURL, Namespace: cfg.NATSNamespace,
		DataDir: filepath.Join(cfg.Data, "nats"), Logger: logger})
	if err != nil {
		return nil, err
	}
	// Nodes sharing a PostgreSQL store share its outbox: one relay
	// publishes it, the others stand by (bridge.OutboxLock).
	if h.node, err = nodeID(cfg.Data); err != nil {
		return nil, fmt.Errorf("node id in the data directory (setting data): %w", err)
	}
	relayCfg := bridge.RelayConfig{Outbox: h.store, Publisher: h.bus.Publisher(), Node: h.node, Logger: logger, Registerer: h.reg}
	if h.store.Dialect() == "postgres" {
		relayCfg.Lock = h.store.OutboxLock(h.node)
	}
	h.relay, err = bridge.NewRelay(relayCfg)
	if err != nil {
		return nil, err
	}
	h.store.SetOnOutbox(h.relay.Notify)
	h.br, err = bridge.New(bridge.Config{Subscriber: h.bus.Subscriber, Publisher: h.bus.Publisher(),
		BuildURL: cfg.BaseURL + "/builds/", Logger: logger, Registerer: h.reg})
	if err != nil {
		return nil, err
	}
	if err := h.br.AddConsumer("log", bridge.LogConsumer(logger)); err != nil {
		return nil, err
	}
	run, err := runner.New(runner.Config{
		WorkDir: filepath.Join(cfg.Data, "workspaces"), ArtifactsDir: cfg.ArtifactsDir,
		MaxLogBytes: cfg.MaxLogBytes, MaxArtifactBytes: cfg.MaxArtifactBytes, DefaultTimeout: cfg.DefaultTimeout, Logger: logger,
	})
	if err != nil {
		return nil, err
	}
	h.queue, err = queue.New(queue.Config{Store: h.store, Runner: run, Concurrency: cfg.Concurrency,
		ShutdownGrace: cfg.ShutdownGrace, Requeue: cfg.OnRestart == "requeue", BuildURL: cfg.BaseURL + "/builds/", Node: h.node,
		OnLog: func(p builds.Project, b builds.Build, off int64, chunk []byte) {
			if fn := h.onLog; fn != nil {
				fn(p, b, off, chunk)
			}
		},
		Logger: logger, Registerer: h.reg})
	if err != nil {
		return nil, err
	}
	h.api, err = api.New(api.Config{Store: h.store, Scheduler: h.queue, Resolve: resolveCommit,
		ArtifactsDir: cfg.ArtifactsDir, MaxBodyBytes: cfg.MaxBodyBytes, BaseURL: cfg.BaseURL,
		Logger: logger, Registerer: h.reg})
	if err != nil {
		return nil, err
	}
	h.reg.MustRegister(newStoreCollector(h.store))
	for _, mount := range mounts {
		if err := mount(ctx, h); err != nil {
			return nil, err
		}
	}
	h.routes()
	return h, nil
}

// mounts are filled by the init functions of this package's feature files
// (sources, realtime, …): each adds its routes and consumers to the hub
// after the core parts exist, so a feature is wired in its own file.
var mounts []func(ctx context.Context, h *hub) error

// resolveCommit adapts the runner's git lookup to the API.
func resolveCommit(ctx context.Context, repo, ref string) (api.Commit, error) {
	c, err := runner.ResolveCommit(ctx, "git", repo, ref)
	if errors.Is(err, runner.ErrRefNotFound) {
		return api.Commit{}, fmt.Errorf("%w: %v", api.ErrRefNotFound, err)
	}
	if err != nil {
		return api.Commit{}, err
	}
	return api.Commit{SHA: c.SHA, Ref: c.Ref, Branch: c.Branch, Author: c.Author, AuthorEmail: c.AuthorEmail, Message: c.Message}, nil
}

// firstStart creates the admin user when the store has no user at all.
func (h *hub) firstStart(ctx context.Context) error {
	n, err := h.store.CountUsers(ctx)
	if err != nil || n > 0 {
		return err
	}
	h.adminToken, err = createUserWithToken(ctx, h.store, "admin", true)
	return err
}

func (h *hub) routes() {
	h.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"status":"ok"}`)
	})
	h.mux.HandleFunc("GET /readyz", h.readyz)
	h.mux.Handle("GET /metrics", promhttp.HandlerFor(h.reg, promhttp.HandlerOpts{Registry: h.reg}))
	h.mux.Handle("/api/", h.api)
	h.mux.Handle("/", h.api) // JSON 404s for everything else
}

// nodeID reads this node's id (hub.node) from the data directory, making
// it on first start: kept there, a restarted node takes back at once the
// builds and deliveries it held (nodes sharing a store each have a data
// directory of their own). Without a data directory it is made anew at
// each start.
func nodeID(dir string) (string, error) {
	if dir == "" {
		return store.NewNodeID(), nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	return persistentSecret(dir, "node-id", "", func() (string, error) { return store.NewNodeID(), nil })
}

// readyz answers 200 while the store and the bus answer, 503 naming what
// fails otherwise. It checks them afresh at every call, so a node that
// lost PostgreSQL or NATS is ready again as soon as they are back (the
// store's pool and the bus reconnect by themselves).
func (h *hub) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	var storeErr, busErr error
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); storeErr = h.store.Ping(ctx) }()
	go func() { defer wg.Done(); busErr = h.bus.Ping(ctx) }()
	wg.Wait()
	checks := map[string]string{}
	var failed []string
	check := func(name string, err error) {
		checks[name] = "ok"
		if err != nil {
			checks[name] = err.Error()
			failed = append(failed, name+": "+err.Error())
		}
	}
	check("store ("+h.store.Dialect()+")", storeErr)
	check("bus (nats)", busErr)
	select {
	case <-h.ready:
	default:
		check("startup", errors.New("starting"))
	}
	body := map[string]any{"status": "ready", "node": h.node, "checks": checks}
	status := http.StatusOK
	if len(failed) > 0 {
		status = http.StatusServiceUnavailable
		body["status"], body["failed"] = "unavailable", strings.Join(failed, "; ")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(body)
}

// run serves until ctx is done, then shuts down in order: stop accepting
// requests, let running builds finish (up to the grace period), drain the
// relay and router, close the bus and the store.
func (h *hub) run(ctx context.Context, out io.Writer) error {
	defer h.close()
	var err error
	h.ln, err = net.Listen("tcp", h.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s (setting addr): %w", h.cfg.Addr, err)
	}
	if n, err := h.queue.Recover(ctx); err != nil {
		return err
	} else if n > 0 {
		h.log.Warn("builds interrupted by the last stop were recovered", "count", n, "requeued", h.cfg.OnRestart == "requeue")
	}
	srv := &http.Server{Handler: h.mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(h.log.Handler(), slog.LevelWarn)}

	bg, stopBG := context.WithCancel(context.Background())
	defer stopBG()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	goRun := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(bg); err != nil && !errors.Is(err, context.Canceled) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	goRun("relay", h.relay.Run)
	goRun("bridge", h.br.Run)
	if h.cfg.ArtifactRetention > 0 {
		goRun("artifact retention", h.pruneArtifacts)
	}
	qctx, stopQueue := context.WithCancel(context.Background())
	qdone := make(chan struct{})
	go func() { defer close(qdone); h.queue.Run(qctx) }()
	go func() {
		if err := srv.Serve(h.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http: %w", err)
		}
	}()
	select {
	case <-h.br.Running():
	case err := <-errc:
		stopQueue()
		<-qdone
		return err
	}
	close(h.ready)
	h.announce(out)

	var runErr error
	select {
	case <-ctx.Done():
		h.log.Info("shutting down", "grace", h.cfg.ShutdownGrace)
	case runErr = <-errc:
		h.log.Error("stopping after failure", "err", runErr)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	for _, fn := range h.onShutdown {
		fn(sctx)
	}
	stopQueue()
	<-qdone
	// Give the relay and router a moment to publish the last transitions;
	// whatever is left stays in the outbox and goes out at the next start.
	time.Sleep(200 * time.Millisecond)
	stopBG()
	wg.Wait()
	return runErr
}

func (h *hub) announce(out io.Writer) {
	fmt.Fprintf(out, "buildbridge %s listening on %s\n", version, h.cfg.BaseURL)
	fmt.Fprintf(out, "  API:       %s/api/v1   health: %s/healthz   metrics: %s/metrics\n", h.cfg.BaseURL, h.cfg.BaseURL, h.cfg.BaseURL)
	fmt.Fprintf(out, "  data:      %s   store: %s   bus: %s   node: %s\n", h.cfg.Data, h.store.Dialect(), h.busName(), h.node)
	if h.adminToken != "" {
		fmt.Fprintf(out, "  first start: created user \"admin\"; its API token (shown only now):\n    %s\n", h.adminToken)
		fmt.Fprintf(out, "  try: curl -H 'Authorization: Bearer %s' %s/api/v1/projects\n", h.adminToken, h.cfg.BaseURL)
	}
}

func (h *hub) busName() string {
	if h.cfg.NATSURL != "" {
		return "nats " + h.cfg.NATSURL
	}
	return "embedded nats"
}

// Addr is the address the hub listens on, once run has started.
func (h *hub) Addr() string {
	if h.ln == nil {
		return ""
	}
	return h.ln.Addr().String()
}

func (h *hub) close() {
	if h.br != nil {
		h.br.Close()
	}
	if h.bus != nil {
		h.bus.Close()
	}
	if h.store != nil {
		h.store.Close()
	}
}
