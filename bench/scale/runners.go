package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver

	"github.com/buildbridge/buildbridge/bench/internal/childproc"
	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/builds/remote"
	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/store"
)

// pgSchema is a schema of a run's own on the benchmark's database.
type pgSchema struct {
	name string
	// dsn is the database's DSN with search_path set to the schema and
	// application_name to the run's.
	dsn string
	// admin is a pool on the database's own DSN, for the schema's
	// creation and drop and for reading pg_stat_activity.
	admin *sql.DB
}

// privateSchema creates a schema of its own on dsn's database; the
// returned DSN sets application_name to app. drop releases it.
func privateSchema(ctx context.Context, dsn, prefix, app string) (*pgSchema, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return nil, err
	}
	admin, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, err
	}
	var raw [6]byte
	rand.Read(raw[:])
	schema := prefix + hex.EncodeToString(raw[:])
	if _, err := admin.ExecContext(ctx, `CREATE SCHEMA `+schema); err != nil {
		admin.Close()
		return nil, fmt.Errorf("create schema: %w", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	q.Set("application_name", app)
	u.RawQuery = q.Encode()
	return &pgSchema{name: schema, dsn: u.String(), admin: admin}, nil
}

// drop drops the schema and closes the admin pool.
func (s *pgSchema) drop() {
	dctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := s.admin.ExecContext(dctx, `DROP SCHEMA `+s.name+` CASCADE`); err != nil {
		fmt.Fprintf(os.Stderr, "bench/scale: drop schema %s: %v (drop it by hand)\n", s.name, err)
	}
	s.admin.Close()
}

// pgBackends sums the CPU of the PostgreSQL backends serving
// application_name app, read from /proc (10 ms ticks). Backends that
// come and go between two readings are missed; the store's pool keeps
// its connections.
type pgBackends struct {
	admin *sql.DB
	app   string
}

func (p *pgBackends) cpu(ctx context.Context) (time.Duration, int, error) {
	rows, err := p.admin.QueryContext(ctx, `SELECT pid FROM pg_stat_activity WHERE application_name = $1`, p.app)
	if err != nil {
		return 0, 0, err
	}
	defer rows.Close()
	var total time.Duration
	n := 0
	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err != nil {
			return 0, 0, err
		}
		if c, err := procCPU(pid); err == nil {
			total += c
			n++
		}
	}
	return total, n, rows.Err()
}

// phaseCost is one measured phase on the hub's side.
type phaseCost struct {
	name       string
	sim        simResult
	hubCPU     time.Duration
	pgCPU      time.Duration
	statements uint64
	backends   int
	wall       time.Duration
}

func (p phaseCost) perCall(d time.Duration) float64 {
	if p.sim.Calls == 0 {
		return 0
	}
	return us(d) / float64(p.sim.Calls)
}

