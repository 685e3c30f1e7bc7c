package main

import (
	"bytes"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/sources/githook"
)

// projectBuilds lists a project's builds, newest first.
func projectBuilds(t *testing.T, c client, project string) []map[string]any {
	t.Helper()
	m := c.mustCall(t, 200, "GET", "/api/v1/projects/"+project+"/builds?limit=100", nil)
	var out []map[string]any
	for _, b := range m["builds"].([]any) {
		out = append(out, b.(map[string]any))
	}
	return out
}

// buildFor returns the builds of a project at a sha.
func buildsFor(t *testing.T, c client, project, sha string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, b := range projectBuilds(t, c, project) {
		if b["sha"] == sha {
			out = append(out, b)
		}
	}
	return out
}

// commitOn commits (without pushing) on a branch of the working clone.
func commitOn(t *testing.T, r *testRepo, branch, msg string) string {
	t.Helper()
	if git(t, r.work, "branch", "--list", branch) != "" {
		git(t, r.work, "checkout", "-q", branch)
	} else {
		git(t, r.work, "checkout", "-q", "-b", branch)
	}
	git(t, r.work, "commit", "-q", "--allow-empty", "-m", msg)
	return git(t, r.work, "rev-parse", "HEAD")
}

// push runs git push in the working clone and returns what git printed,
// the hook's "remote:" lines included. A failed push fails the test.
func push(t *testing.T, r *testRepo, args ...string) string {
	t.Helper()
	start := time.Now()
	out := git(t, r.work, append([]string{"push", "origin"}, args...)...)
	if took := time.Since(start); took > 6*time.Second {
		t.Fatalf("git push took %s: the hook blocked it\n%s", took, out)
	}
	return out
}

func spooled(t *testing.T, gitDir string) []string {
	t.Helper()
	entries, err := os.ReadDir(githook.SpoolDir(gitDir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".json") {
			names = append(names, e.Name())
		}
	}
	return names
}

