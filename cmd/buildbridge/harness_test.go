package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/event"
)

// binPath is the buildbridge binary TestMain builds for the subprocess
// tests.
var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bbbin")
	if err != nil {
		panic(err)
	}
	binPath = filepath.Join(dir, "buildbridge")
	out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build buildbridge: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freeAddr returns a loopback address nothing listens on right now.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// git runs git in dir with a fixed identity, failing the test on error.
func git(t testing.TB, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=Ann Author", "GIT_AUTHOR_EMAIL=ann@example.com",
		"GIT_COMMITTER_NAME=Ann Author", "GIT_COMMITTER_EMAIL=ann@example.com", "GIT_CONFIG_NOSYSTEM=1", "HOME="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// testRepo is a bare repository and a working clone that pushes to it.
type testRepo struct {
	bare, work string
}

func newTestRepo(t testing.TB) *testRepo {
	t.Helper()
	root := t.TempDir()
	r := &testRepo{bare: filepath.Join(root, "repo.git"), work: filepath.Join(root, "work")}
	git(t, root, "init", "--bare", "-q", r.bare)
	git(t, root, "clone", "-q", r.bare, r.work)
	return r
}

// commit writes files on a branch, commits and pushes; it returns the sha.
func (r *testRepo) commit(t testing.TB, branch, msg string, files map[string]string) string {
	t.Helper()
	// An existing branch is checked out; a new one starts from HEAD, or is
	// born with the first commit of an empty repository.
	switch {
	case git(t, r.work, "branch", "--list", branch) != "":
		git(t, r.work, "checkout", "-q", branch)
	case git(t, r.work, "rev-list", "--all", "--count") != "0":
		git(t, r.work, "checkout", "-q", "-b", branch)
	default:
		git(t, r.work, "symbolic-ref", "HEAD", "refs/heads/"+branch)
	}
	for name, body := range files {
		p := filepath.Join(r.work, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	git(t, r.work, "add", "-A")
	git(t, r.work, "commit", "-q", "--allow-empty", "-m", msg)
	git(t, r.work, "push", "-q", "origin", branch)
	return git(t, r.work, "rev-parse", "HEAD")
}

// client calls the API with a token.
type client struct {
	base, token string
}

func (c client) call(t testing.TB, method, path string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, c.base+path, rd)
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	json.Unmarshal(raw, &m)
	if m == nil {
		m = map[string]any{"_raw": string(raw)}
	}
	return resp.StatusCode, m
}

func (c client) mustCall(t testing.TB, want int, method, path string, body any) map[string]any {
	t.Helper()
	code, m := c.call(t, method, path, body)
	if code != want {
		t.Fatalf("%s %s: status %d, want %d: %v", method, path, code, want, m)
	}
	return m
}

// eventLog collects build-state-changed envelopes, from a consumer in
// process or from a server's JSON log.
type eventLog struct {
	mu     sync.Mutex
	events []event.Envelope
	notify chan struct{}
}

func newEventLog() *eventLog { return &eventLog{notify: make(chan struct{}, 1)} }

func (l *eventLog) add(ev event.Envelope) {
	l.mu.Lock()
	l.events = append(l.events, ev)
	l.mu.Unlock()
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

func (l *eventLog) all() []event.Envelope {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]event.Envelope(nil), l.events...)
}

// forBuild returns the distinct events of one build in seq order.
func (l *eventLog) forBuild(id int64) []event.Envelope {
	seen := map[string]bool{}
	var out []event.Envelope
	for _, ev := range l.all() {
		if ev.Build != nil && ev.Build.ID == id && !seen[ev.ID] {
			seen[ev.ID] = true
			out = append(out, ev)
		}
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].Seq < out[j-1].Seq; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// waitFinished waits for the FINISHED event of a build and returns the
// build's events.
func (l *eventLog) waitFinished(t testing.TB, id int64, within time.Duration) []event.Envelope {
	t.Helper()
	deadline := time.After(within)
	for {
		evs := l.forBuild(id)
		if n := len(evs); n > 0 && evs[n-1].Build.State == "FINISHED" {
			return evs
		}
		select {
		case <-l.notify:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("build %d: no FINISHED event within %s; got %s", id, within, describe(l.forBuild(id)))
		}
	}
}

func (l *eventLog) waitState(t testing.TB, id int64, state string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		for _, ev := range l.forBuild(id) {
			if string(ev.Build.State) == state {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("build %d never reached %s: %s", id, state, describe(l.forBuild(id)))
}

func describe(evs []event.Envelope) string {
	var parts []string
	for _, ev := range evs {
		parts = append(parts, fmt.Sprintf("%d:%s/%s", ev.Seq, ev.Build.State, ev.Build.Status))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// serverProc is a `buildbridge serve` subprocess whose JSON log feeds an
// eventLog.
type serverProc struct {
	cmd    *exec.Cmd
	addr   string
	stdout bytes.Buffer
	logs   *eventLog
	done   chan struct{}
	mu     sync.Mutex
	lines  []string
}

func startServer(t testing.TB, data, addr string, logs *eventLog, extra ...string) *serverProc {
	t.Helper()
	args := append([]string{"serve", "--addr", addr, "--data", data, "--log-format", "json"}, extra...)
	p := &serverProc{cmd: exec.Command(binPath, args...), addr: addr, logs: logs, done: make(chan struct{})}
	p.cmd.Stdout = &p.stdout
	p.cmd.Env = append(os.Environ(), "BUILDBRIDGE_CONFIG=")
	stderr, _ := p.cmd.StderrPipe()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.lines = append(p.lines, line)
			p.mu.Unlock()
			var rec struct {
				Msg   string          `json:"msg"`
				Event json.RawMessage `json:"event"`
			}
			if json.Unmarshal([]byte(line), &rec) != nil || rec.Msg != "build-state-changed" {
				continue
			}
			raw := rec.Event
			var s string
			if json.Unmarshal(raw, &s) == nil {
				raw = []byte(s)
			}
			var ev event.Envelope
			if err := json.Unmarshal(raw, &ev); err == nil {
				logs.add(ev)
			}
		}
		p.cmd.Wait()
	}()
	t.Cleanup(func() { p.kill() })
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		select {
		case <-p.done:
			t.Fatalf("buildbridge serve exited early:\n%s", p.log())
		case <-time.After(25 * time.Millisecond):
		}
	}
	t.Fatalf("buildbridge serve not ready within 20s:\n%s", p.log())
	return nil
}

func (p *serverProc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

func (p *serverProc) kill() {
	if p.cmd.Process != nil {
		p.cmd.Process.Kill()
	}
	<-p.done
}

// stop sends SIGTERM and waits for a clean exit.
func (p *serverProc) stop(t testing.TB) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("serve did not stop on SIGTERM:\n%s", p.log())
	}
}

// runCLI runs the buildbridge binary and returns its stdout.
func runCLI(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command(binPath, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Env = append(os.Environ(), "BUILDBRIDGE_CONFIG=")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("buildbridge %v: %v\n%s", args, err, stderr.String())
	}
	return string(out)
}

var _ = context.Background
