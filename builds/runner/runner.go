// Package runner runs one build on the local machine: it clones the
// repository into a fresh workspace, checks out the exact commit, runs the
// steps with `sh -c`, each in its own process group and with an
// environment built from scratch, streams the log to the caller and keeps
// the artifacts. It knows nothing of the store, the bus or HTTP: the queue
// calls Run and records the transitions.
package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

// shell runs every step, as `shell -c <run>`.
const shell = "/bin/sh"

// Spec is one build to run.
type Spec struct {
	// BuildID names the workspace and the artifacts directory. Must be > 0.
	BuildID int64
	// Repo is the local path of a bare or working repository, or a URL
	// git understands.
	Repo string
	// SHA is the exact commit, 40 or 64 lowercase hexadecimal digits.
	SHA string
	// Ref is the ref the commit was built for, for the log only.
	Ref string
	// Steps and Timeout are the project's; a BuildFile in the commit
	// overrides them. A zero Timeout means Config.DefaultTimeout.
	Steps   []builds.Step
	Timeout time.Duration
	// Env holds the BUILDBRIDGE_* variables the caller gives every step.
	Env map[string]string
}

// StepOutcome is how one step that ran ended.
type StepOutcome struct {
	Name string
	// ExitCode is the step's exit status, or -1 when it was killed by a
	// signal or could not start.
	ExitCode int
	Duration time.Duration
}

// Artifact is one file kept from a build, at
// ArtifactsDir/<build id>/<Path>.
type Artifact struct {
	// Path is slash-separated and relative to the workspace.
	Path string
	Size int64
	// SHA256 is the hex digest of the contents.
	SHA256 string
}

// Outcome is how a build ended.
type Outcome struct {
	Result builds.Result
	// Reason says why a build did not pass, as a sentence for people:
	// `step "test" exited with status 1`, `timed out after 10s …`,
	// `checkout of abc123 failed: …`, `canceled`.
	Reason    string
	Steps     []StepOutcome
	Artifacts []Artifact
	// LogBytes is how many bytes of log reached the log writer.
	LogBytes int64
}

// Runner runs builds. It is safe for concurrent use: every build gets its
// own workspace.
type Runner struct {
	cfg Config
	log *slog.Logger
}

// New checks cfg, creates WorkDir and ArtifactsDir if needed and finds git.
func New(cfg Config) (*Runner, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	for _, d := range []*string{&cfg.WorkDir, &cfg.ArtifactsDir} {
		abs, err := filepath.Abs(*d)
		if err != nil {
			return nil, fmt.Errorf("runner: %w", err)
		}
		if err := os.MkdirAll(abs, 0o750); err != nil {
			return nil, fmt.Errorf("runner: %w", err)
		}
		*d = abs
	}
	gitPath, err := exec.LookPath(cfg.GitPath)
	if err != nil {
		return nil, fmt.Errorf("runner: GitPath: %w", err)
	}
	cfg.GitPath = gitPath
	return &Runner{cfg: cfg, log: cfg.Logger}, nil
}

// Run runs the build spec describes and streams its log to log, which
// receives at most about Config.MaxLogBytes (see CapWriter).
//
// A build that does not pass is an Outcome, not an error: a failing step is
// failed; a bad commit, checkout failure, bad BuildFile, missing steps or a
// timeout is errored; ctx being canceled is canceled (the step's process
// group is sent SIGTERM, then SIGKILL after Config.KillGrace). The error is
// for failures of the runner itself — a workspace it cannot make, an
// artifacts directory it cannot write, a log writer that fails — and comes
// with the best Outcome the runner could still give.
func (r *Runner) Run(ctx context.Context, spec Spec, log io.Writer) (Outcome, error) {
	if spec.BuildID <= 0 {
		return Outcome{}, fmt.Errorf("runner: build id must be positive, got %d", spec.BuildID)
	}
	for k, v := range spec.Env {
		if err := checkEnvVar(k, v); err != nil {
			return Outcome{}, fmt.Errorf("runner: build %d: env: %w", spec.BuildID, err)
		}
	}
	if log == nil {
		log = io.Discard
	}
	cw := NewCapWriter(log, r.cfg.MaxLogBytes)
	b := &build{r: r, spec: spec, log: cw, lg: r.log.With("build_id", spec.BuildID)}
	start := time.Now()
	b.lg.Info("build starting", "repo", spec.Repo, "sha", spec.SHA, "ref", spec.Ref)

	out, err := b.run(ctx)
	if err != nil && out.Result == "" {
		out.Result, out.Reason = builds.Errored, "runner failure: "+err.Error()
	}
	b.logf("==> %s", out.Result)
	if out.Reason != "" {
		b.logf(": %s", out.Reason)
	}
	b.logf("\n")
	if cerr := cw.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("runner: build %d: writing the log: %w", spec.BuildID, cerr))
	}
	out.LogBytes = cw.Written()
	b.lg.Info("build finished", "result", out.Result, "reason", out.Reason,
		"duration", time.Since(start), "log_bytes", out.LogBytes, "artifacts", len(out.Artifacts), "err", err)
	return out, err
}

