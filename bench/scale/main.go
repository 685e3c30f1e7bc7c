// Command scale measures the per-unit costs that docs/scaling.md projects
// to 100 hub nodes, 10,000 runners and 1,000,000 realtime subscribers.
// Everything runs on loopback against the local NATS and PostgreSQL, is
// bounded in time and stops by itself. Scenarios:
//
//   - realtime: K hub nodes (each a child process with a realtime.Server
//     on natsbroker) on one NATS, S WebSocket subscribers spread over
//     them, a publisher sending E events/s to channels held by node 0.
//     Per node: CPU per event delivered and per event received and
//     dropped, NATS messages and bytes, cluster-view heartbeat traffic at
//     idle; for K = 2, 4, 8, 16.
//   - view: one node and a simulated peer that reports N remote
//     subscriptions (up to 1,000,000) the way a real node does: the
//     node's memory and CPU per remote subscription in its cluster view,
//     and the bytes per subscription on NATS.
//   - runners: R simulated runners (a child process) speaking the runner
//     protocol to one in-process hub on PostgreSQL: hub CPU, PostgreSQL
//     backend CPU and statements per claim, heartbeat, log chunk and idle
//     poll, at the client's default intervals.
//   - postgres: builds and deliveries seeded to 10k, 100k and 1M rows in a
//     private schema: EXPLAIN (ANALYZE, BUFFERS) of the hot queries at each
//     size, table sizes, and a batched retention delete.
//   - node: one `buildbridge serve` (-bin) on PostgreSQL and NATS: its
//     connections at idle and under concurrent requests, and its idle
//     CPU, PostgreSQL backend CPU and memory.
//
// The child processes are this binary run with -role; they die with it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// maxRun bounds any run, whatever the flags say.
const maxRun = 10 * time.Minute

// Settings of child processes, from their flags.
var (
	childNATS string // NATS URL
	childHub  string // runner protocol base URL
)

type options struct {
	scenario string
	natsURL  string
	pgDSN    string
	timeout  time.Duration

	// realtime
	nodes    []int
	subs     int
	rate     float64
	duration time.Duration
	idle     time.Duration
	payload  int

	// view
	remote   int
	viewRate int

	// runners
	runners  []int
	logRunrs int
	phase    time.Duration

	// postgres
	sizes []int
	keep  bool

	cpuprof string
	bin     string
}

