package runner

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

func TestRunResults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		files     map[string]string
		steps     []builds.Step
		result    builds.Result
		reason    string // regexp the reason must match; "" for none
		inLog     []string
		notInLog  []string
		stepCount int
	}{{
		name:      "passed",
		steps:     steps("build", "echo hello from $(basename $PWD)", "test", "test -f README"),
		files:     map[string]string{"README": "hi"},
		result:    builds.Passed,
		inLog:     []string{"==> step build\n$ echo hello from $(basename $PWD)\n", "hello from src\n", "==> step test", "==> passed\n"},
		stepCount: 2,
	}, {
		name:      "failing step stops the build",
		steps:     steps("ok", "true", "test", "echo failing; exit 3", "never", "echo never ran"),
		result:    builds.Failed,
		reason:    `^step "test" exited with status 3$`,
		inLog:     []string{"failing\n", `==> failed: step "test" exited with status 3`},
		notInLog:  []string{"never ran"},
		stepCount: 2,
	}, {
		name:      "killed by a signal",
		steps:     steps("suicide", "kill -KILL $$"),
		result:    builds.Failed,
		reason:    `^step "suicide" was killed by signal 9 \(killed\)$`,
		stepCount: 1,
	}, {
		name: "build file overrides project steps",
		files: map[string]string{BuildFile: "steps:\n  - name: yml\n    run: echo from-yml\n" +
			"  - run: echo \"unnamed $FROM_FILE\"\nenv:\n  FROM_FILE: yes-from-file\n"},
		steps:     steps("project", "exit 1"),
		result:    builds.Passed,
		inLog:     []string{"==> using .buildbridge.yml", "==> step yml", "from-yml\n", "==> step step 2", "unnamed yes-from-file\n"},
		notInLog:  []string{"==> step project"},
		stepCount: 2,
	}, {
		name:      "build file without steps keeps project steps",
		files:     map[string]string{BuildFile: "env:\n  GREETING: hi\n"},
		steps:     steps("project", "echo project says $GREETING"),
		result:    builds.Passed,
		inLog:     []string{"project says hi\n"},
		stepCount: 1,
	}, {
		name:   "unknown key in build file",
		files:  map[string]string{BuildFile: "steps:\n  - name: a\n    run: echo a\n    shell: bash\n"},
		steps:  steps("project", "true"),
		result: builds.Errored,
		reason: `^\.buildbridge\.yml:4: unknown key "shell"$`,
	}, {
		name:   "unknown top-level key in build file",
		files:  map[string]string{BuildFile: "# comment\nstages: [a]\n"},
		result: builds.Errored,
		reason: `^\.buildbridge\.yml:2: unknown key "stages"$`,
	}, {
		name:   "bad timeout in build file",
		files:  map[string]string{BuildFile: "steps:\n  - run: 'true'\ntimeout: 10 minutes\n"},
		result: builds.Errored,
		reason: `^\.buildbridge\.yml:3: timeout "10 minutes" is not a duration`,
	}, {
		name:   "yaml syntax error",
		files:  map[string]string{BuildFile: "steps:\n  - run: [unclosed\n"},
		result: builds.Errored,
		reason: `^\.buildbridge\.yml:\d+: `,
	}, {
		name:   "artifact pattern leaving the workspace",
		files:  map[string]string{BuildFile: "steps:\n  - run: 'true'\nartifacts:\n  - out/*\n  - ../../etc/passwd\n"},
		result: builds.Errored,
		reason: `^\.buildbridge\.yml:5: artifacts: pattern "\.\./\.\./etc/passwd" must not contain \.\.$`,
	}, {
		name:   "reserved env in build file",
		files:  map[string]string{BuildFile: "steps:\n  - run: 'true'\nenv:\n  A: b\n  BUILDBRIDGE_BUILD_ID: '1'\n"},
		result: builds.Errored,
		reason: `^\.buildbridge\.yml:5: env: BUILDBRIDGE_BUILD_ID is reserved`,
	}, {
		name:   "build file as symlink",
		files:  map[string]string{BuildFile: "symlink:/etc/passwd"},
		steps:  steps("project", "true"),
		result: builds.Errored,
		reason: `^\.buildbridge\.yml: must be a regular file, not a symbolic link$`,
	}, {
		name:   "no steps",
		result: builds.Errored,
		reason: `^no steps$`,
	}, {
		name:   "project step without command",
		steps:  steps("empty", "  "),
		result: builds.Errored,
		reason: `^project steps: step "empty" has no run command$`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			files := tt.files
			if files == nil {
				files = map[string]string{"README": "hi"}
			}
			repo, sha := newRepo(t, files)
			r := newTestRunner(t, nil)
			out, log := runBuild(t.Context(), t, r, Spec{BuildID: 1, Repo: repo.bare, SHA: sha, Ref: "refs/heads/main", Steps: tt.steps})
			if out.Result != tt.result {
				t.Errorf("result = %s (%s), want %s\nlog:\n%s", out.Result, out.Reason, tt.result, log)
			}
			if tt.reason == "" && out.Reason != "" {
				t.Errorf("reason = %q, want none", out.Reason)
			}
			if tt.reason != "" && !regexp.MustCompile(tt.reason).MatchString(out.Reason) {
				t.Errorf("reason = %q, want match for %s", out.Reason, tt.reason)
			}
			for _, s := range tt.inLog {
				if !strings.Contains(log, s) {
					t.Errorf("log lacks %q\nlog:\n%s", s, log)
				}
			}
			for _, s := range tt.notInLog {
				if strings.Contains(log, s) {
					t.Errorf("log has %q\nlog:\n%s", s, log)
				}
			}
			if len(out.Steps) != tt.stepCount {
				t.Errorf("%d step outcomes, want %d: %+v", len(out.Steps), tt.stepCount, out.Steps)
			}
			if tt.result == builds.Failed {
				last := out.Steps[len(out.Steps)-1]
				if last.ExitCode == 0 {
					t.Errorf("last step exit code 0 in a failed build: %+v", out.Steps)
				}
			}
			if !strings.Contains(log, "==> checkout "+sha+" (refs/heads/main)\n") {
				t.Errorf("log lacks the checkout line\nlog:\n%s", log)
			}
		})
	}
}

