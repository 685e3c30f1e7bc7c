package queue

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/builds/runner"
	"github.com/buildbridge/buildbridge/store"
)

// fixture is a store, a real runner and a bare repository whose main
// branch carries the given .buildbridge.yml.
type fixture struct {
	store   *store.DB
	runner  *runner.Runner
	project builds.Project
	sha     string
}

func newFixture(t *testing.T, buildFile string) *fixture {
	t.Helper()
	dir := t.TempDir()
	gitRun := func(d string, args ...string) string {
		cmd := exec.Command("git", append([]string{"-c", "init.defaultBranch=main"}, args...)...)
		cmd.Dir = d
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=T", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=T", "GIT_COMMITTER_EMAIL=t@example.com", "HOME="+dir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v %s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	bare, work := filepath.Join(dir, "r.git"), filepath.Join(dir, "w")
	gitRun(dir, "init", "-q", "--bare", bare)
	gitRun(dir, "clone", "-q", bare, work)
	os.WriteFile(filepath.Join(work, ".buildbridge.yml"), []byte(buildFile), 0o644)
	gitRun(work, "add", "-A")
	gitRun(work, "commit", "-q", "-m", "c")
	gitRun(work, "push", "-q", "origin", "main")
	f := &fixture{sha: gitRun(work, "rev-parse", "HEAD")}
	var err error
	f.store, err = store.Open(context.Background(), store.Config{DataDir: filepath.Join(dir, "data")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.store.Close() })
	f.runner, err = runner.New(runner.Config{WorkDir: filepath.Join(dir, "ws"), ArtifactsDir: filepath.Join(dir, "art"), KillGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := f.store.CreateUser(context.Background(), "u", false)
	f.project, err = f.store.CreateProject(context.Background(), builds.Project{Name: "p", OwnerID: u.ID, Repo: bare, DefaultBranch: "main"})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) queueBuild(t *testing.T) builds.Build {
	t.Helper()
	b, err := f.store.CreateBuild(context.Background(), store.NewBuild{ProjectID: f.project.ID, Ref: "refs/heads/main", Branch: "main", SHA: f.sha})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (f *fixture) start(t *testing.T, cfg Config) (*Queue, context.CancelFunc, chan struct{}) {
	t.Helper()
	cfg.Store, cfg.Runner = f.store, f.runner
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 50 * time.Millisecond
	}
	q, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); q.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return q, cancel, done
}

func waitBuild(t *testing.T, s *store.DB, id int64, state builds.State, within time.Duration) builds.Build {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		b, err := s.Build(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if b.State == state {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("build %d is %s, want %s", id, b.State, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRunsBuildsAndStreamsLog(t *testing.T) {
	f := newFixture(t, "steps:\n  - name: hi\n    run: echo hello $BUILDBRIDGE_PROJECT $BUILDBRIDGE_BUILD_NUMBER\nartifacts: [\".buildbridge.yml\"]\n")
	var chunks atomic.Int64
	q, _, _ := f.start(t, Config{Concurrency: 2, OnLog: func(builds.Project, builds.Build, int64, []byte) { chunks.Add(1) }})
	a, b := f.queueBuild(t), f.queueBuild(t)
	q.Wake()
	for _, id := range []int64{a.ID, b.ID} {
		got := waitBuild(t, f.store, id, builds.Finished, 20*time.Second)
		if got.Result != builds.Passed {
			t.Fatalf("build %d: %s %s", id, got.Result, got.Reason)
		}
	}
	log, _, _ := f.store.ReadLog(context.Background(), b.ID, 0, 1<<20)
	if !strings.Contains(string(log), "hello p 2") {
		t.Fatalf("log of build 2: %q", log)
	}
	if arts, _ := f.store.Artifacts(context.Background(), b.ID); len(arts) != 1 || arts[0].Path != ".buildbridge.yml" {
		t.Fatalf("artifacts: %+v", arts)
	}
	if chunks.Load() == 0 {
		t.Fatal("OnLog never called")
	}
	evs, _ := f.store.BuildEvents(context.Background(), a.ID)
	if len(evs) != 3 {
		t.Fatalf("transitions: %+v", evs)
	}
}

func TestCancelRunningBuild(t *testing.T) {
	f := newFixture(t, "steps:\n  - name: wait\n    run: sleep 60\n")
	q, _, _ := f.start(t, Config{})
	b := f.queueBuild(t)
	q.Wake()
	waitBuild(t, f.store, b.ID, builds.Started, 10*time.Second)
	time.Sleep(300 * time.Millisecond) // let the step start
	if _, err := f.store.RequestCancel(context.Background(), b.ID, "by test"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	q.Cancel(b.ID)
	got := waitBuild(t, f.store, b.ID, builds.Finished, 10*time.Second)
	if got.Result != builds.Canceled || time.Since(start) > 5*time.Second {
		t.Fatalf("cancel: %s %q after %s", got.Result, got.Reason, time.Since(start))
	}
}

func TestCancelSeenThroughStore(t *testing.T) {
	f := newFixture(t, "steps:\n  - name: wait\n    run: sleep 60\n")
	q, _, _ := f.start(t, Config{})
	b := f.queueBuild(t)
	q.Wake()
	waitBuild(t, f.store, b.ID, builds.Started, 10*time.Second)
	// Another node recorded the request: only the store knows.
	f.store.RequestCancel(context.Background(), b.ID, "elsewhere")
	if got := waitBuild(t, f.store, b.ID, builds.Finished, 10*time.Second); got.Result != builds.Canceled {
		t.Fatalf("result %s", got.Result)
	}
}

func TestRecover(t *testing.T) {
	for _, requeue := range []bool{false, true} {
		f := newFixture(t, "steps:\n  - name: ok\n    run: true\n")
		b := f.queueBuild(t)
		if _, err := f.store.ClaimQueued(context.Background()); err != nil { // as if a crash followed
			t.Fatal(err)
		}
		q, err := New(Config{Store: f.store, Runner: f.runner, Requeue: requeue})
		if err != nil {
			t.Fatal(err)
		}
		n, err := q.Recover(context.Background())
		if err != nil || n != 1 {
			t.Fatalf("recover: %d %v", n, err)
		}
		got, _ := f.store.Build(context.Background(), b.ID)
		switch {
		case !requeue && (got.State != builds.Finished || got.Result != builds.Errored || !strings.Contains(got.Reason, "stopped")):
			t.Fatalf("recover as errored: %+v", got)
		case requeue && got.State != builds.Queued:
			t.Fatalf("recover as requeued: %+v", got)
		}
	}
}

func TestShutdownGrace(t *testing.T) {
	f := newFixture(t, "steps:\n  - name: short\n    run: sleep 0.5; echo finished-step\n")
	q, cancel, done := f.start(t, Config{ShutdownGrace: 10 * time.Second})
	b := f.queueBuild(t)
	q.Wake()
	waitBuild(t, f.store, b.ID, builds.Started, 10*time.Second)
	cancel()
	<-done
	if got, _ := f.store.Build(context.Background(), b.ID); got.Result != builds.Passed {
		t.Fatalf("build within grace: %s %q", got.Result, got.Reason)
	}

	f = newFixture(t, "steps:\n  - name: long\n    run: sleep 60\n")
	q, cancel, done = f.start(t, Config{ShutdownGrace: 300 * time.Millisecond})
	b = f.queueBuild(t)
	q.Wake()
	waitBuild(t, f.store, b.ID, builds.Started, 10*time.Second)
	start := time.Now()
	cancel()
	<-done
	got, _ := f.store.Build(context.Background(), b.ID)
	if got.Result != builds.Errored || !strings.Contains(got.Reason, "shut down") || time.Since(start) > 8*time.Second {
		t.Fatalf("build past grace: %s %q after %s", got.Result, got.Reason, time.Since(start))
	}
}

func TestConfigValidate(t *testing.T) {
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), "Store") {
		t.Fatalf("missing store: %v", err)
	}
	f := newFixture(t, "steps: []\n")
	if _, err := New(Config{Store: f.store, Runner: f.runner, Concurrency: -1}); err == nil || !strings.Contains(err.Error(), "Concurrency") {
		t.Fatalf("bad concurrency: %v", err)
	}
}
