// Command dashboard measures what a live dashboard costs the server when
// it polls the API and when it is pushed events: the story buildbridge
// comes from (5-second polling took 8.5% of wall clock, push 2%).
//
// In one run it starts a real `buildbridge serve` on loopback with seeded
// users and projects, keeps builds changing state at a steady rate through
// the API, and measures three windows of the same length:
//
//   - baseline: no dashboard, only the builds;
//   - polling: N dashboards each reading the projects list and every
//     project's latest builds every 5 s (the real endpoints, with their
//     real store queries);
//   - push: N dashboards on the Pusher protocol, each subscribed to its
//     user's private channel (signed by the real auth endpoint) after
//     reading the snapshot once, then only receiving events.
//
// For each window it reports the server process's CPU seconds per minute
// (/proc/<pid>/stat, user + system, without its children), the store's
// statements per minute (buildbridge_store_queries_total on /metrics),
// and the bytes the server sent to the dashboards. Everything runs on
// 127.0.0.1 and stops by itself.
//
//	go run ./bench/dashboard -bin bin/buildbridge
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"time"
)

type config struct {
	bin             string
	dashboards      int
	users           int
	projectsPerUser int
	interval        time.Duration
	window          time.Duration
	settle          time.Duration
	transitionEvery time.Duration
	baseline        bool
	serveArgs       string
	jsonOut         string
}

// result is one measured window.
type result struct {
	Phase         string  `json:"phase"`
	Dashboards    int     `json:"dashboards"`
	WindowSeconds float64 `json:"window_seconds"`
	CPUSecPerMin  float64 `json:"server_cpu_seconds_per_minute"`
	CPUPercent    float64 `json:"server_cpu_percent_of_one_core"`
	QueriesPerMin float64 `json:"store_queries_per_minute"`
	BytesPerMin   float64 `json:"bytes_sent_per_minute"`
	RequestsMin   float64 `json:"http_requests_per_minute"`
	Events        int64   `json:"state_events_received"`
	LogEvents     int64   `json:"log_events_received"`
	Transitions   int     `json:"builds_triggered"`
	Errors        int64   `json:"client_errors"`
	LastError     string  `json:"last_error,omitempty"`
}