// The commit is checked out exactly, not the branch head.
func TestRunChecksOutExactCommit(t *testing.T) {
	t.Parallel()
	repo, first := newRepo(t, map[string]string{"version": "one"})
	second := repo.commit(t, "main", map[string]string{"version": "two"}, "second")
	r := newTestRunner(t, nil)
	for sha, want := range map[string]string{first: "one", second: "two"} {
		out, log := runBuild(t.Context(), t, r, Spec{BuildID: 2, Repo: repo.bare, SHA: sha,
			Steps: steps("show", `echo "version=$(cat version) head=$(git rev-parse HEAD)"`)})
		if out.Result != builds.Passed {
			t.Fatalf("result %s: %s\n%s", out.Result, out.Reason, log)
		}
		if !strings.Contains(log, "version="+want+" head="+sha+"\n") {
			t.Errorf("commit %s: log:\n%s", sha, log)
		}
	}
}

func TestRunRefusesBadInput(t *testing.T) {
	t.Parallel()
	repo, sha := newRepo(t, map[string]string{"README": "hi"})
	marker := filepath.Join(t.TempDir(), "injected")
	tests := []struct {
		name, repo, sha string
		reason          string
	}{
		{"empty sha", repo.bare, "", `^checkout refused: commit "" is not 40 or 64`},
		{"branch name as sha", repo.bare, "main", `^checkout refused: commit "main"`},
		{"option as sha", repo.bare, "--upload-pack=touch " + marker, `^checkout refused: commit "--upload-pack`},
		{"short sha", repo.bare, sha[:7], `^checkout refused: commit "` + sha[:7] + `"`},
		{"uppercase sha", repo.bare, strings.ToUpper(sha), `^checkout refused`},
		{"sha with newline", repo.bare, sha[:39] + "\n", `^checkout refused`},
		{"option as repo", "--upload-pack=touch " + marker, sha, `^checkout refused: repository "--upload-pack=touch .*" must not start with -$`},
		{"ext transport", "ext::sh -c touch% " + marker, sha, `^checkout of ` + sha[:12] + ` failed: .*`},
		{"unknown commit", repo.bare, strings.Repeat("ab", 20), `^checkout of abababababab failed: .+`},
		{"missing repository", filepath.Join(t.TempDir(), "nope.git"), sha, `^checkout of ` + sha[:12] + ` failed: .*does not exist`},
	}
	r := newTestRunner(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, log := runBuild(t.Context(), t, r, Spec{BuildID: 3, Repo: tt.repo, SHA: tt.sha, Steps: steps("s", "touch "+marker)})
			if out.Result != builds.Errored || !regexp.MustCompile(tt.reason).MatchString(out.Reason) {
				t.Errorf("got %s %q, want errored matching %s\nlog:\n%s", out.Result, out.Reason, tt.reason, log)
			}
			if len(out.Steps) != 0 {
				t.Errorf("steps ran: %+v", out.Steps)
			}
		})
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("an injected command ran")
	}
}

