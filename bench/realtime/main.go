// Command realtime is the load tool of buildbridge's Pusher-protocol
// server (package realtime). It speaks the protocol itself, on loopback
// only, and measures:
//
//	idle      memory per idle connection subscribed to one channel
//	fanout    N subscribers on one channel, E events/s: publish→receive latency
//	channels  C channels with one subscriber each, E events/s spread over them
//
// By default it starts the server in this process and runs the clients in
// a child process (the same binary, -worker), so that the memory figures
// of the idle scenario are the server's alone. With -url it loads an
// already running server instead (loopback addresses only). -client
// chooses how the worker reads: uring (default; a few loops with an
// io_uring each), epoll (a few loops with an epoll set each) or
// goroutines (one per connection); the clients share the machine with
// the server, so the cheaper they read, the more CPU the server gets.
//
//	go run ./bench/realtime -scenario idle -conns 10000
//	go run ./bench/realtime -scenario fanout -conns 10000 -rate 10 -duration 30s
//	go run ./bench/realtime -scenario channels -channels 1000 -rate 1000 -duration 30s
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/buildbridge/buildbridge/realtime"
)

const (
	benchAppID  = "bench"
	benchKey    = "bench-key"
	benchSecret = "bench-secret"
	maxDuration = 10 * time.Minute
	maxConns    = 50_000
)

type options struct {
	scenario string
	conns    int
	channels int
	rate     float64
	duration time.Duration
	settle   time.Duration
	url      string
	appID    string
	key      string
	secret   string
	private  bool
	memprof  string
	cpuprof  string
	wcpuprof string        // CPU profile of the client worker
	client   string        // uring, epoll or goroutines
	loops    int           // uring, epoll: reader loops in the worker; 0 means its GOMAXPROCS
	batchWt  time.Duration // uring, epoll: how long completions may gather after a small batch
	pingIvl  time.Duration // in-process server's ActivityTimeout and PongTimeout; 0 means the defaults
}

func main() {
	var o options
	var worker bool
	var w workerConfig
	flag.StringVar(&o.scenario, "scenario", "idle", "idle, fanout or channels")
	flag.IntVar(&o.conns, "conns", 1000, "connections (idle, fanout)")
	flag.IntVar(&o.channels, "channels", 1000, "channels, one subscriber each (channels scenario)")
	flag.Float64Var(&o.rate, "rate", 10, "events published per second (fanout, channels)")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "how long to publish (fanout, channels); at most 10m")
	flag.DurationVar(&o.settle, "settle", 2*time.Second, "pause before measuring memory and after publishing")
	flag.StringVar(&o.url, "url", "", "load a running server at this loopback base URL (http://127.0.0.1:port) instead of an in-process one")
	flag.StringVar(&o.appID, "app-id", benchAppID, "app id (with -url)")
	flag.StringVar(&o.key, "key", benchKey, "app key (with -url)")
	flag.StringVar(&o.secret, "secret", benchSecret, "app secret (with -url)")
	flag.BoolVar(&o.private, "private", true, "subscribe to private channels (signed), as buildbridge's users do")
	flag.StringVar(&o.memprof, "memprofile", "", "idle: write a heap profile of the server process to this file")
	flag.StringVar(&o.cpuprof, "cpuprofile", "", "fanout, channels: write a CPU profile of the server process while publishing")
	flag.StringVar(&o.client, "client", clientUring, "how the worker reads its connections: uring (a few reader loops with an io_uring each, Linux 6.1+; falls back to epoll), epoll (a few reader loops with an epoll set each, Linux) or goroutines (one per connection)")
	flag.StringVar(&o.wcpuprof, "client-cpuprofile", "", "write a CPU profile of the client worker process from READY to the end")
	flag.DurationVar(&o.batchWt, "client-batch-wait", time.Millisecond, "uring, epoll clients: after a wait that returned few events, let completions gather this long (uring: io_uring_enter's min_wait; epoll: a sleep) so that the next wait returns many: fewer wake-ups of the client and of the server's writes, at most this much added latency; 0 disables")
	flag.IntVar(&o.loops, "client-loops", 0, "uring, epoll clients: reader loops (locked OS threads); 0 means the worker's GOMAXPROCS")
	flag.DurationVar(&o.pingIvl, "ping-interval", 0, "in-process server: ActivityTimeout and PongTimeout (silent clients are pinged after it and dropped if they do not answer within it); 0 keeps the defaults (120s, 30s)")
	flag.BoolVar(&worker, "worker", false, "internal: run as the client worker process")
	flag.StringVar(&w.URL, "worker-url", "", "internal: WebSocket URL for the worker")
	flag.StringVar(&w.Prefix, "worker-prefix", "", "internal: channel name prefix for the worker")
	flag.IntVar(&w.Channels, "worker-channels", 1, "internal: distinct channels for the worker")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "Usage: go run ./bench/realtime [flags]\n\n"+
			"Loads buildbridge's Pusher-protocol server over loopback and prints memory per\n"+
			"connection (idle) or publish→receive latency (fanout, channels).\n\nFlags:\n")
		flag.PrintDefaults()
	}
	flag.Parse()

	if worker {
		w.Conns, w.Key, w.Secret, w.Client, w.Loops, w.CPUProfile = o.conns, o.key, o.secret, o.client, o.loops, o.wcpuprof
		w.BatchWait = o.batchWt
		if err := runWorker(w); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "realtime bench:", err)
		os.Exit(1)
	}
}

