// Command ingest measures signed GitHub push ingest: each request is a
// GitHub push delivery signed with the project's webhook secret, sent over
// loopback HTTP to the real forge handler, which checks the signature,
// de-duplicates the delivery id and commits the build (build row, QUEUED
// transition, outbox row, delivery id) in a real SQLite store. It prints
// throughput and latency percentiles and checks every build was committed
// exactly once.
//
// Two ways to load it: closed loop (-c senders, each sending its next push
// as soon as the last one is answered: the most the hub can take), and
// open loop (-rate pushes per second on a fixed schedule, whatever the
// answers: the latency a steady stream sees, measured from each push's
// scheduled time so a stall counts for every push it delays).
//
//	go run ./bench/ingest -n 20000 -c 16
//	go run ./bench/ingest -n 30000 -rate 3000
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/sources"
	"github.com/buildbridge/buildbridge/sources/forge"
	"github.com/buildbridge/buildbridge/sources/forge/forgetest"
	"github.com/buildbridge/buildbridge/store"
)

func main() {
	n := flag.Int("n", 20000, "signed pushes to send")
	conc := flag.Int("c", 16, "concurrent senders (open loop: the most pushes in flight)")
	rate := flag.Float64("rate", 0, "open loop: send this many pushes per second on a fixed schedule (0: closed loop)")
	replays := flag.Int("replays", 0, "also send this many redeliveries of already sent ids (must build nothing)")
	dir := flag.String("dir", "", "data directory for the SQLite store (default: a new temporary one)")
	maxTime := flag.Duration("max", 2*time.Minute, "stop sending after this long")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of this process to this file (with -hub-process: the load generator only, not the hub)")
	checkpointDelay := flag.Duration("checkpoint-delay", 0, "store.Config.CheckpointDelay: background WAL checkpoints this long after a commit (0: the store's default; negative: SQLite's own, inside the commit that crosses its threshold)")
	hubProcess := flag.Bool("hub-process", false, "run the hub (store, handler, HTTP server) in a child process of its own, so that the load generator's goroutines, heap and CPU are not the hub's")
	role := flag.String("role", "", "internal: \"hub\" runs only the hub, for -hub-process")
	flag.Parse()
	if *role == "hub" {
		if err := serveHub(*dir, *checkpointDelay); err != nil {
			fmt.Fprintln(os.Stderr, "ingest hub:", err)
			os.Exit(1)
		}
		return
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "ingest:", err)
			os.Exit(1)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	if *rate > 0 && *conc < 64 {
		*conc = 64
	}
	if err := run(*n, *conc, *rate, *replays, *dir, *maxTime, *checkpointDelay, *hubProcess); err != nil {
		fmt.Fprintln(os.Stderr, "ingest:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

// counter is the queue's side: it only counts wake-ups.
type counter struct{ n atomic.Int64 }

func (c *counter) Wake() { c.n.Add(1) }

// rig is the store, the handler and a loopback server.
type rig struct {
	store   *store.DB
	handler *forge.Handler
	project builds.Project
	secret  string
	wakes   *counter
	reg     *prometheus.Registry
}

func newRig(ctx context.Context, dir string, checkpointDelay time.Duration) (*rig, error) {
	quiet := slog.New(slog.DiscardHandler)
	s, err := store.Open(ctx, store.Config{DataDir: dir, Logger: quiet, CheckpointDelay: checkpointDelay})
	if err != nil {
		return nil, err
	}
	u, err := s.CreateUser(ctx, "bench", false)
	if err != nil {
		return nil, err
	}
	p, err := s.CreateProject(ctx, builds.Project{Name: "app", OwnerID: u.ID, Repo: "/srv/app.git", DefaultBranch: "main",
		Steps: []builds.Step{{Name: "test", Run: "make test"}}})
	if err != nil {
		return nil, err
	}
	secret, err := forge.NewSecret()
	if err != nil {
		return nil, err
	}
	if _, err := s.RotateWebhookSecret(ctx, p.ID, secret, 0); err != nil {
		return nil, err
	}
	r := &rig{store: s, project: p, secret: secret, wakes: &counter{}, reg: prometheus.NewRegistry()}
	metrics, err := sources.NewMetrics(r.reg)
	if err != nil {
		return nil, err
	}
	ing, err := sources.New(sources.Config{Store: s, Scheduler: r.wakes, Logger: quiet, Metrics: metrics})
	if err != nil {
		return nil, err
	}
	r.handler, err = forge.NewHandler(forge.Config{Projects: s, Ingester: ing, Metrics: metrics, Logger: quiet})
	return r, err
}

func sha(i int) string {
	sum := sha1.Sum([]byte(strconv.Itoa(i)))
	return hex.EncodeToString(sum[:])
}

// delivery is the i-th push signed with secret: its own delivery id and
// commit.
func delivery(secret string, i int) forgetest.Delivery {
	return forgetest.GitHubPush(forgetest.Push{
		Ref: "refs/heads/main", Before: sha(i - 1), After: sha(i),
		Message: "Fix the flaky test #" + strconv.Itoa(i) + "\n\nThe retry loop now waits for the server.",
		Author:  "Ann Author", Email: "ann@example.com", Pusher: "ann",
	}, fmt.Sprintf("72d3162e-cc78-11e3-81ab-%012d", i), secret)
}

func run(n, conc int, rate float64, replays int, dir string, maxTime, checkpointDelay time.Duration, hubProcess bool) error {
	ctx := context.Background()
	if dir == "" {
		tmp, err := os.MkdirTemp("", "bench-ingest")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	var h hub
	var err error
	if hubProcess {
		h, err = startHubProcess(ctx, dir, checkpointDelay)
	} else {
		h, err = startHubHere(ctx, dir, checkpointDelay)
	}
	if err != nil {
		return err
	}
	defer h.close()
	url := "http://" + h.addr() + "/hooks/github/app"

	// Payloads are made and signed up front: the clock measures the hub.
	reqs := make([]forgetest.Delivery, n+replays)
	for i := range n {
		reqs[i] = delivery(h.secret(), i+1)
	}
	for i := range replays {
		reqs[n+i] = reqs[i*n/max(replays, 1)]
	}
	// The requests are written out in HTTP/1.1 once, and each sender
	// writes them on its own keep-alive connection and reads the answer
	// with http.ReadResponse: the load generator shares the two cores
	// (and, without -hub-process, the process) with the hub, so it should
	// cost as little as it can.
	wire := make([][]byte, len(reqs))
	for i, d := range reqs {
		var b bytes.Buffer
		if err := d.Request(url).Write(&b); err != nil {
			return err
		}
		wire[i] = b.Bytes()
	}

	lat := make([]time.Duration, len(reqs))
	var failed atomic.Int64
	var firstErr error
	var errOnce sync.Once
	fail := func(err error) {
		failed.Add(1)
		errOnce.Do(func() { firstErr = err })
	}
	send := func(c *conn, i int, from time.Time) {
		code, err := c.do(wire[i])
		lat[i] = time.Since(from)
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("delivery %d: status %d", i, code)
		}
		if err != nil {
			fail(err)
		}
	}
	addr := h.addr()
	deadline := time.Now().Add(maxTime)
	cpu0, hubCPU0, gc0 := cpuTime(), h.cpu(), readGCStats()
	start := time.Now()
	var wg sync.WaitGroup
	var sent int
	if rate > 0 {
		// Open loop: a pacer hands each push, with its scheduled time, to
		// a pool of senders.
		type job struct {
			i    int
			when time.Time
		}
		jobs := make(chan job, len(reqs))
		for range conc {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := dial(addr)
				if err != nil {
					fail(err)
					for range jobs {
					}
					return
				}
				defer c.Close()
				for j := range jobs {
					send(c, j.i, j.when)
				}
			}()
		}
		interval := time.Duration(float64(time.Second) / rate)
		for i := range reqs {
			when := start.Add(time.Duration(i) * interval)
			if when.After(deadline) {
				break
			}
			time.Sleep(time.Until(when))
			jobs <- job{i, when}
			sent++
		}
		close(jobs)
	} else {
		var next atomic.Int64
		for range conc {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := dial(addr)
				if err != nil {
					fail(err)
					return
				}
				defer c.Close()
				for {
					i := int(next.Add(1)) - 1
					if i >= len(reqs) || time.Now().After(deadline) {
						return
					}
					send(c, i, time.Now())
				}
			}()
		}
		wg.Wait()
		sent = min(int(next.Load()), len(reqs))
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu, hubCPU := cpuTime()-cpu0, h.cpu()-hubCPU0
	if firstErr != nil {
		return fmt.Errorf("%d of %d requests failed; first: %w", failed.Load(), sent, firstErr)
	}
	done := lat[:sent]
	slices.Sort(done)
	pct := func(p float64) time.Duration { return done[min(len(done)-1, int(p*float64(len(done))))] }

	st, err := h.stats(ctx)
	if err != nil {
		return err
	}
	built, outbox := st.Builds, st.Outbox
	wantBuilt := min(sent, n)
	mode := fmt.Sprintf("closed loop, %d senders", conc)
	if rate > 0 {
		mode = fmt.Sprintf("open loop at %.0f/s", rate)
	}
	fmt.Printf("signed GitHub pushes: %d sent (%d redeliveries), %s, in %s\n", sent, max(0, sent-n), mode, elapsed.Round(time.Millisecond))
	fmt.Printf("throughput: %.0f pushes/s\n", float64(sent)/elapsed.Seconds())
	fmt.Printf("latency:    p50 %s  p90 %s  p99 %s  max %s\n", pct(.50).Round(time.Microsecond), pct(.90).Round(time.Microsecond),
		pct(.99).Round(time.Microsecond), done[len(done)-1].Round(time.Microsecond))
	if hubProcess {
		fmt.Printf("cpu:        hub %s per push (%.2f cores), load generator %s per push (%.2f cores)\n",
			(hubCPU / time.Duration(sent)).Round(time.Microsecond), hubCPU.Seconds()/elapsed.Seconds(),
			(cpu / time.Duration(sent)).Round(time.Microsecond), cpu.Seconds()/elapsed.Seconds())
	} else {
		fmt.Printf("cpu:        %s per push (hub and load generator in one process; %.1f cores busy on average)\n",
			(cpu / time.Duration(sent)).Round(time.Microsecond), cpu.Seconds()/elapsed.Seconds())
	}
	if st.Commits > 0 {
		fmt.Printf("commits:    %d transactions, %.1f pushes each on average, %s each on average, %d over 5 ms\n",
			st.Commits, st.CommitPushes/float64(st.Commits), time.Duration(st.CommitSeconds/float64(st.Commits)*float64(time.Second)).Round(time.Microsecond),
			st.SlowCommits)
	}
	if st.SchedP50 > 0 {
		fmt.Printf("scheduler:  the hub's goroutines waited for a core: p50 %s  p99 %s  p99.9 %s (runtime/metrics, whole run)\n", st.SchedP50, st.SchedP99, st.SchedP999)
	}
	if hubProcess {
		fmt.Printf("gc:         hub %d cycles, %s of CPU, %s allocated per push (whole life of the child)\n",
			st.GC.Cycles, st.GC.CPU.Round(time.Millisecond), byteSize(st.GC.Alloc/uint64(sent)))
	} else {
		g := st.GC.sub(gc0)
		fmt.Printf("gc:         %d cycles, %s of CPU (%.1f%% of the process's), %s allocated per push\n",
			g.Cycles, g.CPU.Round(time.Millisecond), 100*g.CPU.Seconds()/cpu.Seconds(), byteSize(g.Alloc/uint64(sent)))
	}
	fmt.Printf("committed:  %d builds, %d outbox rows, %d queue wake-ups (want %d builds)\n", built, outbox, st.Wakes, wantBuilt)
	if built != wantBuilt || outbox != wantBuilt {
		return errors.New("builds committed do not match the pushes sent: lost or duplicated")
	}
	return nil
}

// cpuTime is the CPU time (user and system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// histogram returns the count and sum of a histogram in reg.
func histogram(reg *prometheus.Registry, name string) (uint64, float64, bool) {
	h := findHistogram(reg, name)
	return h.GetSampleCount(), h.GetSampleSum(), h.GetSampleCount() > 0
}

// over counts the observations of the histogram name above bound, which
// must be one of its bucket bounds.
func over(reg *prometheus.Registry, name string, bound float64) uint64 {
	h := findHistogram(reg, name)
	for _, b := range h.GetBucket() {
		if b.GetUpperBound() == bound {
			return h.GetSampleCount() - b.GetCumulativeCount()
		}
	}
	return 0
}

func findHistogram(reg *prometheus.Registry, name string) *dto.Histogram {
	mfs, err := reg.Gather()
	if err != nil {
		return nil
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetHistogram()
		}
	}
	return nil
}

// conn is one keep-alive HTTP/1.1 connection of a sender.
type conn struct {
	net.Conn
	br *bufio.Reader
}

func dial(addr string) (*conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c, br: bufio.NewReader(c)}, nil
}