func TestRunTimeout(t *testing.T) {
	t.Parallel()
	// The step leaves a grandchild that ignores SIGTERM and holds the log
	// pipe open: only SIGKILL of the group ends it.
	const run = `echo $$ > "$BUILDBRIDGE_TEST_PIDFILE"; (trap "" TERM; sleep 30) & echo started; sleep 30`
	tests := []struct {
		name    string
		files   map[string]string
		timeout time.Duration
		reason  string
	}{
		{"project timeout", map[string]string{"README": "x"}, time.Second, `timed out after 1s in step "sleepy"`},
		{"build file timeout", map[string]string{BuildFile: "timeout: 1s\nsteps:\n  - name: sleepy\n    run: '" + run + "'\n"},
			time.Hour, `timed out after 1s in step "sleepy"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			repo, sha := newRepo(t, tt.files)
			r := newTestRunner(t, nil)
			pidfile := filepath.Join(t.TempDir(), "pid")
			start := time.Now()
			out, log := runBuild(t.Context(), t, r, Spec{BuildID: 4, Repo: repo.bare, SHA: sha,
				Steps: steps("sleepy", run), Timeout: tt.timeout,
				Env: map[string]string{"BUILDBRIDGE_TEST_PIDFILE": pidfile}})
			elapsed := time.Since(start)
			if out.Result != builds.Errored || out.Reason != tt.reason {
				t.Errorf("got %s %q, want errored %q\nlog:\n%s", out.Result, out.Reason, tt.reason, log)
			}
			// 1s timeout + 0.5s grace, and slack for a loaded machine.
			if elapsed > 5*time.Second {
				t.Errorf("Run took %s", elapsed)
			}
			if !strings.Contains(log, "started\n") {
				t.Errorf("log lacks the step's output:\n%s", log)
			}
			pgid, err := strconv.Atoi(waitFile(t, pidfile, time.Second))
			if err != nil {
				t.Fatal(err)
			}
			if live, err := liveGroupMembers(pgid); err != nil || len(live) > 0 {
				t.Errorf("process group %d still has %v (%v)", pgid, live, err)
			}
			if len(out.Steps) != 1 || out.Steps[0].ExitCode != -1 {
				t.Errorf("steps = %+v, want one killed step", out.Steps)
			}
		})
	}
}

func TestRunCancel(t *testing.T) {
	t.Parallel()
	repo, sha := newRepo(t, map[string]string{"README": "x"})
	r := newTestRunner(t, nil)
	dir := t.TempDir()
	pidfile, bgfile := filepath.Join(dir, "pid"), filepath.Join(dir, "bg")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	type result struct {
		out Outcome
		log string
	}
	done := make(chan result, 1)
	go func() {
		out, log := runBuild(ctx, t, r, Spec{BuildID: 5, Repo: repo.bare, SHA: sha,
			Steps: steps("wait", `echo $$ > "$BUILDBRIDGE_TEST_PIDFILE"; sleep 30 & echo $! > "$BUILDBRIDGE_TEST_BGFILE"; wait`,
				"after", "echo must not run"),
			Env: map[string]string{"BUILDBRIDGE_TEST_PIDFILE": pidfile, "BUILDBRIDGE_TEST_BGFILE": bgfile}})
		done <- result{out, log}
	}()
	bg, err := strconv.Atoi(waitFile(t, bgfile, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	pgid, err := strconv.Atoi(waitFile(t, pidfile, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if !alive(bg) {
		t.Fatalf("background sleep %d is not running before cancel", bg)
	}
	start := time.Now()
	cancel()
	var res result
	select {
	case res = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5s of cancel")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Run returned %s after cancel", d)
	}
	if res.out.Result != builds.Canceled || res.out.Reason != "canceled" {
		t.Errorf("got %s %q, want canceled\nlog:\n%s", res.out.Result, res.out.Reason, res.log)
	}
	if strings.Contains(res.log, "must not run") {
		t.Errorf("a step ran after cancel:\n%s", res.log)
	}
	if alive(bg) {
		t.Errorf("background sleep %d survived the cancel", bg)
	}
	if live, err := liveGroupMembers(pgid); err != nil || len(live) > 0 {
		t.Errorf("process group %d still has %v (%v)", pgid, live, err)
	}
}

// Not parallel: it sets environment variables of the test process.
func TestRunEnvironmentIsolation(t *testing.T) {
	repo, sha := newRepo(t, map[string]string{BuildFile: "steps:\n  - name: env\n    run: env | sort; echo \"aws=${AWS_SECRET_ACCESS_KEY:-unset}\"; pwd\nenv:\n  FROM_FILE: file-value\n"})
	t.Setenv("BUILDBRIDGE_SERVER_SECRET", "s3cr3t-server-token")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-secret")
	t.Setenv("GIT_DIR", "/nonexistent/must-not-matter") // as in a git hook; the checkout must ignore it
	r := newTestRunner(t, nil)
	out, log := runBuild(t.Context(), t, r, Spec{BuildID: 6, Repo: repo.bare, SHA: sha,
		Env: map[string]string{"BUILDBRIDGE_BUILD_ID": "6", "BUILDBRIDGE_COMMIT": sha}})
	if out.Result != builds.Passed {
		t.Fatalf("result %s: %s\n%s", out.Result, out.Reason, log)
	}
	for _, secret := range []string{"s3cr3t-server-token", "wJalrXUtnFEMI-secret", "BUILDBRIDGE_SERVER_SECRET", "must-not-matter"} {
		if strings.Contains(log, secret) {
			t.Errorf("a step saw %q:\n%s", secret, log)
		}
	}
	want := []string{"aws=unset\n", "CI=true\n", "BUILDBRIDGE=true\n", "LANG=C.UTF-8\n",
		"FROM_FILE=file-value\n", "BUILDBRIDGE_BUILD_ID=6\n", "BUILDBRIDGE_COMMIT=" + sha + "\n",
		"PATH=" + os.Getenv("PATH") + "\n", "HOME=" + r.cfg.WorkDir + "/6-", "TMPDIR=" + r.cfg.WorkDir + "/6-"}
	for _, w := range want {
		if !strings.Contains(log, w) {
			t.Errorf("log lacks %q:\n%s", w, log)
		}
	}
	// Only the variables the runner sets, nothing inherited.
	envLines := 0
	for line := range strings.Lines(log) {
		if regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`).MatchString(line) && !strings.HasPrefix(line, "aws=") {
			envLines++
		}
	}
	// PATH HOME TMPDIR LANG CI BUILDBRIDGE + 2 spec + 1 file, plus PWD
	// and SHLVL (and _ in some shells) that sh sets itself.
	if envLines > 12 {
		t.Errorf("%d variables in the step's environment:\n%s", envLines, log)
	}
}

