package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/store/storetest"
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

// TestRemoteRunnersTwoNodes runs two `serve` nodes on one PostgreSQL and
// one NATS, and a runner on each: builds triggered through either node all
// run once; a runner SIGKILLed mid-build loses its lease and, with
// on_restart: requeue, the other runner runs the build to the end; a
// webhook receiver gets every event once, with one webhook-id.
func TestRemoteRunnersTwoNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("two-node test skipped in -short mode")
	}
	nurl := natsURL(t)
	dsn := storetest.PostgresDSN(t)
	ns := uniqueNamespace(t)
	dataA, dataB := t.TempDir(), t.TempDir()
	token := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--admin", "--data", dataA, "--postgres", dsn))
	tokA := strings.TrimSpace(runCLI(t, "runner", "token", "create", "ra", "--labels", "remote", "--data", dataA, "--postgres", dsn))
	tokB := strings.TrimSpace(runCLI(t, "runner", "token", "create", "rb", "--labels", "remote", "--data", dataA, "--postgres", dsn))
	repo := newTestRepo(t)
	repo.commit(t, "main", "fast", map[string]string{".buildbridge.yml": "steps:\n  - name: a\n    run: sleep 0.5; echo ok; mkdir -p out; echo \"$BUILDBRIDGE_BUILD_ID\" > out/id.txt\nartifacts: [\"out/*\"]\n"})
	repo.commit(t, "slow", "slow", map[string]string{".buildbridge.yml": "steps:\n  - name: a\n    run: echo slow-started; sleep 4; echo slow-done\n"})
	recv := newHookReceiver(t)
	t.Setenv("HOOK_SECRET", hookSecret)
	t.Setenv("BUILDBRIDGE_DELIVERIES_WEBHOOK_ALLOW", "127.0.0.1")
	rules := writeRules(t, filepath.Join(t.TempDir(), "rules.yaml"), hookRules(recv.srv.URL, "[0s, 1s]"))
	// One artifacts directory for both nodes, as a shared mount would be:
	// a runner uploads to its node, and either node serves the file.
	args := []string{"--postgres", dsn, "--nats-url", nurl, "--nats-namespace", ns, "--on-restart", "requeue", "--rules", rules,
		"--artifacts-dir", t.TempDir()}
	addrA, addrB := freeAddr(t), freeAddr(t)
	startServer(t, dataA, addrA, newEventLog(), args...)
	startServer(t, dataB, addrB, newEventLog(), args...)
	a := client{base: "http://" + addrA, token: token}
	b := client{base: "http://" + addrB, token: token}
	a.mustCall(t, 201, "POST", "/api/v1/projects", map[string]any{"name": "app", "repo": repo.bare})
	b.mustCall(t, 200, "PUT", "/api/v1/projects/app/runner-labels", map[string]any{"labels": []string{"remote"}})
	ra := startRunner(t, a.base, tokA)
	rb := startRunner(t, b.base, tokB)

	var ids []int64
	for i := range 6 {
		c := a
		if i%2 == 1 {
			c = b
		}
		ids = append(ids, trigger(t, c, "main"))
	}
	for _, id := range ids {
		if got := waitBuild(t, b, id, "FINISHED", 60*time.Second); got["result"] != "passed" {
			t.Fatalf("build %d: %v\n%s\n%s", id, got, ra.log(), rb.log())
		}
	}

	for _, id := range ids {
		for _, c := range []client{a, b} {
			if got := download(t, c, fmt.Sprintf("/api/v1/builds/%d/artifacts/out/id.txt", id)); got != fmt.Sprint(id)+"\n" {
				t.Fatalf("build %d's artifact through %s: %q", id, c.base, got)
			}
		}
	}

	id := trigger(t, b, "slow")
	waitBuild(t, a, id, "STARTED", 30*time.Second)
	w := a.mustCall(t, 200, "GET", fmt.Sprintf("/api/v1/builds/%d/runner", id), nil)
	victim, other := ra, "rb"
	if strings.Contains(fmt.Sprint(w["runner"]), "rb") {
		victim, other = rb, "ra"
	}
	victim.cmd.Process.Kill()
	<-victim.done
	killed := time.Now()
	deadline := time.Now().Add(30 * time.Second)
	for {
		w = a.mustCall(t, 200, "GET", fmt.Sprintf("/api/v1/builds/%d/runner", id), nil)
		if strings.Contains(fmt.Sprint(w["runner"]), other) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("build %d not taken over by %s: %v", id, other, w)
		}
		time.Sleep(100 * time.Millisecond)
	}
	got := waitBuild(t, b, id, "FINISHED", 30*time.Second)
	if got["result"] != "passed" {
		t.Fatalf("taken-over build: %v", got)
	}
	if d := time.Since(killed); d < 4*time.Second {
		t.Fatalf("build finished %s after its runner was killed; it cannot have rerun", d)
	}
	if dups := hookEachEvent(t, b, recv, append(ids, id)); dups != 0 {
		t.Fatalf("%d events accepted twice although no node stopped", dups)
	}
}