// build is the state of one Run.
type build struct {
	r    *Runner
	spec Spec
	log  *CapWriter
	lg   *slog.Logger
}

// logf writes a line of the runner's own to the build log.
func (b *build) logf(format string, args ...any) {
	fmt.Fprintf(b.log, format, args...)
}

func errored(reason string) Outcome { return Outcome{Result: builds.Errored, Reason: reason} }

func (b *build) run(ctx context.Context) (out Outcome, err error) {
	spec, cfg := b.spec, b.r.cfg
	if err := checkRepo(spec.Repo); err != nil {
		return errored("checkout refused: " + err.Error()), nil
	}
	if !IsSHA(spec.SHA) {
		sha := spec.SHA
		if len(sha) > 80 {
			sha = sha[:80] + "…"
		}
		return errored(fmt.Sprintf("checkout refused: commit %q is not 40 or 64 lowercase hexadecimal digits", sha)), nil
	}
	if ctx.Err() != nil {
		return Outcome{Result: builds.Canceled, Reason: "canceled"}, nil
	}

	ws, err := os.MkdirTemp(cfg.WorkDir, fmt.Sprintf("%d-", spec.BuildID))
	if err != nil {
		return Outcome{}, fmt.Errorf("runner: build %d: creating the workspace: %w", spec.BuildID, err)
	}
	defer func() {
		if cfg.KeepFailedWorkspaces && out.Result != builds.Passed {
			b.lg.Info("workspace kept", "dir", ws)
			return
		}
		if rerr := removeAll(ws); rerr != nil {
			b.lg.Error("removing workspace", "dir", ws, "err", rerr)
		}
	}()
	src := filepath.Join(ws, "src")
	home := filepath.Join(ws, "home")
	tmp := filepath.Join(ws, "tmp")
	for _, d := range []string{home, tmp} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return Outcome{}, fmt.Errorf("runner: build %d: creating the workspace: %w", spec.BuildID, err)
		}
	}

	timeout := spec.Timeout
	if timeout <= 0 {
		timeout = cfg.DefaultTimeout
	}
	if o, done := b.checkout(ctx, src, timeout); done {
		return o, nil
	}

	bc, err := readBuildFile(src)
	if err != nil {
		b.logf("==> %v\n", err)
		return errored(err.Error()), nil
	}
	steps, err := checkSteps(spec.Steps)
	if err != nil {
		return errored("project steps: " + err.Error()), nil
	}
	var globs []string
	fileEnv := map[string]string{}
	if bc != nil {
		b.logf("==> using %s\n", BuildFile)
		if len(bc.Steps) > 0 {
			steps = bc.Steps
		}
		if bc.Timeout > 0 {
			timeout = bc.Timeout
		}
		globs, fileEnv = bc.Artifacts, bc.Env
	}
	if len(steps) == 0 {
		return errored("no steps"), nil
	}
	env := stepEnv(cfg.Path, home, tmp, spec.Env, fileEnv)

	out = b.runSteps(ctx, steps, src, env, timeout)
	if out.Result == builds.Canceled || len(globs) == 0 {
		return out, nil
	}
	arts, err := b.collectArtifacts(ctx, src, globs)
	out.Artifacts = arts
	return out, err
}