func TestRunArtifacts(t *testing.T) {
	t.Parallel()
	outside := filepath.Join(t.TempDir(), "server-secret.txt")
	if err := os.WriteFile(outside, []byte("server secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	repo, sha := newRepo(t, map[string]string{
		"out/a.txt":              "alpha",
		"out/nested/deep/b.txt":  "bravo",
		"out/c.log":              "charlie",
		"inside.txt":             "inside",
		"dist/x/y.js":            "yankee",
		"out/committed-link.txt": "symlink:" + outside,
		BuildFile: "steps:\n  - name: make\n    run: |\n" +
			"      head -c 3000 /dev/zero > zz-big.bin\n" +
			"      ln -s \"$OUTSIDE\" out/evil.txt\n" +
			"      ln -s ../inside.txt out/link.txt\n" +
			"      ln -s \"$PWD/inside.txt\" out/abs-link.txt\n" +
			"      mkfifo out/fifo.txt\n" +
			"      exit 1\n" +
			"artifacts:\n  - out/**/*.txt\n  - dist\n  - zz-*.bin\n  - nothing/*\nenv:\n  OUTSIDE: " + outside + "\n",
	})
	r := newTestRunner(t, func(c *Config) { c.MaxArtifactBytes = 2500 })
	out, log := runBuild(t.Context(), t, r, Spec{BuildID: 7, Repo: repo.bare, SHA: sha})
	if out.Result != builds.Failed {
		t.Fatalf("result %s %q, want failed (artifacts are kept on failure too)\n%s", out.Result, out.Reason, log)
	}
	want := map[string]string{
		"dist/x/y.js":           "yankee",
		"out/a.txt":             "alpha",
		"out/abs-link.txt":      "inside",
		"out/link.txt":          "inside",
		"out/nested/deep/b.txt": "bravo",
	}
	var got []string
	for _, a := range out.Artifacts {
		got = append(got, a.Path)
		content, ok := want[a.Path]
		if !ok {
			t.Errorf("unexpected artifact %+v", a)
			continue
		}
		b, err := os.ReadFile(filepath.Join(r.cfg.ArtifactsDir, "7", filepath.FromSlash(a.Path)))
		if err != nil || string(b) != content {
			t.Errorf("artifact %s: %q %v, want %q", a.Path, b, err, content)
		}
		sum := sha256.Sum256([]byte(content))
		if a.Size != int64(len(content)) || a.SHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("artifact %+v: want size %d sha256 %x", a, len(content), sum)
		}
	}
	if len(got) != len(want) {
		t.Errorf("artifacts %v, want %d files", got, len(want))
	}
	for _, line := range []string{
		"artifacts: out/committed-link.txt refused: it points outside the workspace\n",
		"artifacts: out/evil.txt refused: it points outside the workspace\n",
		"artifacts: out/fifo.txt refused: not a regular file\n",
		"artifacts: limit of 2500 bytes reached, skipped: zz-big.bin (3000 bytes)\n",
		"artifacts: kept 5 files, 28 bytes\n",
	} {
		if !strings.Contains(log, line) {
			t.Errorf("log lacks %q:\n%s", line, log)
		}
	}
	for _, p := range []string{"out/evil.txt", "out/committed-link.txt", "zz-big.bin", "out/c.log", "out/fifo.txt"} {
		if _, err := os.Lstat(filepath.Join(r.cfg.ArtifactsDir, "7", p)); err == nil {
			t.Errorf("%s was copied", p)
		}
	}
}

