package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/buildbridge/buildbridge/realtime"
)

// workerConfig is what the parent passes to a client worker process.
type workerConfig struct {
	URL      string // ws://host:port/app/<key>?protocol=7
	Key      string
	Secret   string
	Conns    int
	Channels int // connection i subscribes to channel i % Channels
	Prefix   string
	Client   string // clientUring, clientEpoll or clientGoroutines: how the connections are read
	Loops    int    // uring, epoll: reader loops (OS threads); 0 means GOMAXPROCS
	// BatchWait: uring, epoll: how long completions may gather after a
	// small batch (epollLoop.batchWait, uringLoop.enter).
	BatchWait time.Duration
	// CPUProfile, if set, is where the worker writes its CPU profile from
	// READY to the end.
	CPUProfile string
}

// Client implementations: -client.
const (
	clientGoroutines = "goroutines" // one goroutine per connection, blocking reads through the Go netpoller
	clientEpoll      = "epoll"      // a few reader loops on locked OS threads, each with its own epoll set
	clientUring      = "uring"      // a few reader loops on locked OS threads, each with its own io_uring
)

// channelName is the name of bench channel i.
func channelName(prefix string, i int) string { return prefix + strconv.Itoa(i) }

// runWorker opens the connections, subscribes them, prints READY, records
// the latency of every "bench" event until stdin closes, then prints a
// JSON summary. It runs in a child process so that the parent's memory
// figures are the server's alone.
func runWorker(cfg workerConfig) error {
	raiseFileLimit()
	switch cfg.Client {
	case clientEpoll:
		return runEpollWorker(cfg)
	case clientUring:
		return runUringWorker(cfg)
	}
	var h histogram
	var errs, pongs atomic.Int64
	conns := make([]*wsConn, cfg.Conns)
	ready := make(chan error, cfg.Conns)
	var readers sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err := dialEach(cfg.Conns, func(i int) error {
		ws, err := dialAndSubscribe(cfg, i)
		if err != nil {
			return err
		}
		conns[i] = ws
		readers.Add(1)
		go func() {
			defer readers.Done()
			readEvents(ctx, ws, &h, &errs, &pongs, ready)
		}()
		return nil
	})
	if err != nil {
		cancel()
		for _, ws := range conns {
			if ws != nil {
				_ = ws.Close()
			}
		}
		readers.Wait()
		return err
	}
	for range cfg.Conns {
		if err := <-ready; err != nil {
			cancel()
			return err
		}
	}
	cpu, err := measureUntilDone(cfg.CPUProfile)
	if err != nil {
		cancel()
		return err
	}
	cancel()
	for _, ws := range conns {
		_ = ws.Close()
	}
	readers.Wait()
	return json.NewEncoder(os.Stdout).Encode(summary{Client: clientGoroutines, Connected: cfg.Conns, Received: h.n.Load(),
		P50NS: int64(h.quantile(0.50)), P99NS: int64(h.quantile(0.99)), MaxNS: h.max.Load(), Errors: errs.Load(),
		Pongs: pongs.Load(), CPUNS: int64(cpu)})
}

// dialEach calls dial for connections 0..n-1, 32 at a time (bounded dial
// concurrency), stops handing out connections after the first error and
// returns that error.
func dialEach(n int, dial func(i int) error) error {
	idx := make(chan int)
	var dialErr atomic.Pointer[error]
	var dialers sync.WaitGroup
	for range 32 {
		dialers.Go(func() {
			for i := range idx {
				if err := dial(i); err != nil {
					err = fmt.Errorf("connection %d: %w", i, err)
					dialErr.CompareAndSwap(nil, &err)
				}
			}
		})
	}
	for i := range n {
		if dialErr.Load() != nil {
			break
		}
		idx <- i
	}
	close(idx)
	dialers.Wait()
	if p := dialErr.Load(); p != nil {
		return *p
	}
	return nil
}

