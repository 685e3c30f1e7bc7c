// Command runners measures how many builds per second the hub hands to
// remote runners over the runner protocol on loopback. It queues -n
// builds, then -runners goroutines, each a runner with its own token,
// loop over claim → heartbeat → one log chunk → finish until the queue is
// empty, and it reports builds assigned (claimed and finished) per second
// and the HTTP calls per second. Nothing is executed: this is the hub's
// cost per build (four authenticated calls, a lease written, renewed and
// ended, two transitions through the outbox). Bounded by -timeout.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/builds/remote"
	"github.com/buildbridge/buildbridge/store"
)

func main() {
	n := flag.Int("n", 2000, "builds to queue and run")
	runners := flag.Int("runners", 8, "concurrent runners")
	pg := flag.String("postgres", "", "PostgreSQL DSN (default: SQLite in a temporary directory)")
	timeout := flag.Duration("timeout", 2*time.Minute, "bound on the whole run")
	nodes := flag.Int("nodes", 1, "hub nodes, each with its own store pool and HTTP listener (more than one needs -postgres); runners are spread over them")
	flag.Parse()
	if err := run(*n, *runners, *nodes, *pg, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "runners:", err)
		os.Exit(1)
	}
}

func run(n, runners, nodes int, pg string, timeout time.Duration) error {
	if nodes < 1 || (nodes > 1 && pg == "") {
		return fmt.Errorf("-nodes %d: want 1, or more with -postgres (SQLite is one node)", nodes)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	dir, err := os.MkdirTemp("", "bench-runners-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	quiet := slog.New(slog.DiscardHandler)
	s, err := store.Open(ctx, store.Config{DataDir: dir, Postgres: pg, Logger: quiet})
	if err != nil {
		return err
	}
	defer s.Close()
	// Each node is what a serve process brings to the runner protocol: a
	// store pool of its own and a hub on its own listener.
	bases := make([]string, nodes)
	for i := range bases {
		ns := s
		if i > 0 {
			if ns, err = store.Open(ctx, store.Config{DataDir: dir, Postgres: pg, Logger: quiet}); err != nil {
				return err
			}
			defer ns.Close()
		}
		hub, err := remote.NewHub(remote.HubConfig{Store: ns, ArtifactsDir: dir, LeaseTTL: time.Minute, Logger: quiet})
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: hub}
		go srv.Serve(ln)
		defer srv.Close()
		bases[i] = "http://" + ln.Addr().String() + "/runner/v1"
	}

	suffix := strconv.FormatInt(time.Now().UnixNano(), 36)
	u, err := s.CreateUser(ctx, "bench-"+suffix, true)
	if err != nil {
		return err
	}
	p, err := s.CreateProject(ctx, builds.Project{Name: "bench-" + suffix, OwnerID: u.ID, Repo: "/dev/null", DefaultBranch: "main"})
	if err != nil {
		return err
	}
	for range n {
		if _, err := s.CreateBuild(ctx, store.NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: "0123456789abcdef0123456789abcdef01234567"}); err != nil {
			return err
		}
	}
	tokens := make([]string, runners)
	for i := range tokens {
		if tokens[i], _, err = s.CreateRunner(ctx, fmt.Sprintf("bench-%s-%d", suffix, i), nil); err != nil {
			return err
		}
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: runners * 2}}
	var done, calls atomic.Int64
	call := func(base, token, method, path, lease string, body []byte, out any) (int, error) {
		req, _ := http.NewRequestWithContext(ctx, method, base+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		if lease != "" {
			req.Header.Set(remote.LeaseHeader, lease)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		calls.Add(1)
		if resp.StatusCode >= 300 {
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, b)
		}
		if out != nil && resp.StatusCode == http.StatusOK {
			return resp.StatusCode, json.NewDecoder(resp.Body).Decode(out)
		}
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	finish, _ := json.Marshal(remote.Finish{Result: builds.Passed})
	chunk := bytes.Repeat([]byte("log line of a build\n"), 10)
	start := time.Now()
	var wg sync.WaitGroup
	errc := make(chan error, runners)
	for i, tok := range tokens {
		base := bases[i%nodes]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				var job remote.Job
				st, err := call(base, tok, "POST", "/claim", "", []byte(`{}`), &job)
				if err != nil {
					errc <- err
					return
				}
				if st == http.StatusNoContent {
					return
				}
				id := "/builds/" + strconv.FormatInt(job.BuildID, 10)
				for _, c := range []struct {
					path string
					body []byte
				}{{id + "/heartbeat", nil}, {id + "/log", chunk}, {id + "/finish", finish}} {
					if _, err := call(base, tok, "POST", c.path, job.Lease, c.body, nil); err != nil {
						errc <- err
						return
					}
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errc)
	if err := <-errc; err != nil {
		return err
	}
	if ctx.Err() != nil {
		return fmt.Errorf("timed out after %d builds", done.Load())
	}
	// Every queued build claimed and finished exactly once, whichever node
	// the runner asked.
	if done.Load() != int64(n) {
		return fmt.Errorf("%d builds finished, %d were queued", done.Load(), n)
	}
	fmt.Printf("store=%s nodes=%d builds=%d runners=%d cores=%d elapsed=%s\n", s.Dialect(), nodes, done.Load(), runners, runtime.NumCPU(), elapsed.Round(time.Millisecond))
	// Each build is two transitions (STARTED, FINISHED), each an event
	// row in the outbox committed with it.
	fmt.Printf("builds assigned and finished: %.0f /s   events committed: %.0f /s   runner calls: %.0f /s\n",
		float64(done.Load())/elapsed.Seconds(), 2*float64(done.Load())/elapsed.Seconds(), float64(calls.Load())/elapsed.Seconds())
	return nil
}