func main() {
	var o options
	var role, nodesFlag, runnersFlag, sizesFlag string
	flag.StringVar(&o.scenario, "scenario", "all", "realtime, view, runners, postgres, node or all")
	flag.StringVar(&o.natsURL, "nats", envOr("BUILDBRIDGE_TEST_NATS", "nats://127.0.0.1:4222"), "NATS URL (loopback only)")
	flag.StringVar(&o.pgDSN, "postgres", envOr("BUILDBRIDGE_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"),
		"PostgreSQL DSN (loopback only); the runs use a private schema they drop")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Minute, "bound on the whole run (at most 10m)")
	flag.StringVar(&nodesFlag, "nodes", "2,4,8,16", "realtime: numbers of hub nodes, one run each")
	flag.IntVar(&o.subs, "subs", 2000, "realtime: WebSocket subscribers, each on its own private-user channel, spread over the nodes")
	flag.Float64Var(&o.rate, "rate", 1000, "realtime: events published per second")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "realtime: how long to publish")
	flag.DurationVar(&o.idle, "idle", 6*time.Second, "realtime: idle window measured before publishing")
	flag.IntVar(&o.payload, "payload", 600, "realtime: bytes of event data")
	flag.IntVar(&o.remote, "remote", 1_000_000, "view: remote subscriptions the simulated peer reports")
	flag.IntVar(&o.viewRate, "view-rate", 100, "view: counts messages per second the simulated peer sends (2,048 subscriptions each)")
	flag.StringVar(&runnersFlag, "runners", "100,250,500,1000", "runners: numbers of runners for the heartbeat and poll phases")
	flag.IntVar(&o.logRunrs, "log-runners", 100, "runners: runners streaming logs in the log phase")
	flag.DurationVar(&o.phase, "phase", 10*time.Second, "runners: length of each measured phase")
	flag.StringVar(&sizesFlag, "sizes", "10000,100000,1000000", "postgres: builds (and deliveries) rows, one measurement each")
	flag.StringVar(&o.bin, "bin", "bin/buildbridge", "node: the buildbridge binary to start")
	flag.StringVar(&o.cpuprof, "cpuprofile", "", "write a CPU profile of this process (the hub, in the runners scenario) to this file")
	flag.BoolVar(&o.keep, "keep", false, "postgres: keep the schema (its name is printed) instead of dropping it")
	flag.StringVar(&role, "role", "", "internal: run as a child process (node, publish, runners)")
	flag.StringVar(&childPrefix, "prefix", "", "internal: NATS subject prefix of the nodes")
	flag.StringVar(&childHub, "hub", "", "internal: the runner protocol's base URL, for the runners child")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "Usage: go run ./bench/scale [flags]\n\n"+
			"Measures the per-node, per-runner and per-row costs behind docs/scaling.md.\n\nFlags:\n")
		flag.PrintDefaults()
	}
	flag.Parse()

	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if role != "" {
		childNATS = o.natsURL
		if err := runChild(role); err != nil {
			fmt.Fprintf(os.Stderr, "scale %s: %v\n", role, err)
			os.Exit(1)
		}
		return
	}
	var err error
	if o.nodes, err = ints(nodesFlag, 1, 32); err != nil {
		fail(fmt.Errorf("-nodes: %w", err))
	}
	if o.runners, err = ints(runnersFlag, 1, 5000); err != nil {
		fail(fmt.Errorf("-runners: %w", err))
	}
	if o.sizes, err = ints(sizesFlag, 1000, 5_000_000); err != nil {
		fail(fmt.Errorf("-sizes: %w", err))
	}
	if err := o.validate(); err != nil {
		fail(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	raiseNoFile()
	if o.cpuprof != "" {
		f, err := os.Create(o.cpuprof)
		if err != nil {
			fail(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fail(err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	fmt.Printf("bench/scale: %s, %d CPUs, load average %s\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.NumCPU(), loadAvg())
	scenarios := []string{o.scenario}
	if o.scenario == "all" {
		scenarios = []string{"realtime", "view", "runners", "postgres", "node"}
	}
	for _, sc := range scenarios {
		var err error
		switch sc {
		case "realtime":
			err = runRealtime(ctx, o)
		case "view":
			err = runView(ctx, o)
		case "runners":
			err = runRunners(ctx, o)
		case "postgres":
			err = runPostgres(ctx, o)
		case "node":
			err = runNodeConns(ctx, o)
		}
		if err != nil {
			pprof.StopCPUProfile()
			fail(fmt.Errorf("%s: %w", sc, err))
		}
	}
}

func (o *options) validate() error {
	switch o.scenario {
	case "realtime", "view", "runners", "postgres", "node", "all":
	default:
		return fmt.Errorf("-scenario %q: want realtime, view, runners, postgres, node or all", o.scenario)
	}
	switch {
	case o.timeout <= 0 || o.timeout > maxRun:
		return fmt.Errorf("-timeout %v: want (0, %v]", o.timeout, maxRun)
	case o.subs < 1 || o.subs > 20000:
		return fmt.Errorf("-subs %d: want 1..20000", o.subs)
	case o.rate <= 0 || o.rate > 20000:
		return fmt.Errorf("-rate %g: want (0, 20000]", o.rate)
	case o.duration <= 0 || o.duration > 2*time.Minute || o.idle < 0 || o.idle > time.Minute:
		return errors.New("-duration: want (0, 2m]; -idle: want [0, 1m]")
	case o.payload < 10 || o.payload > 10000:
		return fmt.Errorf("-payload %d: want 10..10000", o.payload)
	case o.remote < 1 || o.remote > 2_000_000 || o.viewRate < 1 || o.viewRate > 1000:
		return errors.New("-remote: want 1..2000000; -view-rate: want 1..1000")
	case o.phase <= 0 || o.phase > time.Minute:
		return fmt.Errorf("-phase %v: want (0, 1m]", o.phase)
	case o.logRunrs < 1 || o.logRunrs > 5000:
		return fmt.Errorf("-log-runners %d: want 1..5000", o.logRunrs)
	}
	if err := loopbackURL(o.natsURL); err != nil {
		return fmt.Errorf("-nats: %w", err)
	}
	if err := loopbackURL(o.pgDSN); err != nil {
		return fmt.Errorf("-postgres: %w", err)
	}
	return nil
}

// loopbackURL refuses a URL whose host is not a loopback address.
func loopbackURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	h := u.Hostname()
	if ip := net.ParseIP(h); h != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("%q: only loopback addresses are allowed", h)
	}
	return nil
}

func ints(s string, lo, hi int) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < lo || n > hi {
			return nil, fmt.Errorf("%q: want integers in %d..%d", f, lo, hi)
		}
		out = append(out, n)
	}
	return out, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench/scale:", err)
	os.Exit(1)
}
