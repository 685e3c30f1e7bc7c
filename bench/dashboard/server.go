package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/store"
)

// userHZ is the unit of utime and stime in /proc/<pid>/stat: USER_HZ is
// 100 on every Linux architecture Go runs on.
const userHZ = 100

// server is a `buildbridge serve` subprocess.
type server struct {
	cmd  *exec.Cmd
	base string
	logf *os.File
}

func startServer(ctx context.Context, bin, data string, port int, extra []string) (*server, error) {
	logf, err := os.Create(filepath.Join(data, "serve.log"))
	if err != nil {
		return nil, err
	}
	args := append([]string{"serve", "--addr", fmt.Sprintf("127.0.0.1:%d", port), "--data", data, "--log-level", "warn"}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "BUILDBRIDGE_CONFIG=")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	s := &server{cmd: cmd, base: fmt.Sprintf("http://127.0.0.1:%d", port), logf: logf}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if r, err := http.Get(s.base + "/readyz"); err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				return s, nil
			}
		}
		select {
		case <-ctx.Done():
			s.stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	s.stop()
	return nil, fmt.Errorf("buildbridge serve was not ready within 30s; see %s", logf.Name())
}

func (s *server) stop() {
	if s.cmd.Process != nil {
		s.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { s.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			s.cmd.Process.Kill()
			<-done
		}
	}
	s.logf.Close()
}

// cpuTicks is the CPU time the server process itself has used (user +
// system, all its threads; not its children, the build steps and git).
func (s *server) cpuTicks() (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after it are
	// counted from its closing parenthesis.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("unreadable /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseUint(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, errors.New("bad /proc stat")
	}
	return utime + stime, nil
}

// metric reads one unlabelled value from /metrics.
func (s *server) metric(name string) (float64, error) {
	r, err := http.Get(s.base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer r.Body.Close()
	sc := bufio.NewScanner(r.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(rest), 64)
		}
	}
	io.Copy(io.Discard, r.Body)
	return 0, fmt.Errorf("metric %s not found in /metrics (is this binary older than the store query counter?)", name)
}

// seed creates users, their tokens and projects, and a few finished
// builds per project, straight in the store before the server starts.
func seed(ctx context.Context, data, repo string, users, projectsPerUser, buildsPerProject int) ([]account, error) {
	s, err := store.Open(ctx, store.Config{DataDir: data})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	var out []account
	for i := range users {
		u, err := s.CreateUser(ctx, fmt.Sprintf("user%03d", i), false)
		if err != nil {
			return nil, err
		}
		tok, _, err := s.CreateToken(ctx, u.ID, "bench")
		if err != nil {
			return nil, err
		}
		a := account{id: u.ID, token: tok}
		for j := range projectsPerUser {
			p, err := s.CreateProject(ctx, builds.Project{Name: fmt.Sprintf("app%03d-%d", i, j), OwnerID: u.ID, Repo: repo,
				DefaultBranch: "main", Steps: []builds.Step{{Name: "test", Run: "true"}}, Timeout: time.Minute})
			if err != nil {
				return nil, err
			}
			a.projects = append(a.projects, p.Name)
			for k := range buildsPerProject {
				b, err := s.CreateBuild(ctx, store.NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main",
					SHA: strings.Repeat("0", 40), Author: "Bench", Message: "seeded build", TriggeredBy: u.ID})
				if err != nil {
					return nil, err
				}
				if _, err := s.Transition(ctx, b.ID, builds.Started, nil); err != nil {
					return nil, err
				}
				res := builds.Passed
				if k%3 == 1 {
					res = builds.Failed
				}
				if _, err := s.Transition(ctx, b.ID, builds.Finished, func(b *builds.Build) error { b.Result = res; return nil }); err != nil {
					return nil, err
				}
			}
		}
		out = append(out, a)
	}
	return out, nil
}

// makeRepo makes a bare git repository with one commit on main.
func makeRepo(dir string) (string, error) {
	bare, work := filepath.Join(dir, "repo.git"), filepath.Join(dir, "work")
	git := func(cwd string, args ...string) error {
		cmd := exec.Command("git", append([]string{"-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"}, args...)...)
		cmd.Dir = cwd
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=Bench", "GIT_AUTHOR_EMAIL=bench@example.com",
			"GIT_COMMITTER_NAME=Bench", "GIT_COMMITTER_EMAIL=bench@example.com", "HOME="+dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return "", err
	}
	for _, step := range [][]string{{"init", "-q", "--bare", bare}, {"init", "-q", work}} {
		if err := git(dir, step...); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(filepath.Join(work, "README"), []byte("bench\n"), 0o644); err != nil {
		return "", err
	}
	for _, step := range [][]string{{"add", "-A"}, {"commit", "-q", "-m", "bench commit"}, {"push", "-q", bare, "HEAD:refs/heads/main"}} {
		if err := git(work, step...); err != nil {
			return "", err
		}
	}
	return bare, nil
}
