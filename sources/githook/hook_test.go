package githook

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/sources"
	"github.com/buildbridge/buildbridge/store"
)

// git runs git with a fixed identity and no GIT_* variables from outside.
func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(cleanEnv(), "GIT_AUTHOR_NAME=Ann Author", "GIT_AUTHOR_EMAIL=ann@example.com",
		"GIT_COMMITTER_NAME=Ann Author", "GIT_COMMITTER_EMAIL=ann@example.com", "GIT_CONFIG_NOSYSTEM=1", "HOME="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

type wakes struct{ n atomic.Int64 }

func (w *wakes) Wake() { w.n.Add(1) }

// hub is a real store and the real POST /hooks/git handler on a loopback
// server.
type hub struct {
	store   *store.DB
	srv     *httptest.Server
	token   string
	project builds.Project
}

func newHub(t *testing.T) *hub {
	t.Helper()
	ctx := context.Background()
	s, err := store.Open(ctx, store.Config{DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	u, _ := s.CreateUser(ctx, "ann", false)
	token, _, err := s.CreateToken(ctx, u.ID, "hook")
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.CreateProject(ctx, builds.Project{Name: "app", OwnerID: u.ID, Repo: "/r", DefaultBranch: "main"})
	if err != nil {
		t.Fatal(err)
	}
	ing, err := sources.New(sources.Config{Store: s, Scheduler: &wakes{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(ServerConfig{Store: s, Ingester: ing, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	h := &hub{store: s, srv: httptest.NewServer(srv), token: token, project: p}
	t.Cleanup(h.srv.Close)
	return h
}

func (h *hub) builds(t *testing.T) []builds.Build {
	t.Helper()
	list, err := h.store.ListBuilds(context.Background(), store.BuildFilter{ProjectID: h.project.ID})
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// deadURL is a loopback URL nothing listens on.
func deadURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

// repo is a repository with the hook's settings installed, and commits to
// push.
type repo struct {
	dir, gitDir string
}

func newRepo(t *testing.T, url, token string) *repo {
	t.Helper()
	dir := t.TempDir()
	git(t, dir, "init", "-q")
	r := &repo{dir: dir, gitDir: filepath.Join(dir, ".git")}
	if url != "" {
		if _, err := Install(context.Background(), InstallConfig{Repo: dir, Project: "app", URL: url, Token: token, Binary: "/usr/bin/true"}); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func (r *repo) commit(t *testing.T, msg string) string {
	t.Helper()
	git(t, r.dir, "commit", "-q", "--allow-empty", "-m", msg)
	return git(t, r.dir, "rev-parse", "HEAD")
}

func (r *repo) run(t *testing.T, input string, budget time.Duration) string {
	t.Helper()
	var stderr bytes.Buffer
	start := time.Now()
	Run(context.Background(), RunConfig{GitDir: r.gitDir, Input: []byte(input), Stderr: &stderr, Budget: budget, Pusher: "ann"})
	if took := time.Since(start); took > budget+time.Second {
		t.Fatalf("hook took %s with a budget of %s", took, budget)
	}
	return stderr.String()
}

func (r *repo) spooled(t *testing.T) []string {
	t.Helper()
	sp, err := OpenSpool(SpoolDir(r.gitDir))
	if err != nil {
		t.Fatal(err)
	}
	names, err := sp.List()
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func (r *repo) setURL(t *testing.T, url, token string) {
	t.Helper()
	if _, err := Install(context.Background(), InstallConfig{Repo: r.dir, Project: "app", URL: url, Token: token, Binary: "/usr/bin/true"}); err != nil {
		t.Fatal(err)
	}
}

func TestRunDeliversAndSpools(t *testing.T) {
	h := newHub(t)
	r := newRepo(t, h.srv.URL, h.token)

	c1 := r.commit(t, "first\n\nwith a body")
	out := r.run(t, zero+" "+c1+" refs/heads/main\n", 3*time.Second)
	list := h.builds(t)
	if len(list) != 1 || !strings.Contains(out, "build #1 of app queued for main") {
		t.Fatalf("first push: %q, builds %+v", out, list)
	}
	b := list[0]
	if b.SHA != c1 || b.Ref != "refs/heads/main" || b.Author != "Ann Author" || b.AuthorEmail != "ann@example.com" ||
		b.Message != "first\n\nwith a body" || b.TriggeredBy != h.project.OwnerID {
		t.Fatalf("build %+v", b)
	}
	if pi, _ := h.store.BuildPushInfo(context.Background(), b.ID); pi.Pusher != "ann" {
		t.Fatalf("pusher %+v", pi)
	}

	// Three branches in one push: one request, three builds. Deletions
	// build nothing and print nothing.
	c2 := r.commit(t, "second")
	out = r.run(t, c1+" "+c2+" refs/heads/main\n"+zero+" "+c2+" refs/heads/a\n"+zero+" "+c2+" refs/heads/b\n", 3*time.Second)
	if n := len(h.builds(t)); n != 4 || strings.Count(out, "queued") != 3 {
		t.Fatalf("three branches: %q, %d builds", out, n)
	}
	if out = r.run(t, c2+" "+zero+" refs/heads/a\n", 3*time.Second); out != "" || len(h.builds(t)) != 4 {
		t.Fatalf("deletion: %q", out)
	}

	// The hub is down: the push goes on, one line says so, the request
	// is spooled; the next push sends both, in order.
	r.setURL(t, deadURL(t), h.token)
	c3 := r.commit(t, "while down")
	out = r.run(t, c2+" "+c3+" refs/heads/main\n", 3*time.Second)
	if strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.Contains(out, "unreachable") || !strings.Contains(out, "kept in") {
		t.Fatalf("hub down: %q", out)
	}
	spooled := r.spooled(t)
	if len(spooled) != 1 {
		t.Fatalf("spool: %v", spooled)
	}
	saved, _ := os.ReadFile(filepath.Join(SpoolDir(r.gitDir), spooled[0]))
	r.setURL(t, h.srv.URL, h.token)
	c4 := r.commit(t, "hub is back")
	out = r.run(t, c3+" "+c4+" refs/heads/main\n", 3*time.Second)
	list = h.builds(t)
	if len(list) != 6 || list[1].SHA != c3 || list[0].SHA != c4 || list[1].Number >= list[0].Number || len(r.spooled(t)) != 0 {
		t.Fatalf("after the hub came back: %q, builds %+v", out, list[:2])
	}

	// Exactly once: the spooled request sent again (its answer lost, say)
	// builds nothing.
	res, err := (&Client{URL: h.srv.URL, Token: h.token}).Send(context.Background(), saved)
	if err != nil || !res.Duplicate || len(h.builds(t)) != 6 {
		t.Fatalf("resend: %+v %v", res, err)
	}
}

func TestRunNeverBlocks(t *testing.T) {
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(release)
	r := newRepo(t, slow.URL, "bb_x")
	c := r.commit(t, "slow hub")
	out := r.run(t, zero+" "+c+" refs/heads/main\n", 500*time.Millisecond)
	if !strings.Contains(out, "no answer in time") || len(r.spooled(t)) != 1 {
		t.Fatalf("slow hub: %q, spool %v", out, r.spooled(t))
	}

	// Without settings the hook says so and does nothing else.
	bare := newRepo(t, "", "")
	if out := bare.run(t, zero+" "+c+" refs/heads/main\n", time.Second); !strings.Contains(out, "not configured") {
		t.Fatalf("unconfigured: %q", out)
	}
}

func TestFlushOrderAndRejects(t *testing.T) {
	h := newHub(t)
	r := newRepo(t, h.srv.URL, h.token)
	sp, err := OpenSpool(SpoolDir(r.gitDir))
	if err != nil {
		t.Fatal(err)
	}
	c := r.commit(t, "x")
	body := func(id, branch string) []byte {
		return []byte(`{"project":"app","id":"` + id + `","refs":[{"old":"` + zero + `","new":"` + c + `","ref":"refs/heads/` + branch + `"}]}`)
	}
	for _, req := range []struct {
		id   string
		body []byte
	}{{"req-0001", body("req-0001", "one")}, {"req-0002", []byte(`{"project":"app","id":"req-0002","refs":[]}`)}, {"req-0003", body("req-0003", "three")}} {
		if _, err := sp.Add(req.id, req.body); err != nil {
			t.Fatal(err)
		}
	}
	// A wrong token is not the request's fault: everything stays.
	rep := Flush(context.Background(), sp, &Client{URL: h.srv.URL, Token: "bb_wrong"})
	if rep.Sent != 0 || rep.Remaining != 3 || rep.Err == nil || !strings.Contains(rep.Err.Error(), "401") {
		t.Fatalf("wrong token: %+v", rep)
	}
	rep = Flush(context.Background(), sp, &Client{URL: h.srv.URL, Token: h.token})
	if rep.Sent != 2 || len(rep.Rejected) != 1 || rep.Remaining != 0 || rep.Err != nil {
		t.Fatalf("flush: %+v", rep)
	}
	if !strings.Contains(rep.Rejected[0], filepath.Join("rejected", "")) || !strings.Contains(rep.RejectErrs[0].Error(), "refs") {
		t.Fatalf("rejected: %v %v", rep.Rejected, rep.RejectErrs)
	}
	list := h.builds(t)
	if len(list) != 2 || list[1].Branch != "one" || list[0].Branch != "three" {
		t.Fatalf("order: %+v", list)
	}
}

func TestSpool(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	sp, err := OpenSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Fatalf("spool mode %v", fi.Mode())
	}
	var names []string
	for _, id := range []string{"zzzzzzzz", "aaaaaaaa", "mmmmmmmm"} {
		n, err := sp.Add(id, []byte(id))
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	// Stray files (a temporary file of a killed writer) are not requests.
	os.WriteFile(filepath.Join(dir, ".tmp-123"), []byte("half"), 0o600)
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("x"), 0o600)
	list, _ := sp.List()
	if strings.Join(list, ",") != strings.Join(names, ",") {
		t.Fatalf("order %v, want %v", list, names)
	}
	if _, err := sp.Add("../x", nil); err == nil {
		t.Fatal("path in id accepted")
	}

	ctx := context.Background()
	unlock, err := sp.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := sp.Lock(short); err == nil {
		t.Fatal("lock taken twice")
	}
	unlock()
	unlock2, err := sp.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	unlock2()
}

func TestServerRefusals(t *testing.T) {
	h := newHub(t)
	ctx := context.Background()
	other, _ := h.store.CreateUser(ctx, "bob", false)
	bobToken, _, _ := h.store.CreateToken(ctx, other.ID, "")
	c := "3333333333333333333333333333333333333333"
	good := `{"project":"app","id":"k-000001","refs":[{"old":"` + zero + `","new":"` + c + `","ref":"refs/heads/main"}]}`
	for _, tc := range []struct {
		name, token, body string
		want              int
	}{
		{"no token", "", good, 401},
		{"bad token", "bb_nope", good, 401},
		{"another user's project", bobToken, good, 404},
		{"unknown project", h.token, strings.Replace(good, `"app"`, `"nope"`, 1), 404},
		{"malformed", h.token, `{"project":`, 400},
		{"unknown type", h.token, `{"project":1}`, 400},
		{"no id", h.token, strings.Replace(good, `"k-000001"`, `""`, 1), 400},
		{"too large", h.token, `{"project":"app","pusher":"` + strings.Repeat("x", 2<<20) + `"}`, 413},
		{"good", h.token, good, 200},
	} {
		req, _ := http.NewRequest(http.MethodPost, h.srv.URL+"/hooks/git", strings.NewReader(tc.body))
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, resp.StatusCode, tc.want)
		}
	}
	if n := len(h.builds(t)); n != 1 {
		t.Fatalf("%d builds", n)
	}
}

func TestInstallAndUninstall(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	bare := filepath.Join(root, "repo.git")
	git(t, root, "init", "-q", "--bare", bare)
	hook := filepath.Join(bare, "hooks", HookName)
	mine := "#!/bin/sh\ncat > \"$GIT_DIR/seen\"\n"
	if err := os.WriteFile(hook, []byte(mine), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := InstallConfig{Repo: bare, Project: "app", URL: "http://127.0.0.1:1/", Token: "bb_tok", Binary: "/opt/bb's/buildbridge"}
	inst, err := Install(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if inst.GitDir != bare || inst.Hook != hook || inst.Chained != hook+ChainedSuffix {
		t.Fatalf("installed %+v", inst)
	}
	if got, _ := os.ReadFile(inst.Chained); string(got) != mine {
		t.Fatalf("chained hook %q", got)
	}
	script, _ := os.ReadFile(hook)
	if !strings.Contains(string(script), `bb='/opt/bb'\''s/buildbridge'`) || !strings.Contains(string(script), "hook run --chain") {
		t.Fatalf("script:\n%s", script)
	}
	for path, mode := range map[string]os.FileMode{StateDir(bare): 0o700, filepath.Join(StateDir(bare), "token"): 0o600, hook: 0o755} {
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v (%v)", path, fi.Mode().Perm(), mode, err)
		}
	}
	s, tok, err := LoadSettings(bare)
	if err != nil || s.URL != "http://127.0.0.1:1" || s.Project != "app" || tok != "bb_tok" {
		t.Fatalf("settings %+v %q %v", s, tok, err)
	}

	// Installing again keeps the chain as it is.
	cfg.Project = "other"
	if inst, err = Install(ctx, cfg); err != nil || inst.Chained != hook+ChainedSuffix {
		t.Fatalf("reinstall: %+v %v", inst, err)
	}
	if got, _ := os.ReadFile(inst.Chained); string(got) != mine {
		t.Fatal("reinstall chained buildbridge's own hook")
	}

	un, err := Uninstall(ctx, bare, "")
	if err != nil || un.Restored != hook {
		t.Fatalf("uninstall: %+v %v", un, err)
	}
	if got, _ := os.ReadFile(hook); string(got) != mine {
		t.Fatalf("restored hook %q", got)
	}
	if _, err := os.Stat(StateDir(bare)); !os.IsNotExist(err) {
		t.Fatalf("state left behind: %v", err)
	}
	if _, err := Uninstall(ctx, bare, ""); err == nil {
		t.Fatal("uninstall removed a hook that is not buildbridge's")
	}

	// Refusals.
	os.WriteFile(hook+ChainedSuffix, []byte("#!/bin/sh\n"), 0o755)
	if _, err := Install(ctx, cfg); err == nil || !strings.Contains(err.Error(), "taken") {
		t.Fatalf("install over a foreign hook and a taken chain name: %v", err)
	}
	for name, bad := range map[string]InstallConfig{
		"not a repo": {Repo: root, Project: "app", URL: "http://x", Token: "t", Binary: "/bb"},
		"project":    {Repo: bare, Project: "a b", URL: "http://x", Token: "t", Binary: "/bb"},
		"url":        {Repo: bare, Project: "app", URL: "ftp://x", Token: "t", Binary: "/bb"},
		"token":      {Repo: bare, Project: "app", URL: "http://x", Binary: "/bb"},
		"binary":     {Repo: bare, Project: "app", URL: "http://x", Token: "t", Binary: "bb"},
	} {
		if _, err := Install(ctx, bad); err == nil {
			t.Errorf("%s: install accepted %+v", name, bad)
		}
	}

	// A spool with requests survives uninstall.
	os.Remove(hook + ChainedSuffix)
	os.Remove(hook)
	if _, err := Install(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	sp, _ := OpenSpool(SpoolDir(bare))
	sp.Add("pending-1", []byte("{}"))
	if un, err := Uninstall(ctx, bare, ""); err != nil || un.Spooled != 1 || un.Restored != "" {
		t.Fatalf("uninstall with a spool: %+v %v", un, err)
	}
	if names, _ := sp.List(); len(names) != 1 {
		t.Fatal("spool lost on uninstall")
	}
}

// TestRunWhileAnotherHookHoldsTheSpool checks a push whose hook finds the
// spool locked (another push is sending) keeps its request and returns in
// time; the next run sends it.
func TestRunWhileAnotherHookHoldsTheSpool(t *testing.T) {
	h := newHub(t)
	r := newRepo(t, h.srv.URL, h.token)
	sp, err := OpenSpool(SpoolDir(r.gitDir))
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := sp.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c := r.commit(t, "while locked")
	out := r.run(t, zero+" "+c+" refs/heads/main\n", time.Second)
	unlock()
	if !strings.Contains(out, "another push") || len(r.spooled(t)) != 1 || len(h.builds(t)) != 0 {
		t.Fatalf("locked spool: %q, spool %v", out, r.spooled(t))
	}
	out = r.run(t, "", time.Second)
	if b := h.builds(t); len(b) != 1 || b[0].SHA != c || len(r.spooled(t)) != 0 {
		t.Fatalf("next run: %q, builds %+v", out, b)
	}
}