func main() {
	var cfg config
	flag.StringVar(&cfg.bin, "bin", "bin/buildbridge", "the buildbridge binary (make build)")
	flag.IntVar(&cfg.dashboards, "dashboards", 500, "simulated dashboards in each phase")
	flag.IntVar(&cfg.users, "users", 100, "users the dashboards belong to (dashboards/users tabs each)")
	flag.IntVar(&cfg.projectsPerUser, "projects", 2, "projects per user")
	flag.DurationVar(&cfg.interval, "interval", 5*time.Second, "polling interval")
	flag.DurationVar(&cfg.window, "window", time.Minute, "length of each measured window")
	flag.DurationVar(&cfg.settle, "settle", 10*time.Second, "time between starting a phase's dashboards and measuring")
	flag.DurationVar(&cfg.transitionEvery, "transition-every", time.Second, "one build transition per this (a build is 3 transitions)")
	flag.BoolVar(&cfg.baseline, "baseline", true, "also measure a window with no dashboard")
	flag.StringVar(&cfg.serveArgs, "serve-args", "", "extra arguments for buildbridge serve, space separated")
	flag.StringVar(&cfg.jsonOut, "json", "", "also write the results as JSON to this file")
	flag.Parse()
	if cfg.dashboards < 1 || cfg.users < 1 || cfg.projectsPerUser < 1 || cfg.window < 5*time.Second || cfg.interval <= 0 || cfg.transitionEvery <= 0 {
		fmt.Fprintln(os.Stderr, "dashboard: -dashboards, -users, -projects must be ≥ 1, -window ≥ 5s, -interval and -transition-every > 0")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	// A hard bound on the whole run, whatever happens.
	phases := 2
	if cfg.baseline {
		phases = 3
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(phases)*(cfg.window+cfg.settle+90*time.Second)+2*time.Minute)
	defer cancel()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "dashboard:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config) error {
	if _, err := os.Stat(cfg.bin); err != nil {
		return fmt.Errorf("binary %s: %w (run make build)", cfg.bin, err)
	}
	dir, err := os.MkdirTemp("", "bb-dashboard-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	repo, err := makeRepo(dir)
	if err != nil {
		return err
	}
	data := dir + "/data"
	fmt.Fprintf(os.Stderr, "seeding %d users × %d projects …\n", cfg.users, cfg.projectsPerUser)
	accounts, err := seed(ctx, data, repo, cfg.users, cfg.projectsPerUser, 5)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	srv, err := startServer(ctx, cfg.bin, data, port, strings.Fields(cfg.serveArgs))
	if err != nil {
		return err
	}
	defer srv.stop()
	var key struct {
		Key string `json:"key"`
	}
	probe := &counters{}
	if err := get(ctx, http.DefaultClient, probe, accounts[0].token, srv.base+"/api/v1/user/channel", &key); err != nil {
		return err
	}
	// The seeded transitions go out through the bus first; wait for them.
	if err := waitOutbox(ctx, srv); err != nil {
		return err
	}
	scrape, err := scrapeCost(srv)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "a /metrics scrape costs %.0f store statements; subtracted from each window\n", scrape)

	// Builds change state at a steady rate for the whole run.
	tctx, stopTransitions := context.WithCancel(ctx)
	var triggered counterInt
	var twg sync.WaitGroup
	twg.Add(1)
	go func() {
		defer twg.Done()
		driveBuilds(tctx, srv.base, accounts, 3*cfg.transitionEvery, &triggered)
	}()
	defer func() { stopTransitions(); twg.Wait() }()

	var results []result
	if cfg.baseline {
		fmt.Fprintf(os.Stderr, "baseline: no dashboards, %s …\n", cfg.window)
		c := &counters{}
		r, err := measure(ctx, srv, "baseline", 0, cfg, c, &triggered, scrape)
		if err != nil {
			return err
		}
		results = append(results, r)
	}

	fmt.Fprintf(os.Stderr, "polling: %d dashboards every %s …\n", cfg.dashboards, cfg.interval)
	pc := &counters{}
	pctx, stopPolling := context.WithCancel(ctx)
	pwg := runPollers(pctx, srv.base, accounts, cfg.dashboards, cfg.interval, pc)
	if err := sleep(ctx, cfg.settle); err != nil {
		stopPolling()
		return err
	}
	r, err := measure(ctx, srv, "polling", cfg.dashboards, cfg, pc, &triggered, scrape)
	stopPolling()
	pwg.Wait()
	if err != nil {
		return err
	}
	results = append(results, r)

	fmt.Fprintf(os.Stderr, "push: connecting %d dashboards …\n", cfg.dashboards)
	uc := &counters{}
	uctx, stopPush := context.WithCancel(ctx)
	uwg, err := runPushers(uctx, srv.base, key.Key, accounts, cfg.dashboards, uc)
	if err != nil {
		stopPush()
		uwg.Wait()
		return fmt.Errorf("push dashboards: %w", err)
	}
	if err := sleep(ctx, cfg.settle); err != nil {
		stopPush()
		return err
	}
	r, err = measure(ctx, srv, "push", cfg.dashboards, cfg, uc, &triggered, scrape)
	stopPush()
	uwg.Wait()
	if err != nil {
		return err
	}
	results = append(results, r)

	report(os.Stdout, cfg, results)
	if cfg.jsonOut != "" {
		b, _ := json.MarshalIndent(results, "", "  ")
		if err := os.WriteFile(cfg.jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

type counterInt struct {
	mu sync.Mutex
	n  int
}

func (c *counterInt) add() { c.mu.Lock(); c.n++; c.mu.Unlock() }
func (c *counterInt) get() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// driveBuilds triggers a build every `every`, round-robin over all
// projects, through the API as a user would.
func driveBuilds(ctx context.Context, base string, accounts []account, every time.Duration, n *counterInt) {
	type proj struct{ token, name string }
	var all []proj
	for _, a := range accounts {
		for _, p := range a.projects {
			all = append(all, proj{a.token, p})
		}
	}
	hc := &http.Client{Timeout: 30 * time.Second}
	t := time.NewTicker(every)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p := all[i%len(all)]
		req, _ := http.NewRequestWithContext(ctx, "POST", base+"/api/v1/projects/"+p.name+"/builds", strings.NewReader(`{"branch":"main"}`))
		req.Header.Set("Authorization", "Bearer "+p.token)
		req.Header.Set("Content-Type", "application/json")
		r, err := hc.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				fmt.Fprintln(os.Stderr, "trigger:", err)
			}
			continue
		}
		r.Body.Close()
		if r.StatusCode != http.StatusCreated {
			fmt.Fprintln(os.Stderr, "trigger:", r.Status)
			continue
		}
		n.add()
	}
}

func measure(ctx context.Context, srv *server, phase string, dashboards int, cfg config, c *counters, triggered *counterInt, scrape float64) (result, error) {
	cpu0, err := srv.cpuTicks()
	if err != nil {
		return result{}, err
	}
	q0, err := srv.metric("buildbridge_store_queries_total")
	if err != nil {
		return result{}, err
	}
	b0, r0, e0, l0, t0 := c.read.Load(), c.requests.Load(), c.events.Load(), c.logs.Load(), triggered.get()
	start := time.Now()
	if err := sleep(ctx, cfg.window); err != nil {
		return result{}, err
	}
	cpu1, err := srv.cpuTicks()
	if err != nil {
		return result{}, err
	}
	elapsed := time.Since(start)
	q1, err := srv.metric("buildbridge_store_queries_total")
	if err != nil {
		return result{}, err
	}
	mins := elapsed.Minutes()
	res := result{
		Phase: phase, Dashboards: dashboards, WindowSeconds: elapsed.Seconds(),
		CPUSecPerMin:  float64(cpu1-cpu0) / userHZ / mins,
		QueriesPerMin: max(0, q1-q0-scrape) / mins,
		BytesPerMin:   float64(c.read.Load()-b0) / mins,
		RequestsMin:   float64(c.requests.Load()-r0) / mins,
		Events:        c.events.Load() - e0,
		LogEvents:     c.logs.Load() - l0,
		Transitions:   triggered.get() - t0,
		Errors:        c.errors.Load(),
	}
	res.CPUPercent = res.CPUSecPerMin / 60 * 100
	if p := c.lastErr.Load(); p != nil {
		res.LastError = *p
	}
	fmt.Fprintf(os.Stderr, "  %s: %.2f CPU s/min, %.0f queries/min, %.0f bytes/min, %d state + %d log events, %d errors\n",
		phase, res.CPUSecPerMin, res.QueriesPerMin, res.BytesPerMin, res.Events, res.LogEvents, res.Errors)
	return res, nil
}

// scrapeCost is how many store statements one /metrics scrape makes (its
// collectors read the store), the median of a few back-to-back scrapes.
func scrapeCost(srv *server) (float64, error) {
	var d []float64
	prev, err := srv.metric("buildbridge_store_queries_total")
	if err != nil {
		return 0, err
	}
	for range 5 {
		v, err := srv.metric("buildbridge_store_queries_total")
		if err != nil {
			return 0, err
		}
		d = append(d, v-prev)
		prev = v
	}
	sort.Float64s(d)
	return d[len(d)/2], nil
}

func waitOutbox(ctx context.Context, srv *server) error {
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		n, err := srv.metric("buildbridge_outbox_backlog")
		if err == nil && n == 0 {
			return sleep(ctx, 3*time.Second) // and what the router still holds
		}
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return err
		}
	}
	return errors.New("the seeded transitions were not published within 3 minutes")
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