// TestHookEndToEnd installs the hook into a bare repository served by a
// real `buildbridge serve`, and pushes to it with git: builds are queued
// with the commit's metadata, one per branch, none for a deletion, a
// [skip ci] commit or a tag (until the project builds tags); a push while
// the hub is stopped succeeds, warns, and is built exactly once when the
// hub is back, by `hook flush` or with the next push.
func TestHookEndToEnd(t *testing.T) {
	data := t.TempDir()
	token := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--data", data))
	addr := freeAddr(t)
	logs := newEventLog()
	p := startServer(t, data, addr, logs)
	c := client{base: "http://" + addr, token: token}
	repo := newTestRepo(t)
	c.mustCall(t, 201, "POST", "/api/v1/projects", map[string]any{"name": "app", "repo": repo.bare,
		"steps": []map[string]string{{"name": "ok", "run": "true"}}})

	// A post-receive hook already there is kept and still runs.
	hookPath := filepath.Join(repo.bare, "hooks", "post-receive")
	original := "#!/bin/sh\ncat >> \"$GIT_DIR/chained.log\"\necho chained hook ran\n"
	if err := os.WriteFile(hookPath, []byte(original), 0o755); err != nil {
		t.Fatal(err)
	}
	out := runCLI(t, "hook", "install", "--repo", repo.bare, "--project", "app", "--url", c.base, "--token", token)
	if !strings.Contains(out, "installed") || !strings.Contains(out, "post-receive.buildbridge-chained") {
		t.Fatalf("install said:\n%s", out)
	}
	fi, err := os.Stat(filepath.Join(repo.bare, "buildbridge", "token"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi, err)
	}
	if raw, _ := os.ReadFile(hookPath); !strings.Contains(string(raw), binPath) {
		t.Fatalf("the hook does not call the binary by its absolute path:\n%s", raw)
	}

	// A push of main: one build, QUEUED first, with the commit's metadata.
	sha := commitOn(t, repo, "main", "first commit\n\nthe body")
	out = push(t, repo, "main")
	if !strings.Contains(out, "build #1 of app queued for main") || !strings.Contains(out, "chained hook ran") {
		t.Fatalf("push output:\n%s", out)
	}
	b := buildsFor(t, c, "app", sha)
	if len(b) != 1 || b[0]["ref"] != "refs/heads/main" || b[0]["branch"] != "main" || b[0]["author"] != "Ann Author" ||
		b[0]["author_email"] != "ann@example.com" || b[0]["message"] != "first commit\n\nthe body" {
		t.Fatalf("build of the push: %v", b)
	}
	evs := logs.waitFinished(t, int64(b[0]["id"].(float64)), 30*time.Second)
	if evs[0].Build.State != "QUEUED" || evs[0].Build.SHA != sha || evs[0].Build.Author != "Ann Author" || evs[0].Build.Message != "first commit\n\nthe body" {
		t.Fatalf("QUEUED event: %+v", evs[0].Build)
	}
	if chained, _ := os.ReadFile(filepath.Join(repo.bare, "chained.log")); !strings.Contains(string(chained), sha+" refs/heads/main") {
		t.Fatalf("the chained hook did not get git's input: %q", chained)
	}

	// One push of three branches: three builds.
	s1 := commitOn(t, repo, "b1", "on b1")
	git(t, repo.work, "branch", "b2")
	git(t, repo.work, "branch", "b3")
	out = push(t, repo, "b1", "b2", "b3")
	if n := strings.Count(out, "queued for b"); n != 3 {
		t.Fatalf("three branches, %d queued:\n%s", n, out)
	}
	got := buildsFor(t, c, "app", s1)
	refs := map[any]bool{}
	for _, b := range got {
		refs[b["ref"]] = true
	}
	if len(got) != 3 || !refs["refs/heads/b1"] || !refs["refs/heads/b2"] || !refs["refs/heads/b3"] {
		t.Fatalf("builds of the three branches: %v", got)
	}

	// A deletion, a [skip ci] commit and a tag build nothing.
	before := len(projectBuilds(t, c, "app"))
	if out = push(t, repo, "--delete", "b2"); strings.Contains(out, "queued") {
		t.Fatalf("deletion queued a build:\n%s", out)
	}
	commitOn(t, repo, "main", "docs only [skip ci]")
	if out = push(t, repo, "main"); !strings.Contains(out, "skip CI") {
		t.Fatalf("[skip ci] push:\n%s", out)
	}
	git(t, repo.work, "tag", "-a", "v1", "-m", "release 1")
	if out = push(t, repo, "v1"); !strings.Contains(out, "does not build tags") {
		t.Fatalf("tag push:\n%s", out)
	}
	if n := len(projectBuilds(t, c, "app")); n != before {
		t.Fatalf("%d builds after a deletion, a [skip ci] commit and a tag; want %d", n, before)
	}
	// Once the project builds tags, an annotated tag builds its commit.
	c.mustCall(t, 200, "PATCH", "/api/v1/projects/app", map[string]any{"settings": map[string]any{"build_tags": true}})
	tagged := commitOn(t, repo, "main", "release 2")
	git(t, repo.work, "tag", "-a", "v2", "-m", "release 2")
	push(t, repo, "v2")
	if b := buildsFor(t, c, "app", tagged); len(b) != 1 || b[0]["ref"] != "refs/tags/v2" {
		t.Fatalf("tag build: %v", b)
	}

	// The hub is stopped: the push succeeds, says so in one line, and the
	// request waits in the spool.
	p.stop(t)
	down := commitOn(t, repo, "main", "pushed while the hub is down")
	out = push(t, repo, "main")
	if !strings.Contains(out, "buildbridge: hub "+c.base+" unreachable") || !strings.Contains(out, "kept in") {
		t.Fatalf("push with the hub down:\n%s", out)
	}
	names := spooled(t, repo.bare)
	if len(names) != 1 {
		t.Fatalf("spool after the push: %v", names)
	}
	saved, _ := os.ReadFile(filepath.Join(githook.SpoolDir(repo.bare), names[0]))
	if fails := exec.Command(binPath, "hook", "flush", "--repo", repo.bare); fails.Run() == nil {
		t.Fatal("hook flush succeeded with the hub down")
	}

	p = startServer(t, data, addr, logs)
	out = runCLI(t, "hook", "flush", "--repo", repo.bare)
	if !strings.Contains(out, "sent 1") || len(spooled(t, repo.bare)) != 0 {
		t.Fatalf("flush: %s", out)
	}
	if b := buildsFor(t, c, "app", down); len(b) != 1 || b[0]["message"] != "pushed while the hub is down" {
		t.Fatalf("builds of the spooled push: %v", b)
	}
	// Sent again (as if its answer had been lost), it builds nothing.
	req, _ := http.NewRequest("POST", c.base+"/hooks/git", bytes.NewReader(saved))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || len(buildsFor(t, c, "app", down)) != 1 {
		t.Fatalf("resent request: %d, builds %v", resp.StatusCode, buildsFor(t, c, "app", down))
	}

	// Spooled requests also go with the next push, first.
	p.stop(t)
	x := commitOn(t, repo, "main", "x while down")
	push(t, repo, "main")
	p = startServer(t, data, addr, logs)
	y := commitOn(t, repo, "main", "y after")
	out = push(t, repo, "main")
	bx, by := buildsFor(t, c, "app", x), buildsFor(t, c, "app", y)
	if len(bx) != 1 || len(by) != 1 || bx[0]["number"].(float64) >= by[0]["number"].(float64) || len(spooled(t, repo.bare)) != 0 {
		t.Fatalf("next push: x %v, y %v\n%s", bx, by, out)
	}

	// Uninstall puts the original hook back.
	runCLI(t, "hook", "uninstall", "--repo", repo.bare)
	if raw, _ := os.ReadFile(hookPath); string(raw) != original {
		t.Fatalf("hook after uninstall:\n%s", raw)
	}
	if _, err := os.Stat(filepath.Join(repo.bare, "buildbridge", "token")); !os.IsNotExist(err) {
		t.Fatalf("token left after uninstall: %v", err)
	}
	out = push(t, repo, "--delete", "b3")
	if strings.Contains(out, "buildbridge") || !strings.Contains(out, "chained hook ran") {
		t.Fatalf("push after uninstall:\n%s", out)
	}
	p.stop(t)
}