func (o *options) validate() error {
	switch {
	case o.scenario != "idle" && o.scenario != "fanout" && o.scenario != "channels":
		return fmt.Errorf("-scenario %q: want idle, fanout or channels", o.scenario)
	case o.conns < 1 || o.conns > maxConns:
		return fmt.Errorf("-conns %d: want 1..%d", o.conns, maxConns)
	case o.channels < 1 || o.channels > maxConns:
		return fmt.Errorf("-channels %d: want 1..%d", o.channels, maxConns)
	case o.rate <= 0 || o.rate > 100_000:
		return fmt.Errorf("-rate %g: want (0, 100000]", o.rate)
	case o.duration <= 0 || o.duration > maxDuration:
		return fmt.Errorf("-duration %v: want (0, %v]", o.duration, maxDuration)
	case o.client != clientEpoll && o.client != clientUring && o.client != clientGoroutines:
		return fmt.Errorf("-client %q: want %s, %s or %s", o.client, clientEpoll, clientUring, clientGoroutines)
	case o.batchWt < 0 || o.batchWt > 100*time.Millisecond:
		return fmt.Errorf("-client-batch-wait %v: want 0..100ms", o.batchWt)
	case o.loops < 0 || o.loops > 64:
		return fmt.Errorf("-client-loops %d: want 0..64", o.loops)
	case o.pingIvl < 0 || (o.pingIvl > 0 && o.pingIvl < time.Second):
		return fmt.Errorf("-ping-interval %v: want 0 or at least 1s", o.pingIvl)
	}
	if o.url != "" {
		u, err := url.Parse(o.url)
		if err != nil || u.Scheme != "http" {
			return fmt.Errorf("-url %q: want http://127.0.0.1:port", o.url)
		}
		ip := net.ParseIP(u.Hostname())
		if u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return fmt.Errorf("-url %q: only loopback addresses are allowed", o.url)
		}
	}
	return nil
}

// target is the server under load.
type target struct {
	base    string // http://host:port
	srv     *realtime.Server
	publish func(ctx context.Context, channel, data string) error
	close   func()
}

