package runner

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

// testGitEnv makes the tests' own git commands independent of the machine.
var testGitEnv = []string{
	"GIT_AUTHOR_NAME=Ada Lovelace", "GIT_AUTHOR_EMAIL=ada@example.com",
	"GIT_AUTHOR_DATE=2026-01-02T03:04:05Z",
	"GIT_COMMITTER_NAME=Ada Lovelace", "GIT_COMMITTER_EMAIL=ada@example.com",
	"GIT_COMMITTER_DATE=2026-01-02T03:04:05Z",
	"GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null",
}

// runGit runs git in dir for a test and returns its trimmed output.
func runGit(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "init.defaultBranch=main"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), testGitEnv...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// testRepo is a bare repository and a working clone that pushes to it.
type testRepo struct {
	bare, work string
}

// newRepo makes a bare repository with one commit on main holding files.
func newRepo(t *testing.T, files map[string]string) (testRepo, string) {
	t.Helper()
	root := t.TempDir()
	r := testRepo{bare: filepath.Join(root, "repo.git"), work: filepath.Join(root, "work")}
	runGit(t, root, "init", "--quiet", "--bare", r.bare)
	runGit(t, root, "clone", "--quiet", r.bare, r.work)
	return r, r.commit(t, "main", files, "first commit\n\nwith a body")
}

// commit writes files (a value "symlink:<target>" makes a symlink), commits
// them on branch and pushes; it returns the new commit id.
func (r testRepo) commit(t *testing.T, branch string, files map[string]string, msg string) string {
	t.Helper()
	switch {
	case runGit(t, r.work, "symbolic-ref", "--short", "HEAD") == branch:
	case runGit(t, r.work, "branch", "--list", branch) != "":
		runGit(t, r.work, "checkout", "--quiet", branch)
	default:
		runGit(t, r.work, "checkout", "--quiet", "-b", branch)
	}
	for name, content := range files {
		p := filepath.Join(r.work, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if target, ok := strings.CutPrefix(content, "symlink:"); ok {
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	runGit(t, r.work, "add", "-A")
	runGit(t, r.work, "commit", "--quiet", "--allow-empty", "-m", msg)
	runGit(t, r.work, "push", "--quiet", "origin", branch)
	return runGit(t, r.work, "rev-parse", "HEAD")
}

// newTestRunner makes a Runner with its directories in the test's
// temporary directory and a short KillGrace.
func newTestRunner(t *testing.T, mod func(*Config)) *Runner {
	t.Helper()
	dir := t.TempDir()
	cfg := Config{
		WorkDir:      filepath.Join(dir, "work"),
		ArtifactsDir: filepath.Join(dir, "artifacts"),
		KillGrace:    500 * time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if mod != nil {
		mod(&cfg)
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// syncBuffer is a log writer safe for the concurrent writes of a build.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runBuild runs spec with ctx and checks what every build must leave: a
// log of LogBytes bytes and no workspace.
func runBuild(ctx context.Context, t *testing.T, r *Runner, spec Spec) (Outcome, string) {
	t.Helper()
	var log syncBuffer
	out, err := r.Run(ctx, spec, &log)
	if err != nil {
		t.Fatalf("Run: %v\nlog:\n%s", err, log.String())
	}
	s := log.String()
	if out.LogBytes != int64(len(s)) {
		t.Errorf("LogBytes = %d, log has %d bytes", out.LogBytes, len(s))
	}
	if ents, err := os.ReadDir(r.cfg.WorkDir); err != nil || len(ents) != 0 {
		t.Errorf("workspace left behind: %v %v", ents, err)
	}
	return out, s
}

func steps(runs ...string) []builds.Step {
	var s []builds.Step
	for i := 0; i+1 < len(runs); i += 2 {
		s = append(s, builds.Step{Name: runs[i], Run: runs[i+1]})
	}
	return s
}

// waitFile waits until the file at p has content and returns it.
func waitFile(t *testing.T, p string, within time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(p); err == nil && len(bytes.TrimSpace(b)) > 0 && bytes.HasSuffix(b, []byte("\n")) {
			return string(bytes.TrimSpace(b))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s did not appear within %s", p, within)
	return ""
}

// alive reports whether pid runs and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}