func TestRunLogCap(t *testing.T) {
	t.Parallel()
	repo, sha := newRepo(t, map[string]string{"README": "x"})
	r := newTestRunner(t, func(c *Config) { c.MaxLogBytes = 2048 })
	out, log := runBuild(t.Context(), t, r, Spec{BuildID: 8, Repo: repo.bare, SHA: sha,
		Steps: steps("spam", `i=0; while [ $i -lt 3000 ]; do echo "line $i"; i=$((i+1)); done; exit 2`)})
	if out.Result != builds.Failed {
		t.Fatalf("result %s %q\n%s", out.Result, out.Reason, log)
	}
	m := regexp.MustCompile(`\n\[… (\d+) bytes omitted …\]\n`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no omitted marker:\n%s", log)
	}
	omitted, _ := strconv.Atoi(m[1])
	if omitted < 20000 {
		t.Errorf("%d bytes omitted, want most of the ~27 KB log", omitted)
	}
	if len(log) > 2048+len(m[0]) {
		t.Errorf("log is %d bytes, cap 2048", len(log))
	}
	for _, s := range []string{"==> step spam\n", "line 0\n", "line 2999\n", `==> failed: step "spam" exited with status 2` + "\n"} {
		if !strings.Contains(log, s) {
			t.Errorf("log lacks %q:\n%s", s, log)
		}
	}
	if strings.Contains(log, "line 1500\n") {
		t.Errorf("the middle of the log was kept:\n%s", log)
	}
}

