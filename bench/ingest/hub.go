package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/buildbridge/buildbridge/bench/internal/childproc"
)

// hub is the side under test: the rig behind a loopback HTTP server, in
// this process or in a child process (-hub-process).
type hub interface {
	addr() string
	secret() string
	// cpu is the CPU time the hub's process has used (in this process:
	// the whole process, load generator included).
	cpu() time.Duration
	stats(ctx context.Context) (hubStats, error)
	close()
}

// hubStats is what the hub committed, read after the run.
type hubStats struct {
	Builds, Outbox int
	Wakes          int64
	Commits        uint64
	CommitPushes   float64 // sum of pushes per commit
	CommitSeconds  float64 // sum of commit durations
	SlowCommits    uint64  // commits that took over 5 ms
	// The hub's scheduler latency (runtime/metrics), whole life.
	SchedP50, SchedP99, SchedP999 time.Duration
	// The hub's garbage collector (runtime/metrics), whole life.
	GC gcStats
}

// local is the hub in this process.
type local struct {
	r   *rig
	srv *http.Server
	ln  net.Listener
}

func startHubHere(ctx context.Context, dir string, checkpointDelay time.Duration) (*local, error) {
	r, err := newRig(ctx, dir, checkpointDelay)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.store.Close()
		return nil, err
	}
	h := &local{r: r, ln: ln, srv: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.handler.Serve(w, req, "github", "app")
	})}}
	go h.srv.Serve(ln)
	return h, nil
}

func (h *local) addr() string       { return h.ln.Addr().String() }
func (h *local) secret() string     { return h.r.secret }
func (h *local) cpu() time.Duration { return cpuTime() }
func (h *local) close()             { h.srv.Close(); h.r.store.Close() }

func (h *local) stats(ctx context.Context) (hubStats, error) {
	var st hubStats
	if err := h.r.store.SQL().QueryRowContext(ctx, `SELECT COUNT(*) FROM builds`).Scan(&st.Builds); err != nil {
		return st, err
	}
	if err := h.r.store.SQL().QueryRowContext(ctx, `SELECT COUNT(*) FROM outbox`).Scan(&st.Outbox); err != nil {
		return st, err
	}
	st.Wakes = h.r.wakes.n.Load()
	if n, sum, ok := histogram(h.r.reg, "buildbridge_source_commit_pushes"); ok {
		_, secs, _ := histogram(h.r.reg, "buildbridge_source_commit_seconds")
		st.Commits, st.CommitPushes, st.CommitSeconds = n, sum, secs
		st.SlowCommits = over(h.r.reg, "buildbridge_source_commit_seconds", .005)
	}
	st.SchedP50, st.SchedP99, st.SchedP999, _ = schedLatency()
	st.GC = readGCStats()
	return st, nil
}

// hubHello is the child's ready line; the parent then sends {"op":"cpu"}
// or {"op":"stats"} and reads a hubReply.
type hubHello struct {
	Addr, Secret string
}

// hubReply answers a command: the child's CPU time, and its stats for
// "stats".
type hubReply struct {
	CPU   time.Duration
	Stats *hubStats
}

// serveHub is the child process of -hub-process: it runs the hub and
// answers commands until its stdin closes.
func serveHub(dir string, checkpointDelay time.Duration) error {
	ctx := context.Background()
	h, err := startHubHere(ctx, dir, checkpointDelay)
	if err != nil {
		return err
	}
	defer h.close()
	return childproc.Serve(hubHello{Addr: h.addr(), Secret: h.secret()}, func(op string, _ json.RawMessage) (any, error) {
		reply := hubReply{CPU: cpuTime()}
		if op == "stats" {
			st, err := h.stats(ctx)
			if err != nil {
				return nil, err
			}
			reply.Stats = &st
		}
		return reply, nil
	})
}

// child is the hub in a child process.
type child struct {
	p     *childproc.Child
	hello hubHello
}

func startHubProcess(ctx context.Context, dir string, checkpointDelay time.Duration) (*child, error) {
	c := &child{}
	p, err := childproc.Start(ctx, "hub", &c.hello, "-dir", dir, "-checkpoint-delay", checkpointDelay.String())
	if err != nil {
		return nil, fmt.Errorf("the hub process: %w", err)
	}
	c.p = p
	return c, nil
}

func (c *child) addr() string   { return c.hello.Addr }
func (c *child) secret() string { return c.hello.Secret }

func (c *child) ask(op string) (hubReply, error) {
	var reply hubReply
	err := c.p.Call(map[string]string{"op": op}, &reply)
	return reply, err
}

func (c *child) cpu() time.Duration {
	r, err := c.ask("cpu")
	if err != nil {
		fmt.Fprintln(os.Stderr, "ingest:", err)
	}
	return r.CPU
}

func (c *child) stats(context.Context) (hubStats, error) {
	r, err := c.ask("stats")
	if err != nil {
		return hubStats{}, err
	}
	if r.Stats == nil {
		return hubStats{}, errors.New("the hub process sent no stats")
	}
	return *r.Stats, nil
}

func (c *child) close() { c.p.Stop() }