// do writes one request and reads its answer.
func (c *conn) do(raw []byte) (int, error) {
	if _, err := c.Write(raw); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// schedLatency reads how long goroutines waited, runnable, for a core
// (runtime/metrics /sched/latencies:seconds, over the process's life): a
// tail there is a tail every request that waits behind it sees.
// gcStats is the garbage collector's work so far.
type gcStats struct {
	Cycles uint64
	CPU    time.Duration
	Alloc  uint64 // bytes allocated on the heap
}

func readGCStats() gcStats {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}, {Name: "/cpu/classes/gc/total:cpu-seconds"}, {Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	var g gcStats
	if s[0].Value.Kind() == metrics.KindUint64 {
		g.Cycles = s[0].Value.Uint64()
	}
	if s[1].Value.Kind() == metrics.KindFloat64 {
		g.CPU = time.Duration(s[1].Value.Float64() * float64(time.Second))
	}
	if s[2].Value.Kind() == metrics.KindUint64 {
		g.Alloc = s[2].Value.Uint64()
	}
	return g
}

func (g gcStats) sub(o gcStats) gcStats {
	return gcStats{Cycles: g.Cycles - o.Cycles, CPU: g.CPU - o.CPU, Alloc: g.Alloc - o.Alloc}
}

// byteSize prints n bytes in KiB.
func byteSize(n uint64) string { return fmt.Sprintf("%.1f KiB", float64(n)/1024) }

func schedLatency() (p50, p99, p999 time.Duration, ok bool) {
	sample := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	metrics.Read(sample)
	if sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return 0, 0, 0, false
	}
	h := sample[0].Value.Float64Histogram()
	var total uint64
	for _, c := range h.Counts {
		total += c
	}
	if total == 0 {
		return 0, 0, 0, false
	}
	at := func(q float64) time.Duration {
		want := uint64(q * float64(total))
		var n uint64
		for i, c := range h.Counts {
			n += c
			if n > want {
				return time.Duration(h.Buckets[i+1] * float64(time.Second)).Round(time.Microsecond)
			}
		}
		return time.Duration(h.Buckets[len(h.Buckets)-1] * float64(time.Second))
	}
	return at(.5), at(.99), at(.999), true
}
