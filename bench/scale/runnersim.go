package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/buildbridge/buildbridge/bench/internal/childproc"
	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/builds/remote"
)

// simCmd is one phase of the simulated runners: the first N runners each
// make one kind of call every Every for For (claim and finish: once each).
type simCmd struct {
	Op     string        `json:"op"`
	Tokens []string      `json:"tokens,omitempty"`
	N      int           `json:"n"`
	Every  time.Duration `json:"every"`
	For    time.Duration `json:"for"`
	Bytes  int           `json:"bytes"`
}

// simResult is what a phase did, as the runners saw it.
type simResult struct {
	Calls   int           `json:"calls"`
	Offered float64       `json:"offered"` // calls the intervals asked for
	Status  map[int]int   `json:"status"`
	Errors  int           `json:"errors"` // transport errors
	P50     time.Duration `json:"p50_ns"`
	P99     time.Duration `json:"p99_ns"`
	Elapsed time.Duration `json:"elapsed_ns"`
}

type simJob struct {
	id    int64
	lease string
}

// runRunnerSim is the runners child: it speaks the protocol of
// builds/remote (as remote.Client does: Bearer token, lease header) to
// the hub at -hub, without running anything.
func runRunnerSim() error {
	if childHub == "" {
		return fmt.Errorf("-hub is required")
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		MaxIdleConns: 10000, MaxIdleConnsPerHost: 10000, IdleConnTimeout: 5 * time.Minute}}
	var tokens []string
	var jobs []simJob
	// Calls are not tied to a phase's end: one under way finishes, within
	// the client's timeout.
	call := func(tok, method, path, lease string, body []byte, out any) (int, error) {
		req, err := http.NewRequest(method, childHub+path, bytes.NewReader(body))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		if lease != "" {
			req.Header.Set(remote.LeaseHeader, lease)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		if out != nil && resp.StatusCode == http.StatusOK {
			return resp.StatusCode, json.NewDecoder(resp.Body).Decode(out)
		}
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	finish, _ := json.Marshal(remote.Finish{Result: builds.Passed})
	return childproc.Serve(nodeReady{PID: os.Getpid()}, func(op string, raw json.RawMessage) (any, error) {
		var c simCmd
		if err := json.Unmarshal(raw, &c); err != nil {
			return nil, err
		}
		if op == "tokens" {
			tokens = c.Tokens
			jobs = make([]simJob, len(tokens))
			return map[string]int{"tokens": len(tokens)}, nil
		}
		if c.N < 1 || c.N > len(tokens) {
			return nil, fmt.Errorf("%s: n %d, have %d runners", op, c.N, len(tokens))
		}
		var (
			mu    sync.Mutex
			res   = simResult{Status: map[int]int{}}
			lats  []time.Duration
			wg    sync.WaitGroup
			start = time.Now()
		)
		record := func(st int, err error, took time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			res.Calls++
			if err != nil {
				res.Errors++
				return
			}
			res.Status[st]++
			lats = append(lats, took)
		}
		chunk := bytes.Repeat([]byte("x"), max(c.Bytes-1, 0)) // read-only, shared by the calls
		one := func(i int) {
			t0 := time.Now()
			var st int
			var err error
			switch op {
			case "claim", "poll":
				var j remote.Job
				st, err = call(tokens[i], "POST", "/claim", "", []byte(`{}`), &j)
				if op == "claim" && err == nil && st == http.StatusOK {
					jobs[i] = simJob{id: j.BuildID, lease: j.Lease}
				}
			case "heartbeat":
				st, err = call(tokens[i], "POST", "/builds/"+strconv.FormatInt(jobs[i].id, 10)+"/heartbeat", jobs[i].lease, nil, nil)
			case "log":
				st, err = call(tokens[i], "POST", "/builds/"+strconv.FormatInt(jobs[i].id, 10)+"/log", jobs[i].lease, chunk, nil)
			case "finish":
				st, err = call(tokens[i], "POST", "/builds/"+strconv.FormatInt(jobs[i].id, 10)+"/finish", jobs[i].lease, finish, nil)
			}
			record(st, err, time.Since(t0))
		}
		switch op {
		case "claim", "finish":
			// Once per runner, 32 at a time.
			sem := make(chan struct{}, 32)
			for i := range c.N {
				sem <- struct{}{}
				wg.Go(func() {
					defer func() { <-sem }()
					one(i)
				})
			}
			res.Offered = float64(c.N)
		case "heartbeat", "log", "poll":
			if c.Every <= 0 || c.For <= 0 {
				return nil, fmt.Errorf("%s: every and for are required", op)
			}
			ctx, cancel := context.WithTimeout(context.Background(), c.For)
			defer cancel()
			for i := range c.N {
				wg.Go(func() {
					// Spread the runners over the interval, as runners
					// started at different times are.
					select {
					case <-ctx.Done():
						return
					case <-time.After(c.Every * time.Duration(i) / time.Duration(c.N)):
					}
					t := time.NewTicker(c.Every)
					defer t.Stop()
					for ctx.Err() == nil {
						one(i)
						select {
						case <-ctx.Done():
						case <-t.C:
						}
					}
				})
			}
			res.Offered = float64(c.N) * c.For.Seconds() / c.Every.Seconds()
		default:
			return nil, fmt.Errorf("unknown op %q", op)
		}
		wg.Wait()
		res.Elapsed = time.Since(start)
		slices.Sort(lats)
		res.P50, res.P99 = percentile(lats, 0.5), percentile(lats, 0.99)
		return res, nil
	})
}
