package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"time"
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

// hubHello is the child's first line on stdout; the parent asks for
// stats with a line on stdin and reads them as the next line.
type hubHello struct {
	Addr, Secret string
}

// hubReply answers a line on the child's stdin: its CPU time, and its
// stats if the line was "stats".
type hubReply struct {
	CPU   time.Duration
	Stats *hubStats
}

// serveHub is the child process of -hub-process: it runs the hub and
// answers each line on stdin with its stats and CPU time, until stdin
// closes.
func serveHub(dir string, checkpointDelay time.Duration) error {
	ctx := context.Background()
	h, err := startHubHere(ctx, dir, checkpointDelay)
	if err != nil {
		return err
	}
	defer h.close()
	out := json.NewEncoder(os.Stdout)
	if err := out.Encode(hubHello{Addr: h.addr(), Secret: h.secret()}); err != nil {
		return err
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		reply := hubReply{CPU: cpuTime()}
		if in.Text() == "stats" {
			st, err := h.stats(ctx)
			if err != nil {
				return err
			}
			reply.Stats = &st
		}
		if err := out.Encode(reply); err != nil {
			return err
		}
	}
	return in.Err()
}

// child is the hub in a child process.
type child struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *json.Decoder
	hello hubHello
}

func startHubProcess(dir string, checkpointDelay time.Duration) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-role", "hub", "-dir", dir, "-checkpoint-delay", checkpointDelay.String())
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the hub process: %w", err)
	}
	c := &child{cmd: cmd, in: in, out: json.NewDecoder(outPipe)}
	if err := c.out.Decode(&c.hello); err != nil {
		c.close()
		return nil, fmt.Errorf("the hub process did not start: %w", err)
	}
	return c, nil
}

func (c *child) addr() string   { return c.hello.Addr }
func (c *child) secret() string { return c.hello.Secret }

func (c *child) ask(what string) (time.Duration, *hubStats, error) {
	if _, err := fmt.Fprintln(c.in, what); err != nil {
		return 0, nil, err
	}
	var reply hubReply
	if err := c.out.Decode(&reply); err != nil {
		return 0, nil, fmt.Errorf("the hub process: %w", err)
	}
	return reply.CPU, reply.Stats, nil
}

func (c *child) cpu() time.Duration {
	d, _, err := c.ask("cpu")
	if err != nil {
		fmt.Fprintln(os.Stderr, "ingest:", err)
	}
	return d
}

func (c *child) stats(ctx context.Context) (hubStats, error) {
	_, st, err := c.ask("stats")
	if err != nil {
		return hubStats{}, err
	}
	if st == nil {
		return hubStats{}, errors.New("the hub process sent no stats")
	}
	return *st, nil
}

func (c *child) close() {
	c.in.Close()
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}