func TestRunKeepsFailedWorkspace(t *testing.T) {
	t.Parallel()
	repo, sha := newRepo(t, map[string]string{"README": "x"})
	r := newTestRunner(t, func(c *Config) { c.KeepFailedWorkspaces = true })
	var log syncBuffer
	out, err := r.Run(t.Context(), Spec{BuildID: 9, Repo: repo.bare, SHA: sha,
		Steps: steps("ro", "mkdir -p ro/sub && touch ro/sub/f && chmod -R a-w ro && exit 1")}, &log)
	if err != nil || out.Result != builds.Failed {
		t.Fatalf("%v %s %q", err, out.Result, out.Reason)
	}
	ents, _ := os.ReadDir(r.cfg.WorkDir)
	if len(ents) != 1 || !strings.HasPrefix(ents[0].Name(), "9-") {
		t.Fatalf("workspace not kept: %v", ents)
	}
	// removeAll copes with the read-only directories the step left.
	if err := removeAll(filepath.Join(r.cfg.WorkDir, ents[0].Name())); err != nil {
		t.Fatal(err)
	}
}

func TestRunCallerErrors(t *testing.T) {
	t.Parallel()
	r := newTestRunner(t, nil)
	for _, spec := range []Spec{
		{BuildID: 0, Repo: "x", SHA: strings.Repeat("a", 40)},
		{BuildID: 1, Repo: "x", SHA: strings.Repeat("a", 40), Env: map[string]string{"BAD=NAME": "x"}},
	} {
		if _, err := r.Run(t.Context(), spec, nil); err == nil {
			t.Errorf("Run(%+v) gave no error", spec)
		}
	}
}

func TestNewConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct {
		cfg  Config
		want string
	}{
		{Config{ArtifactsDir: dir}, "WorkDir is required"},
		{Config{WorkDir: dir}, "ArtifactsDir is required"},
		{Config{WorkDir: dir, ArtifactsDir: dir, KillGrace: -1}, "KillGrace must not be negative"},
		{Config{WorkDir: dir, ArtifactsDir: dir, MaxLogBytes: -1}, "MaxLogBytes"},
		{Config{WorkDir: dir, ArtifactsDir: dir, GitPath: "no-such-git-binary"}, "GitPath"},
	}
	for _, tt := range tests {
		if _, err := New(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%+v) = %v, want error with %q", tt.cfg, err, tt.want)
		}
	}
	r, err := New(Config{WorkDir: filepath.Join(dir, "w"), ArtifactsDir: filepath.Join(dir, "a")})
	if err != nil {
		t.Fatal(err)
	}
	if r.cfg.MaxLogBytes != DefaultMaxLogBytes || r.cfg.KillGrace != DefaultKillGrace ||
		r.cfg.DefaultTimeout != DefaultTimeout || r.cfg.MaxArtifactBytes != DefaultMaxArtifactBytes {
		t.Errorf("defaults not set: %+v", r.cfg)
	}
}