func runRunners(ctx context.Context, o options) error {
	maxR := max(slices.Max(o.runners), o.logRunrs)
	fmt.Printf("\n== runners: simulated runners → one hub (remote.Hub, reaper every 1s) on PostgreSQL, %v per phase\n", o.phase)
	var raw [4]byte
	rand.Read(raw[:])
	appName := "bbscale-hub-" + hex.EncodeToString(raw[:])
	sc, err := privateSchema(ctx, o.pgDSN, "bbscale_runners_", appName)
	if err != nil {
		return err
	}
	defer sc.drop()
	pg := &pgBackends{admin: sc.admin, app: appName}
	quiet := slog.New(slog.DiscardHandler)
	s, err := store.Open(ctx, store.Config{Postgres: sc.dsn, Logger: quiet})
	if err != nil {
		return err
	}
	defer s.Close()
	dir, err := os.MkdirTemp("", "bench-scale-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// A long lease: every phase measures one kind of call, so runners
	// that are not heartbeating in a phase must not lose their builds. A
	// heartbeat costs the same whatever the lease's length.
	// OnLog as buildbridge serve sets it, but the build-log events are
	// encoded and dropped instead of published (the realtime scenario
	// measures publishing): the hub reads the build and its project for
	// them, two statements per chunk.
	onLog := func(p builds.Project, b builds.Build, off int64, chunk []byte) {
		for _, raw := range event.BuildLog(p, b, off, chunk, time.Now()) {
			logEvents.Add(int64(len(raw)))
		}
	}
	hub, err := remote.NewHub(remote.HubConfig{Store: s, ArtifactsDir: dir, LeaseTTL: 10 * time.Minute, OnLog: onLog, Logger: quiet})
	if err != nil {
		return err
	}
	rctx, stopReaper := context.WithCancel(ctx)
	var bg sync.WaitGroup
	defer func() { stopReaper(); bg.Wait() }()
	bg.Go(func() { hub.RunReaper(rctx) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: hub, ReadHeaderTimeout: 10 * time.Second}
	bg.Go(func() { srv.Serve(ln) })
	defer srv.Close()

	u, err := s.CreateUser(ctx, "bench-scale", true)
	if err != nil {
		return err
	}
	p, err := s.CreateProject(ctx, builds.Project{Name: "bench-scale", OwnerID: u.ID, Repo: "/dev/null", DefaultBranch: "main"})
	if err != nil {
		return err
	}
	tokens := make([]string, maxR)
	if err := parallel(ctx, maxR, 8, func(i int) error {
		var err error
		tokens[i], _, err = s.CreateRunner(ctx, fmt.Sprintf("bench-%d", i), nil)
		if err != nil {
			return err
		}
		_, err = s.CreateBuild(ctx, store.NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main",
			SHA: "0123456789abcdef0123456789abcdef01234567"})
		return err
	}); err != nil {
		return err
	}
	var ready nodeReady
	sim, err := childproc.Start(ctx, "runners", &ready, "-hub", "http://"+ln.Addr().String()+"/runner/v1")
	if err != nil {
		return err
	}
	defer sim.Stop()
	if err := sim.Call(simCmd{Op: "tokens", Tokens: tokens}, nil); err != nil {
		return err
	}
	fmt.Printf("schema %s: %d runners, %d queued builds (load %s)\n", sc.name, maxR, maxR, loadAvg())

	measure := func(name string, cmd *simCmd, idle time.Duration) (phaseCost, error) {
		pc := phaseCost{name: name}
		pg0, _, err := pg.cpu(ctx)
		if err != nil {
			return pc, err
		}
		q0, h0, t0 := s.Queries(), selfCPU(), time.Now()
		if cmd != nil {
			if err := sim.Call(cmd, &pc.sim); err != nil {
				return pc, err
			}
		} else {
			select {
			case <-ctx.Done():
				return pc, ctx.Err()
			case <-time.After(idle):
			}
		}
		pc.wall, pc.hubCPU, pc.statements = time.Since(t0), selfCPU()-h0, s.Queries()-q0
		pg1, n, err := pg.cpu(ctx)
		if err != nil {
			return pc, err
		}
		pc.pgCPU, pc.backends = pg1-pg0, n
		return pc, nil
	}
	// The idle hub: the reaper's reads every second.
	base, err := measure("idle hub (reaper only)", nil, min(o.phase, 5*time.Second))
	if err != nil {
		return err
	}
	idleHub := base.hubCPU.Seconds() / base.wall.Seconds()
	idlePG := base.pgCPU.Seconds() / base.wall.Seconds()
	idleStmt := float64(base.statements) / base.wall.Seconds()
	fmt.Printf("idle hub: %.2f%% of a core, PostgreSQL backends %.2f%%, %.1f statements/s (the reaper: expired leases and builds waiting for labels, every second)\n",
		100*idleHub, 100*idlePG, idleStmt)

	var phases []phaseCost
	run := func(name string, cmd simCmd) error {
		pc, err := measure(name, &cmd, 0)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		// The idle hub's own work is not the calls'.
		w := pc.wall.Seconds()
		pc.hubCPU -= time.Duration(idleHub * w * float64(time.Second))
		pc.pgCPU -= time.Duration(idlePG * w * float64(time.Second))
		pc.statements -= min(pc.statements, uint64(idleStmt*w))
		phases = append(phases, pc)
		return nil
	}
	if err := run(fmt.Sprintf("claim (build handed out), %d runners once", maxR), simCmd{Op: "claim", N: maxR}); err != nil {
		return err
	}
	for _, r := range o.runners {
		if err := run(fmt.Sprintf("heartbeat every 500ms, %d runners", r), simCmd{Op: "heartbeat", N: r, Every: 500 * time.Millisecond, For: o.phase}); err != nil {
			return err
		}
	}
	if err := run(fmt.Sprintf("log chunk (200 B) every 200ms, %d runners", o.logRunrs),
		simCmd{Op: "log", N: o.logRunrs, Every: 200 * time.Millisecond, For: o.phase, Bytes: 200}); err != nil {
		return err
	}
	for _, r := range o.runners {
		if err := run(fmt.Sprintf("idle poll (claim → 204) every 1s, %d runners", r), simCmd{Op: "poll", N: r, Every: time.Second, For: o.phase}); err != nil {
			return err
		}
	}
	if err := run(fmt.Sprintf("finish, %d runners once", maxR), simCmd{Op: "finish", N: maxR}); err != nil {
		return err
	}

	fmt.Printf("\n%-48s %8s %9s %8s %9s %9s %9s %10s %10s %8s %s\n", "phase", "calls", "offered", "calls/s", "p50 ms", "p99 ms",
		"hub µs", "PG µs", "stmts", "PG conns", "status")
	for _, pc := range phases {
		st := []string{}
		for code, n := range pc.sim.Status {
			st = append(st, fmt.Sprintf("%d×%d", code, n))
		}
		slices.Sort(st)
		if pc.sim.Errors > 0 {
			st = append(st, fmt.Sprintf("errors×%d", pc.sim.Errors))
		}
		fmt.Printf("%-48s %8d %9.0f %8.0f %9.2f %9.2f %9.0f %10.0f %10.2f %8d %s\n", pc.name, pc.sim.Calls, pc.sim.Offered,
			float64(pc.sim.Calls)/pc.sim.Elapsed.Seconds(), ms(pc.sim.P50), ms(pc.sim.P99),
			pc.perCall(pc.hubCPU), pc.perCall(pc.pgCPU), float64(pc.statements)/float64(max(pc.sim.Calls, 1)), pc.backends, strings.Join(st, " "))
	}
	fmt.Printf("(hub µs: CPU of the hub process per call, HTTP and store included; PG µs: CPU of its PostgreSQL backends per call, from /proc in 10 ms ticks; "+
		"stmts: statements the store sent per call; the idle hub's rates are taken off; load %s)\n", loadAvg())
	return nil
}

// logEvents counts the bytes of build-log events the hub made.
var logEvents atomic.Int64

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// parallel runs f(0..n-1) with at most width at once and returns the
// first error.
func parallel(ctx context.Context, n, width int, f func(i int) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		sem   = make(chan struct{}, width)
	)
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := f(i); err != nil {
				mu.Lock()
				first = errors.Join(first, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}