// TestRemoteOnlyHub turns the embedded runner off: a build of a project
// without labels waits for a remote runner, and a short runner_lease_ttl
// hands a killed runner's build on sooner.
func TestRemoteOnlyHub(t *testing.T) {
	if testing.Short() {
		t.Skip("remote runner test skipped in -short mode")
	}
	data := t.TempDir()
	token := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--admin", "--data", data))
	rtok := strings.TrimSpace(runCLI(t, "runner", "token", "create", "r", "--data", data))
	repo := newTestRepo(t)
	repo.commit(t, "main", "fast", map[string]string{".buildbridge.yml": "steps:\n  - name: a\n    run: echo ok\n"})
	repo.commit(t, "slow", "slow", map[string]string{".buildbridge.yml": "steps:\n  - name: a\n    run: sleep 60\n"})
	addr := freeAddr(t)
	c := client{base: "http://" + addr, token: token}
	startServer(t, data, addr, newEventLog(), "--runner-embedded=false", "--runner-lease-ttl", "1s")
	c.mustCall(t, 201, "POST", "/api/v1/projects", map[string]any{"name": "app", "repo": repo.bare})
	id := trigger(t, c, "main")
	time.Sleep(1500 * time.Millisecond)
	if b := getBuild(t, c, id); b["state"] != "QUEUED" {
		t.Fatalf("the embedded runner ran a build although runner_embedded is false: %v", b)
	}
	r := startRunner(t, c.base, rtok)
	if b := waitBuild(t, c, id, "FINISHED", 30*time.Second); b["result"] != "passed" {
		t.Fatalf("build: %v\n%s", b, r.log())
	}
	id = trigger(t, c, "slow")
	waitBuild(t, c, id, "STARTED", 30*time.Second)
	r.cmd.Process.Kill()
	<-r.done
	at := time.Now()
	b := waitBuild(t, c, id, "FINISHED", 10*time.Second)
	if b["result"] != "errored" || !strings.Contains(fmt.Sprint(b["reason"]), `runner "r" lost its lease`) {
		t.Fatalf("build of the killed runner: %v", b)
	}
	if d := time.Since(at); d > 4*time.Second {
		t.Fatalf("a 1s lease took %s to be reaped", d)
	}
}

// TestRemoteRunnersFaults SIGKILLs a serve node and a runner mid-build,
// several times, with two nodes on PostgreSQL and NATS and on_restart:
// requeue: every build still ends, passed, exactly once, and every event
// reaches a webhook receiver, under one webhook-id.
func TestRemoteRunnersFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test skipped in -short mode")
	}
	nurl := natsURL(t)
	dsn := storetest.PostgresDSN(t)
	ns := uniqueNamespace(t)
	dataA, dataB := t.TempDir(), t.TempDir()
	token := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--admin", "--data", dataA, "--postgres", dsn))
	tokA := strings.TrimSpace(runCLI(t, "runner", "token", "create", "ra", "--labels", "remote", "--data", dataA, "--postgres", dsn))
	tokB := strings.TrimSpace(runCLI(t, "runner", "token", "create", "rb", "--labels", "remote", "--data", dataA, "--postgres", dsn))
	repo := newTestRepo(t)
	repo.commit(t, "main", "work", map[string]string{".buildbridge.yml": "steps:\n  - name: a\n    run: sleep 1; echo ok\n"})
	recv := newHookReceiver(t)
	t.Setenv("HOOK_SECRET", hookSecret)
	t.Setenv("BUILDBRIDGE_DELIVERIES_WEBHOOK_ALLOW", "127.0.0.1")
	rules := writeRules(t, filepath.Join(t.TempDir(), "rules.yaml"), hookRules(recv.srv.URL, "[0s, 1s]"))
	args := []string{"--postgres", dsn, "--nats-url", nurl, "--nats-namespace", ns, "--on-restart", "requeue", "--runner-lease-ttl", "2s",
		"--rules", rules, "--deliveries-lease-ttl", "2s"}
	addrA, addrB := freeAddr(t), freeAddr(t)
	nodeA := startServer(t, dataA, addrA, newEventLog(), args...)
	startServer(t, dataB, addrB, newEventLog(), args...)
	a := client{base: "http://" + addrA, token: token}
	b := client{base: "http://" + addrB, token: token}
	a.mustCall(t, 201, "POST", "/api/v1/projects", map[string]any{"name": "app", "repo": repo.bare})
	b.mustCall(t, 200, "PUT", "/api/v1/projects/app/runner-labels", map[string]any{"labels": []string{"remote"}})
	startRunner(t, a.base, tokA)
	rb := startRunner(t, b.base, tokB)

	var ids []int64
	for round := range 3 {
		for i := range 4 {
			c := a
			if i%2 == 1 {
				c = b
			}
			ids = append(ids, trigger(t, c, "main"))
		}
		time.Sleep(time.Duration(800+300*round) * time.Millisecond)
		nodeA.kill()
		rb.cmd.Process.Kill()
		<-rb.done
		nodeA = startServer(t, dataA, addrA, newEventLog(), args...)
		rb = startRunner(t, b.base, tokB)
	}
	rerun := 0
	for _, id := range ids {
		got := waitBuild(t, b, id, "FINISHED", 90*time.Second)
		if got["result"] != "passed" {
			t.Fatalf("build %d: %v", id, got)
		}
		// Each run of a build starts once and finishes at most once.
		evs := b.mustCall(t, 200, "GET", fmt.Sprintf("/api/v1/builds/%d/events", id), nil)
		s := fmt.Sprint(evs)
		if n := strings.Count(s, "FINISHED"); n != 1 {
			t.Fatalf("build %d has %d FINISHED events: %s", id, n, s)
		}
		if strings.Count(s, "STARTED") > 1 {
			rerun++
		}
	}
	t.Logf("%d of %d builds were interrupted and run again", rerun, len(ids))
	hookEachEvent(t, b, recv, ids)
}

// download GETs path and returns its body, failing unless it is 200.
func download(t *testing.T, c client, path string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", c.base+path, nil)
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
	}
	return string(body)
}