func TestFormatDuration(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{
		time.Second: "1s", 10 * time.Minute: "10m", 90 * time.Second: "1m30s",
		time.Hour: "1h", 90 * time.Minute: "1h30m", 1500 * time.Millisecond: "1.5s",
	} {
		if got := formatDuration(d); got != want {
			t.Errorf("formatDuration(%s) = %s, want %s", d, got, want)
		}
	}
}

// A process that leaves the step's group (setsid) and keeps the log pipe
// open cannot hold the build: Run returns about KillGrace after the step.
func TestRunEscapedProcessDoesNotHold(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip("setsid(1) is not installed")
	}
	repo, sha := newRepo(t, map[string]string{"README": "x"})
	r := newTestRunner(t, nil)
	pidfile := filepath.Join(t.TempDir(), "pid")
	start := time.Now()
	out, log := runBuild(t.Context(), t, r, Spec{BuildID: 10, Repo: repo.bare, SHA: sha,
		Steps: steps("escape", `setsid sleep 30 & echo $! > "$BUILDBRIDGE_TEST_PIDFILE"; echo escaped`),
		Env:   map[string]string{"BUILDBRIDGE_TEST_PIDFILE": pidfile}})
	elapsed := time.Since(start)
	pid, err := strconv.Atoi(waitFile(t, pidfile, time.Second))
	if err == nil {
		syscall.Kill(pid, syscall.SIGKILL) // the runner cannot reach it; the test cleans up
	}
	if out.Result != builds.Passed || !strings.Contains(log, "escaped\n") {
		t.Errorf("got %s %q\n%s", out.Result, out.Reason, log)
	}
	if elapsed > 4*time.Second {
		t.Errorf("Run took %s with an escaped process holding the log pipe", elapsed)
	}
}

// What a step leaves running in the background is ended with the step.
func TestRunEndsLeftoverProcesses(t *testing.T) {
	t.Parallel()
	repo, sha := newRepo(t, map[string]string{"README": "x"})
	r := newTestRunner(t, nil)
	pidfile := filepath.Join(t.TempDir(), "pid")
	out, log := runBuild(t.Context(), t, r, Spec{BuildID: 11, Repo: repo.bare, SHA: sha,
		Steps: steps("daemon", `sleep 30 >/dev/null 2>&1 & echo $! > "$BUILDBRIDGE_TEST_PIDFILE"`),
		Env:   map[string]string{"BUILDBRIDGE_TEST_PIDFILE": pidfile}})
	if out.Result != builds.Passed {
		t.Fatalf("got %s %q\n%s", out.Result, out.Reason, log)
	}
	pid, err := strconv.Atoi(waitFile(t, pidfile, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if alive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Errorf("background process %d outlived its step", pid)
	}
}

// A log writer that fails is the runner's error; the build still runs to
// its outcome.
func TestRunLogWriterFails(t *testing.T) {
	t.Parallel()
	repo, sha := newRepo(t, map[string]string{"README": "x"})
	r := newTestRunner(t, nil)
	out, err := r.Run(t.Context(), Spec{BuildID: 12, Repo: repo.bare, SHA: sha,
		Steps: steps("a", "echo one", "b", "echo two")}, &failingWriter{n: 1})
	if err == nil || !strings.Contains(err.Error(), "writing the log: store is down") {
		t.Errorf("err = %v", err)
	}
	if out.Result != builds.Passed || len(out.Steps) != 2 {
		t.Errorf("outcome %+v", out)
	}
}
