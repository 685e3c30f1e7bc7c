package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// runnerProc is a `buildbridge runner` subprocess.
type runnerProc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
	err  error
}

func (p *runnerProc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *runnerProc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func startRunner(t *testing.T, url, token string, extra ...string) *runnerProc {
	t.Helper()
	args := append([]string{"runner", "--url", url, "--token", token, "--work", t.TempDir()}, extra...)
	p := &runnerProc{cmd: exec.Command(binPath, args...), done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { defer close(p.done); p.err = p.cmd.Wait() }()
	t.Cleanup(func() { p.cmd.Process.Kill(); <-p.done })
	return p
}

// build fetches a build through the API.
func getBuild(t *testing.T, c client, id int64) map[string]any {
	t.Helper()
	return c.mustCall(t, 200, "GET", fmt.Sprintf("/api/v1/builds/%d", id), nil)
}

func waitBuild(t *testing.T, c client, id int64, state string, within time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		b := getBuild(t, c, id)
		if b["state"] == state {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("build %d not %s within %s: %v", id, state, within, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func trigger(t *testing.T, c client, branch string) int64 {
	t.Helper()
	m := c.mustCall(t, 201, "POST", "/api/v1/projects/app/builds", map[string]any{"branch": branch})
	return int64(m["id"].(float64))
}

// TestRemoteRunners runs a real hub and real runner subprocesses: a build
// that needs a label waits for a runner that has it, runs there with its
// log and artifacts reaching the hub; cancel reaches the runner within a
// second; a runner killed mid-build loses its lease and the build errors
// with a reason; a revoked runner is refused at once.
func TestRemoteRunners(t *testing.T) {
	if testing.Short() {
		t.Skip("remote runner test skipped in -short mode")
	}
	data := t.TempDir()
	token := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--admin", "--data", data))
	gpuTok := strings.TrimSpace(runCLI(t, "runner", "token", "create", "gpu-1", "--labels", "linux,gpu", "--data", data))
	plainTok := strings.TrimSpace(runCLI(t, "runner", "token", "create", "plain-1", "--labels", "linux", "--data", data))
	repo := newTestRepo(t)
	repo.commit(t, "main", "fast", map[string]string{".buildbridge.yml": "steps:\n  - name: a\n    run: echo remote-hello; mkdir -p out; echo kept > out/f.txt\nartifacts: [\"out/*\"]\n"})
	repo.commit(t, "slow", "slow", map[string]string{".buildbridge.yml": "steps:\n  - name: a\n    run: echo slow-started; sleep 60\n"})
	addr := freeAddr(t)
	base := "http://" + addr
	c := client{base: base, token: token}
	srv := startServer(t, data, addr, newEventLog())
	c.mustCall(t, 201, "POST", "/api/v1/projects", map[string]any{"name": "app", "repo": repo.bare})
	if out := runCLI(t, "runner", "labels", "app", "gpu", "--data", data); !strings.Contains(out, "gpu") {
		t.Fatalf("runner labels: %s", out)
	}

	// A runner without the label and the embedded runner leave it queued.
	plain := startRunner(t, base, plainTok)
	id := trigger(t, c, "main")
	time.Sleep(1500 * time.Millisecond)
	if b := getBuild(t, c, id); b["state"] != "QUEUED" {
		t.Fatalf("build needing gpu ran without a gpu runner: %v\n%s", b, plain.log())
	}
	// Its waiting is visible in the API and the metrics.
	w := c.mustCall(t, 200, "GET", fmt.Sprintf("/api/v1/builds/%d/runner", id), nil)
	if fmt.Sprint(w["waiting_for_labels"]) != "[gpu]" {
		t.Fatalf("build runner view: %v", w)
	}
	if rs := c.mustCall(t, 200, "GET", "/api/v1/runners", nil); fmt.Sprint(rs["waiting_for_labels"]) != "map[gpu:1]" {
		t.Fatalf("runners view: %v", rs)
	}
	mr, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(mr.Body)
	mr.Body.Close()
	if !strings.Contains(string(metrics), `buildbridge_builds_waiting_for_labels{labels="gpu"} 1`) {
		t.Fatalf("metrics lack the waiting build:\n%s", metrics)
	}
	gpu := startRunner(t, base, gpuTok)
	b := waitBuild(t, c, id, "FINISHED", 30*time.Second)
	if b["result"] != "passed" {
		t.Fatalf("remote build: %v\n%s\n%s", b, gpu.log(), srv.log())
	}
	resp, err := http.NewRequest("GET", fmt.Sprintf("%s/api/v1/builds/%d/log", base, id), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Header.Set("Authorization", "Bearer "+token)
	r, err := http.DefaultClient.Do(resp)
	if err != nil {
		t.Fatal(err)
	}
	logText, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if !strings.Contains(string(logText), "remote-hello") {
		t.Fatalf("hub's log of the remote build lacks its output:\n%s", logText)
	}
	arts := c.mustCall(t, 200, "GET", fmt.Sprintf("/api/v1/builds/%d/artifacts", id), nil)
	if !strings.Contains(fmt.Sprint(arts), "out/f.txt") {
		t.Fatalf("artifacts: %v", arts)
	}

	// Cancel reaches the runner within a second.
	id = trigger(t, c, "slow")
	waitBuild(t, c, id, "STARTED", 30*time.Second)
	if w := c.mustCall(t, 200, "GET", fmt.Sprintf("/api/v1/builds/%d/runner", id), nil); !strings.Contains(fmt.Sprint(w["runner"]), "gpu-1") {
		t.Fatalf("build runner view of a started build: %v", w)
	}
	time.Sleep(1500 * time.Millisecond) // the step is running
	at := time.Now()
	c.mustCall(t, 202, "POST", fmt.Sprintf("/api/v1/builds/%d/cancel", id), nil)
	b = waitBuild(t, c, id, "FINISHED", 10*time.Second)
	if b["result"] != "canceled" {
		t.Fatalf("canceled build: %v", b)
	}
	if d := time.Since(at); d > 2*time.Second {
		t.Fatalf("cancel took %s to finish the remote build", d)
	}

	// SIGKILL the runner mid-build: the lease expires and the build errors
	// (on_restart: error) with a reason.
	id = trigger(t, c, "slow")
	waitBuild(t, c, id, "STARTED", 30*time.Second)
	gpu.cmd.Process.Kill()
	<-gpu.done
	b = waitBuild(t, c, id, "FINISHED", 15*time.Second)
	if b["result"] != "errored" || !strings.Contains(fmt.Sprint(b["reason"]), "lost its lease") {
		t.Fatalf("build of a killed runner: %v", b)
	}

	// Revoke a running runner: it is refused at its next call and exits
	// saying so; its build is handed on at once.
	gpu = startRunner(t, base, gpuTok)
	id = trigger(t, c, "slow")
	waitBuild(t, c, id, "STARTED", 30*time.Second)
	runCLI(t, "runner", "token", "revoke", "gpu-1", "--data", data)
	b = waitBuild(t, c, id, "FINISHED", 5*time.Second)
	if b["result"] != "errored" {
		t.Fatalf("build of a revoked runner: %v", b)
	}
	select {
	case <-gpu.done:
		if gpu.err == nil || !strings.Contains(gpu.log(), "revoked") {
			t.Fatalf("revoked runner exited with %v:\n%s", gpu.err, gpu.log())
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("revoked runner still running:\n%s", gpu.log())
	}
	if out := runCLI(t, "runner", "token", "list", "--data", data); !strings.Contains(out, "gpu-1") || !strings.Contains(out, "plain-1") {
		t.Fatalf("token list:\n%s", out)
	}
}