func run(o options) error {
	if err := o.validate(); err != nil {
		return err
	}
	if o.memprof != "" {
		runtime.MemProfileRate = 1 // every allocation, for exact figures
	}
	raiseFileLimit()
	t, err := startTarget(o)
	if err != nil {
		return err
	}
	defer t.close()

	prefix := "bench-"
	if o.private {
		prefix = "private-bench-"
	}
	conns, channels := o.conns, 1
	switch o.scenario {
	case "idle":
		channels = o.conns
	case "channels":
		conns, channels = o.channels, o.channels
	}
	fmt.Printf("scenario=%s conns=%d channels=%d server=%s client=%s go=%s GOMAXPROCS=%d\n",
		o.scenario, conns, channels, map[bool]string{true: "in-process", false: o.url}[t.srv != nil],
		o.client, runtime.Version(), runtime.GOMAXPROCS(0))

	before := readMem()
	start := time.Now()
	wk, err := startWorker(o, t.base, prefix, conns, channels)
	if err != nil {
		return err
	}
	defer wk.kill()
	fmt.Printf("connected and subscribed %d connections in %v\n", conns, time.Since(start).Round(time.Millisecond))

	switch o.scenario {
	case "idle":
		time.Sleep(o.settle)
		if t.srv == nil {
			fmt.Println("server memory not measured: the server is another process (-url)")
		} else {
			st := t.srv.Stats()
			after := readMem()
			report(before, after, conns, st)
			if o.memprof != "" {
				if err := writeHeapProfile(o.memprof); err != nil {
					return err
				}
			}
		}
		sum, err := wk.finish()
		if err != nil {
			return err
		}
		fmt.Printf("client worker (%s): errors=%d pings answered=%d\n", sum.Client, sum.Errors, sum.Pongs)
		return nil
	default:
		stopProf, err := startCPUProfile(o.cpuprof)
		if err != nil {
			return err
		}
		cpu0 := cpuTime()
		sent, err := publishLoop(o, t, prefix, channels)
		cpu := cpuTime() - cpu0
		stopProf()
		if err != nil {
			return err
		}
		who := "server process"
		if t.srv == nil {
			who = "this process (publishing over HTTP)"
		}
		time.Sleep(o.settle)
		sum, err := wk.finish()
		if err != nil {
			return err
		}
		perEvent := 1
		if o.scenario == "fanout" {
			perEvent = conns
		}
		want := sent * int64(perEvent)
		fmt.Printf("published=%d events (%.0f/s for %v) expected_deliveries=%d received=%d (%.2f%%) errors=%d pings_answered=%d\n",
			sent, o.rate, o.duration, want, sum.Received, 100*float64(sum.Received)/float64(max(want, 1)), sum.Errors, sum.Pongs)
		// Per delivery: the server's CPU while publishing (the fan-out of
		// the last event may end during the settle pause, < 1 event's
		// worth) over the deliveries expected; the worker's from READY to
		// the end over the messages it received.
		fmt.Printf("%s CPU while publishing: %v (%.0f%% of one core, %.2f µs per delivery)\n",
			who, cpu.Round(time.Millisecond), 100*cpu.Seconds()/o.duration.Seconds(),
			float64(cpu.Microseconds())/float64(max(want, 1)))
		fmt.Printf("client worker CPU (%s): %v (%.0f%% of one core over publishing+settle, %.2f µs per message)\n",
			sum.Client, time.Duration(sum.CPUNS).Round(time.Millisecond),
			100*time.Duration(sum.CPUNS).Seconds()/(o.duration+o.settle).Seconds(),
			float64(sum.CPUNS)/1e3/float64(max(sum.Received, 1)))
		if sum.Waits > 0 {
			fmt.Printf("client waits (epoll_wait or io_uring_enter) that returned events: %d, events %d (%.1f per wait)\n",
				sum.Waits, sum.Events, float64(sum.Events)/float64(sum.Waits))
		}
		fmt.Printf("latency publish→receive: p50=%v p99=%v max=%v\n",
			time.Duration(sum.P50NS).Round(10*time.Microsecond), time.Duration(sum.P99NS).Round(10*time.Microsecond),
			time.Duration(sum.MaxNS).Round(10*time.Microsecond))
		return nil
	}
}