// dialAndSubscribe connects connection i and sends its subscription; the
// success is awaited by its reader.
func dialAndSubscribe(cfg workerConfig, i int) (*wsConn, error) {
	ws, err := dialWS(cfg.URL, 30*time.Second)
	if err != nil {
		return nil, err
	}
	_ = ws.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	msg, err := ws.readMessage()
	_ = ws.nc.SetReadDeadline(time.Time{})
	if err != nil {
		ws.Close()
		return nil, fmt.Errorf("reading connection_established: %w", err)
	}
	var est struct {
		Event string `json:"event"`
		Data  string `json:"data"`
	}
	var d struct {
		SocketID string `json:"socket_id"`
	}
	if json.Unmarshal(msg, &est) != nil || est.Event != "pusher:connection_established" || json.Unmarshal([]byte(est.Data), &d) != nil {
		ws.Close()
		return nil, fmt.Errorf("unexpected first message %s", msg)
	}
	ch := channelName(cfg.Prefix, i%cfg.Channels)
	sub := map[string]string{"channel": ch}
	if strings.HasPrefix(ch, "private-") {
		sub["auth"] = realtime.ChannelAuth(cfg.Key, cfg.Secret, d.SocketID, ch, "")
	}
	b, _ := json.Marshal(map[string]any{"event": "pusher:subscribe", "data": sub})
	if err := ws.writeText(b); err != nil {
		ws.Close()
		return nil, err
	}
	return ws, nil
}

var (
	benchEvent = []byte(`"event":"bench"`)
	dataKey    = []byte(`"data":"`)
	subOK      = []byte(`pusher_internal:subscription_succeeded`)
	pusherPing = []byte(`"pusher:ping"`)
	pusherPong = []byte(`{"event":"pusher:pong","data":{}}`)
)

// readEvents reads until the connection ends, reporting the subscription
// result on ready and recording each bench event's latency: its data is
// the publisher's time.Now().UnixNano().
func readEvents(ctx context.Context, ws *wsConn, h *histogram, errs, pongs *atomic.Int64, ready chan<- error) {
	subscribed := false
	for {
		msg, err := ws.readMessage()
		now := time.Now().UnixNano()
		if err != nil {
			if !subscribed {
				ready <- fmt.Errorf("before subscribing: %w", err)
			} else if ctx.Err() == nil && !errors.Is(err, context.Canceled) {
				errs.Add(1)
			}
			return
		}
		if !subscribed {
			if !bytes.Contains(msg, subOK) {
				ready <- fmt.Errorf("subscription failed: %s", msg)
				return
			}
			subscribed = true
			ready <- nil
			continue
		}
		if !bytes.Contains(msg, benchEvent) {
			if bytes.Contains(msg, pusherPing) {
				if err := ws.writeText(pusherPong); err != nil {
					errs.Add(1)
				} else {
					pongs.Add(1)
				}
			}
			continue
		}
		i := bytes.Index(msg, dataKey)
		if i < 0 {
			errs.Add(1)
			continue
		}
		rest := msg[i+len(dataKey):]
		j := bytes.IndexByte(rest, '"')
		sent, err := strconv.ParseInt(string(rest[:max(j, 0)]), 10, 64)
		if err != nil {
			errs.Add(1)
			continue
		}
		h.record(time.Duration(now - sent))
	}
}

// readLine reads the worker's READY line or summary from r.
func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	return strings.TrimSpace(line), err
}

// startCPUProfile starts a CPU profile to path, if set; the returned
// function stops it.
// measureUntilDone tells the parent the worker is ready ("READY" on
// stdout), waits for it to close stdin (publishing is over) and returns
// the worker's CPU time meanwhile, profiled into profile when set.
func measureUntilDone(profile string) (time.Duration, error) {
	stopProf, err := startCPUProfile(profile)
	if err != nil {
		return 0, err
	}
	defer stopProf()
	fmt.Println("READY")
	cpu0 := cpuTime()
	_, _ = io.Copy(io.Discard, os.Stdin)
	return cpuTime() - cpu0, nil
}

func startCPUProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}, nil
}