// TestHookInstallErrors checks install refuses what cannot work, with a
// message, and reads its defaults from the environment.
func TestHookInstallErrors(t *testing.T) {
	repo := newTestRepo(t)
	for _, tc := range []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"--repo", repo.bare, "--project", "app"}, nil, "token is required"},
		{[]string{"--repo", t.TempDir(), "--project", "app", "--token", "bb_x"}, nil, "not a git repository"},
		{[]string{"--repo", repo.bare, "--project", "a/b", "--token", "bb_x"}, nil, "--project"},
		{[]string{"--repo", repo.bare, "--project", "app"}, []string{"BUILDBRIDGE_TOKEN=bb_x", "BUILDBRIDGE_URL=gopher://x"}, "--url"},
	} {
		cmd := exec.Command(binPath, append([]string{"hook", "install"}, tc.args...)...)
		cmd.Env = append(os.Environ(), "BUILDBRIDGE_CONFIG=", "BUILDBRIDGE_TOKEN=", "BUILDBRIDGE_URL=")
		cmd.Env = append(cmd.Env, tc.env...)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("install %v: %v\n%s", tc.args, err, out)
		}
	}
	cmd := exec.Command(binPath, "hook", "install", "--repo", repo.bare, "--project", "app", "--url", "http://"+freeAddr(t))
	cmd.Env = append(os.Environ(), "BUILDBRIDGE_CONFIG=", "BUILDBRIDGE_TOKEN=bb_from_env")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "could not reach the hub") {
		t.Fatalf("install with the hub down: %v\n%s", err, out)
	}
	if tok, _ := os.ReadFile(filepath.Join(repo.bare, "buildbridge", "token")); strings.TrimSpace(string(tok)) != "bb_from_env" {
		t.Fatalf("token from the environment: %q", tok)
	}
}