// startTarget starts the in-process server, or points at -url.
func startTarget(o options) (*target, error) {
	if o.url != "" {
		pub := httpPublisher(strings.TrimSuffix(o.url, "/"), o.appID, o.key, o.secret)
		return &target{base: strings.TrimSuffix(o.url, "/"), publish: pub, close: func() {}}, nil
	}
	srv, err := realtime.New(realtime.Config{
		Apps:            []realtime.App{{ID: benchAppID, Key: benchKey, Secret: benchSecret}},
		ActivityTimeout: o.pingIvl,
		PongTimeout:     o.pingIvl,
		// The default queue of 128 frames is plenty for these rates.
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	return &target{
		base: "http://" + ln.Addr().String(),
		srv:  srv,
		publish: func(ctx context.Context, channel, data string) error {
			return srv.Publish(ctx, benchAppID, []string{channel}, "bench", data, "")
		},
		close: func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = srv.Shutdown(ctx)
			_ = hs.Shutdown(ctx)
		},
	}, nil
}

// httpPublisher publishes through the Pusher HTTP API of a running server.
func httpPublisher(base, appID, key, secret string) func(ctx context.Context, channel, data string) error {
	client := &http.Client{Timeout: 10 * time.Second}
	path := "/apps/" + appID + "/events"
	return func(ctx context.Context, channel, data string) error {
		body, _ := json.Marshal(map[string]string{"name": "bench", "channel": channel, "data": data})
		q := realtime.SignRequest(key, secret, "POST", path, nil, body, time.Now())
		req, err := http.NewRequestWithContext(ctx, "POST", base+path+"?"+q, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if resp.StatusCode != 200 {
			return fmt.Errorf("publish: %d %s", resp.StatusCode, b)
		}
		return nil
	}
}

// publishLoop publishes at o.rate for o.duration, round-robin over the
// channels, each event's data being its send time in Unix nanoseconds.
func publishLoop(o options, t *target, prefix string, channels int) (int64, error) {
	interval := time.Duration(float64(time.Second) / o.rate)
	start := time.Now()
	end := start.Add(o.duration)
	ctx := context.Background()
	var sent int64
	for {
		next := start.Add(time.Duration(sent) * interval)
		if !next.Before(end) {
			return sent, nil
		}
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		ch := channelName(prefix, int(sent%int64(channels)))
		if err := t.publish(ctx, ch, strconv.FormatInt(time.Now().UnixNano(), 10)); err != nil {
			return sent, fmt.Errorf("publish %d: %w", sent, err)
		}
		sent++
	}
}

// workerProc is the client worker child process.
type workerProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

func startWorker(o options, base, prefix string, conns, channels int) (*workerProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	key := o.key
	wsURL := "ws" + strings.TrimPrefix(base, "http") + "/app/" + key + "?protocol=7&client=bench&version=1"
	cmd := exec.Command(exe, "-worker", "-worker-url", wsURL, "-worker-prefix", prefix,
		"-worker-channels", strconv.Itoa(channels), "-conns", strconv.Itoa(conns),
		"-key", key, "-secret", o.secret, "-client", o.client, "-client-loops", strconv.Itoa(o.loops), "-client-cpuprofile", o.wcpuprof,
		"-client-batch-wait", o.batchWt.String())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	w := &workerProc{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	lineCh := make(chan string, 1)
	go func() {
		line, _ := readLine(w.out)
		lineCh <- line
	}()
	select {
	case line := <-lineCh:
		if line != "READY" {
			w.kill()
			return nil, fmt.Errorf("worker did not get ready (%q)", line)
		}
	case <-time.After(5 * time.Minute):
		w.kill()
		return nil, errors.New("worker not ready within 5 minutes")
	}
	return w, nil
}

// finish closes the worker's stdin and reads its summary.
func (w *workerProc) finish() (summary, error) {
	var s summary
	_ = w.stdin.Close()
	line, err := readLine(w.out)
	if err != nil && line == "" {
		return s, fmt.Errorf("worker summary: %w", err)
	}
	if err := json.Unmarshal([]byte(line), &s); err != nil {
		return s, fmt.Errorf("worker summary %q: %w", line, err)
	}
	return s, w.cmd.Wait()
}

func (w *workerProc) kill() {
	if w.cmd.ProcessState == nil {
		_ = w.cmd.Process.Kill()
		_ = w.cmd.Wait()
	}
}

// memReading is one look at this process's memory after a full GC.
type memReading struct {
	heap, stack, rss uint64
	goroutines       int
}

func readMem() memReading {
	// Several cycles: each may halve the stacks of idle goroutines.
	for range 6 {
		runtime.GC()
	}
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memReading{heap: ms.HeapAlloc, stack: ms.StackInuse, rss: vmRSS(), goroutines: runtime.NumGoroutine()}
}

// vmRSS reads VmRSS from /proc/self/status, in bytes (0 if unavailable).
func vmRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, _ := strconv.ParseUint(f[0], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}

func report(before, after memReading, conns int, st realtime.Stats) {
	per := func(a, b uint64) float64 { return (float64(b) - float64(a)) / float64(conns) / 1024 }
	fmt.Printf("server: connections=%d channels=%d goroutines=%d (+%.2f per connection)\n",
		st.Connections, st.Channels, after.goroutines, float64(after.goroutines-before.goroutines)/float64(conns))
	fmt.Printf("per connection: heap=%.2f KiB stacks=%.2f KiB heap+stacks=%.2f KiB rss=%.2f KiB\n",
		per(before.heap, after.heap), per(before.stack, after.stack),
		per(before.heap+before.stack, after.heap+after.stack), per(before.rss, after.rss))
	fmt.Printf("totals: heap %d→%d KiB, stacks %d→%d KiB, rss %d→%d KiB\n",
		before.heap>>10, after.heap>>10, before.stack>>10, after.stack>>10, before.rss>>10, after.rss>>10)
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// cpuTime is this process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// raiseFileLimit lifts the soft open-file limit to the hard limit: each
// connection is a file descriptor.
func raiseFileLimit() {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}