// checkout clones the repository into src and checks out the commit. It
// returns done with the outcome when the build cannot go on.
func (b *build) checkout(ctx context.Context, src string, timeout time.Duration) (Outcome, bool) {
	sha := b.spec.SHA
	ref := ""
	if r := b.spec.Ref; r != "" {
		// Quoted if need be: a ref must not forge lines of the log.
		if strings.ContainsFunc(r, isControl) {
			r = strconv.Quote(r)
		}
		ref = " (" + r + ")"
	}
	b.logf("==> checkout %s%s\n", sha, ref)
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tail := &teeTail{w: b.log}
	gitRun := func(dir string, out io.Writer, args ...string) error {
		cmd := exec.CommandContext(cctx, b.r.cfg.GitPath, gitArgs(args...)...)
		cmd.Dir = dir
		cmd.Env = gitEnv()
		return b.r.runGroup(cctx, cmd, out)
	}
	err := gitRun("", tail, "clone", "--no-checkout", "--quiet", "--", b.spec.Repo, src)
	if err == nil && gitRun(src, io.Discard, "cat-file", "-e", sha+"^{commit}") != nil {
		// Not reachable from the branches and tags clone fetched (a pull
		// request head, say): ask for the commit itself.
		err = gitRun(src, tail, "fetch", "--quiet", "origin", sha)
	}
	if err == nil {
		err = gitRun(src, tail, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", sha)
	}
	switch {
	case err == nil:
		return Outcome{}, false
	case ctx.Err() != nil:
		return Outcome{Result: builds.Canceled, Reason: "canceled"}, true
	case cctx.Err() != nil:
		return errored(fmt.Sprintf("checkout of %s timed out after %s", shortSHA(sha), formatDuration(timeout))), true
	}
	msg := strings.TrimPrefix(lastLine(string(tail.tail)), "fatal: ")
	if msg == "" {
		msg = err.Error()
	}
	return errored(fmt.Sprintf("checkout of %s failed: %s", shortSHA(sha), msg)), true
}

// runSteps runs steps in order in dir, stopping at the first that fails,
// all within timeout.
func (b *build) runSteps(ctx context.Context, steps []builds.Step, dir string, env []string, timeout time.Duration) Outcome {
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var out Outcome
	for _, s := range steps {
		b.logf("==> step %s\n$ %s\n", s.Name, strings.ReplaceAll(strings.TrimRight(s.Run, "\n"), "\n", "\n  "))
		cmd := exec.CommandContext(sctx, shell, "-c", s.Run)
		cmd.Dir = dir
		cmd.Env = env
		start := time.Now()
		err := b.r.runGroup(sctx, cmd, b.log)
		so := StepOutcome{Name: s.Name, ExitCode: -1, Duration: time.Since(start)}
		if cmd.ProcessState != nil {
			so.ExitCode = cmd.ProcessState.ExitCode()
		}
		out.Steps = append(out.Steps, so)
		b.lg.Debug("step finished", "step", s.Name, "exit_code", so.ExitCode, "duration", so.Duration, "err", err)
		switch {
		case ctx.Err() != nil:
			out.Result, out.Reason = builds.Canceled, "canceled"
			return out
		case sctx.Err() != nil:
			out.Result = builds.Errored
			out.Reason = fmt.Sprintf("timed out after %s in step %q", formatDuration(timeout), s.Name)
			return out
		case cmd.ProcessState == nil:
			out.Result, out.Reason = builds.Errored, fmt.Sprintf("step %q could not start: %v", s.Name, err)
			return out
		case so.ExitCode != 0:
			out.Result, out.Reason = builds.Failed, stepFailure(s.Name, cmd.ProcessState)
			return out
		}
	}
	out.Result = builds.Passed
	return out
}

// stepFailure says how a step that did not exit with 0 ended.
func stepFailure(name string, ps *os.ProcessState) string {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return fmt.Sprintf("step %q was killed by signal %d (%s)", name, int(ws.Signal()), ws.Signal())
	}
	return fmt.Sprintf("step %q exited with status %d", name, ps.ExitCode())
}

// stepEnv builds a step's environment from scratch: nothing of the
// server's own environment but PATH reaches a step.
func stepEnv(path, home, tmp string, specEnv, fileEnv map[string]string) []string {
	m := map[string]string{
		"PATH":        path,
		"HOME":        home,
		"TMPDIR":      tmp,
		"LANG":        "C.UTF-8",
		"CI":          "true",
		"BUILDBRIDGE": "true",
	}
	for k, v := range specEnv {
		m[k] = v
	}
	// The BuildFile cannot set BUILDBRIDGE* (ParseBuildFile refuses them),
	// so the caller's build variables are always the caller's.
	for k, v := range fileEnv {
		m[k] = v
	}
	env := make([]string, 0, len(m))
	for k, v := range m {
		env = append(env, k+"="+v)
	}
	slices.Sort(env)
	return env
}

// formatDuration writes d the way people write a timeout: 10m, 1h30m, 90s.
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// removeAll removes dir even when a step left read-only directories in it
// (Go's module cache does), by making directories writable and retrying.
func removeAll(dir string) error {
	if err := os.RemoveAll(dir); err == nil {
		return nil
	}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o700) // best effort; RemoveAll below reports what is left
		}
		return nil
	})
	return os.RemoveAll(dir)
}
