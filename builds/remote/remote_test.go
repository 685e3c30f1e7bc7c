package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/builds/runner"
	"github.com/buildbridge/buildbridge/store"
)

func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "init.defaultBranch=main"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=T", "GIT_AUTHOR_EMAIL=t@example.com",
		"GIT_COMMITTER_NAME=T", "GIT_COMMITTER_EMAIL=t@example.com", "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// newRepo makes a repository with one commit holding files; it returns
// its path and the commit.
func newRepo(t *testing.T, files map[string]string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	git(t, dir, "init", "--quiet")
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	git(t, dir, "add", ".")
	git(t, dir, "commit", "--quiet", "-m", "first")
	return dir, git(t, dir, "rev-parse", "HEAD")
}

type fixture struct {
	store *store.DB
	hub   *Hub
	srv   *httptest.Server
	arts  string
	proj  builds.Project

	mu   sync.Mutex
	logs bytes.Buffer

	done   chan struct{} // closed when the last client's Run returned
	runErr error
}

func newFixture(t *testing.T, ttl time.Duration, requeue bool, buildFile string) (*fixture, string) {
	t.Helper()
	ctx := context.Background()
	s, err := store.Open(ctx, store.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	f := &fixture{store: s, arts: t.TempDir()}
	f.hub, err = NewHub(HubConfig{Store: s, ArtifactsDir: f.arts, MaxArtifactBytes: 1 << 10, LeaseTTL: ttl,
		ReapInterval: 50 * time.Millisecond, Requeue: requeue,
		OnLog: func(_ builds.Project, _ builds.Build, _ int64, chunk []byte) {
			f.mu.Lock()
			f.logs.Write(chunk)
			f.mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(f.hub)
	t.Cleanup(f.srv.Close)
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); f.hub.RunReaper(rctx) }()
	t.Cleanup(func() { stop(); <-done })

	repo, sha := newRepo(t, map[string]string{".buildbridge.yml": buildFile})
	u, err := s.CreateUser(ctx, "owner", true)
	if err != nil {
		t.Fatal(err)
	}
	f.proj, err = s.CreateProject(ctx, builds.Project{Name: "app", OwnerID: u.ID, Repo: repo, DefaultBranch: "main", Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return f, sha
}

func (f *fixture) queue(t *testing.T, sha string) builds.Build {
	t.Helper()
	b, err := f.store.CreateBuild(context.Background(), store.NewBuild{ProjectID: f.proj.ID, Ref: "refs/heads/main", Branch: "main", SHA: sha})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (f *fixture) client(t *testing.T, token string) (*Client, context.CancelFunc) {
	t.Helper()
	work := t.TempDir()
	r, err := runner.New(runner.Config{WorkDir: filepath.Join(work, "ws"), ArtifactsDir: filepath.Join(work, "arts"), KillGrace: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(ClientConfig{URL: f.srv.URL, Token: token, Runner: r, ArtifactsDir: filepath.Join(work, "arts"),
		Heartbeat: 100 * time.Millisecond, PollInterval: 50 * time.Millisecond, LogFlush: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	f.done = make(chan struct{})
	go func() { defer close(f.done); f.runErr = c.Run(ctx) }()
	t.Cleanup(func() { stop(); <-f.done })
	return c, stop
}

func (f *fixture) waitFinished(t *testing.T, id int64, within time.Duration) builds.Build {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		b, err := f.store.Build(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if b.State == builds.Finished {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("build %d still %s after %s", id, b.State, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRemoteBuildPasses(t *testing.T) {
	f, sha := newFixture(t, time.Second, false, "steps:\n  - name: hello\n    run: echo hello-from-remote; mkdir -p out; echo data > out/a.txt\nartifacts: [\"out/*\"]\n")
	tok, _, err := f.store.CreateRunner(context.Background(), "r1", nil)
	if err != nil {
		t.Fatal(err)
	}
	b := f.queue(t, sha)
	f.client(t, tok)
	fb := f.waitFinished(t, b.ID, 20*time.Second)
	if fb.Result != builds.Passed {
		t.Fatalf("result %s (%s), want passed", fb.Result, fb.Reason)
	}
	f.mu.Lock()
	logs := f.logs.String()
	f.mu.Unlock()
	if !strings.Contains(logs, "hello-from-remote") {
		t.Fatalf("OnLog did not see the output; got:\n%s", logs)
	}
	stored, _, err := f.store.ReadLog(context.Background(), b.ID, 0, 1<<20)
	if err != nil || !strings.Contains(string(stored), "hello-from-remote") {
		t.Fatalf("stored log lacks the output (%v):\n%s", err, stored)
	}
	arts, err := f.store.Artifacts(context.Background(), b.ID)
	if err != nil || len(arts) != 1 || arts[0].Path != "out/a.txt" || arts[0].Size != 5 {
		t.Fatalf("artifacts = %+v, %v", arts, err)
	}
	if data, err := os.ReadFile(filepath.Join(f.arts, "1", "out", "a.txt")); err != nil || string(data) != "data\n" {
		t.Fatalf("uploaded artifact = %q, %v", data, err)
	}
}

func TestRemoteCancelWithinASecond(t *testing.T) {
	f, sha := newFixture(t, time.Second, false, "steps:\n  - name: sleep\n    run: echo started; sleep 30\n")
	tok, _, _ := f.store.CreateRunner(context.Background(), "r1", nil)
	b := f.queue(t, sha)
	f.client(t, tok)
	deadline := time.Now().Add(15 * time.Second)
	for {
		f.mu.Lock()
		started := strings.Contains(f.logs.String(), "started")
		f.mu.Unlock()
		if started {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the build never started")
		}
		time.Sleep(20 * time.Millisecond)
	}
	at := time.Now()
	if _, err := f.store.RequestCancel(context.Background(), b.ID, "stop"); err != nil {
		t.Fatal(err)
	}
	fb := f.waitFinished(t, b.ID, 5*time.Second)
	if fb.Result != builds.Canceled {
		t.Fatalf("result %s (%s), want canceled", fb.Result, fb.Reason)
	}
	// Heartbeat 100ms + KillGrace 200ms + a log flush: well within a second.
	if d := time.Since(at); d > time.Second {
		t.Fatalf("cancel took %s", d)
	}
}

func TestRevokedRunnerRefused(t *testing.T) {
	f, sha := newFixture(t, 300*time.Millisecond, false, "steps:\n  - name: sleep\n    run: echo started; sleep 30\n")
	tok, _, _ := f.store.CreateRunner(context.Background(), "r1", nil)
	b := f.queue(t, sha)
	f.client(t, tok)
	time.Sleep(500 * time.Millisecond)
	if _, err := f.store.RevokeRunner(context.Background(), "r1"); err != nil {
		t.Fatal(err)
	}
	fb := f.waitFinished(t, b.ID, 5*time.Second)
	if fb.Result != builds.Errored || !strings.Contains(fb.Reason, "lost its lease") {
		t.Fatalf("build of revoked runner: %s (%s)", fb.Result, fb.Reason)
	}
	select {
	case <-f.done:
		if err := f.runErr; !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), CodeRevoked) {
			t.Fatalf("Run = %v, want a runner_revoked refusal", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the revoked runner did not stop")
	}
	// Any call with the revoked token gets 403 at once.
	req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/runner/v1/claim", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "revoked") {
		t.Fatalf("revoked claim: %d %s", resp.StatusCode, body)
	}
}

// do calls the hub as a hand-written runner.
func do(t *testing.T, f *fixture, method, path, token, lease string, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	if lease != "" {
		req.Header.Set(LeaseHeader, lease)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestLateRunnerRefusedAndBuildRequeued(t *testing.T) {
	f, sha := newFixture(t, 200*time.Millisecond, true, "steps:\n  - name: ok\n    run: 'true'\n")
	tok, _, _ := f.store.CreateRunner(context.Background(), "r1", nil)
	b := f.queue(t, sha)
	status, body := do(t, f, http.MethodPost, "/runner/v1/claim", tok, "", `{}`)
	if status != http.StatusOK {
		t.Fatalf("claim: %d %s", status, body)
	}
	var job Job
	if err := json.Unmarshal([]byte(body), &job); err != nil || job.BuildID != b.ID || job.SHA != sha {
		t.Fatalf("job = %+v, %v", job, err)
	}
	// Hostile uploads are refused before any lease check matters.
	for _, p := range []string{"..%2Fescape", "a/..%2F..%2Fx", "%2Fabs"} {
		if st, body := do(t, f, http.MethodPut, "/runner/v1/builds/1/artifacts/"+p, tok, job.Lease, "x"); st != http.StatusBadRequest && st != http.StatusNotFound {
			t.Fatalf("upload %s: %d %s", p, st, body)
		}
	}
	if st, body := do(t, f, http.MethodPut, "/runner/v1/builds/1/artifacts/big", tok, job.Lease, strings.Repeat("x", 2048)); st != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized upload: %d %s", st, body)
	}
	// The cap (1 KiB here) is per build: 600 + 600 bytes do not fit.
	if st, body := do(t, f, http.MethodPut, "/runner/v1/builds/1/artifacts/a/one", tok, job.Lease, strings.Repeat("x", 600)); st != http.StatusOK {
		t.Fatalf("first upload: %d %s", st, body)
	}
	if st, body := do(t, f, http.MethodPut, "/runner/v1/builds/1/artifacts/a/two", tok, job.Lease, strings.Repeat("x", 600)); st != http.StatusRequestEntityTooLarge {
		t.Fatalf("upload past the build's cap: %d %s", st, body)
	}
	// Replacing a file counts it once.
	if st, body := do(t, f, http.MethodPut, "/runner/v1/builds/1/artifacts/a/one", tok, job.Lease, strings.Repeat("y", 900)); st != http.StatusOK {
		t.Fatalf("replacing upload: %d %s", st, body)
	}
	// The runner goes silent; the reaper re-queues the build.
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, _ := f.store.Build(context.Background(), b.ID)
		if got.State == builds.Queued {
			if !strings.Contains(got.Reason, "lost its lease") {
				t.Fatalf("requeued without reason: %+v", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("build still %s", got.State)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, call := range []struct{ method, path, body string }{
		{http.MethodPost, "/runner/v1/builds/1/heartbeat", ""},
		{http.MethodPost, "/runner/v1/builds/1/log", "late"},
		{http.MethodPost, "/runner/v1/builds/1/finish", `{"result":"passed"}`},
	} {
		st, body := do(t, f, call.method, call.path, tok, job.Lease, call.body)
		if st != http.StatusConflict || !strings.Contains(body, CodeLeaseLost) {
			t.Fatalf("late %s: %d %s", call.path, st, body)
		}
	}
	if st, body := do(t, f, http.MethodPost, "/runner/v1/claim", "bbr_nope", "", `{}`); st != http.StatusUnauthorized {
		t.Fatalf("unknown token: %d %s", st, body)
	}
}

func TestLabelsWait(t *testing.T) {
	f, sha := newFixture(t, time.Second, false, "steps:\n  - name: ok\n    run: 'true'\n")
	ctx := context.Background()
	if err := f.store.SetProjectLabels(ctx, f.proj.ID, []string{"gpu"}); err != nil {
		t.Fatal(err)
	}
	plainTok, _, _ := f.store.CreateRunner(ctx, "plain", []string{"linux"})
	gpuTok, _, _ := f.store.CreateRunner(ctx, "gpu", []string{"linux", "gpu"})
	b := f.queue(t, sha)
	if st, body := do(t, f, http.MethodPost, "/runner/v1/claim", plainTok, "", `{}`); st != http.StatusNoContent {
		t.Fatalf("runner without the label got %d %s", st, body)
	}
	// A runner may narrow its labels, never widen them.
	if st, body := do(t, f, http.MethodPost, "/runner/v1/claim", plainTok, "", `{"labels":["gpu"]}`); st != http.StatusNoContent {
		t.Fatalf("runner that claims a label it lacks got %d %s", st, body)
	}
	f.client(t, gpuTok)
	if fb := f.waitFinished(t, b.ID, 20*time.Second); fb.Result != builds.Passed {
		t.Fatalf("result %s (%s)", fb.Result, fb.Reason)
	}
}
