package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/buildbridge/buildbridge/store"
)

// recordingScheduler stands in for the build queue, which has its own
// tests: the API only has to call it.
type recordingScheduler struct {
	mu       sync.Mutex
	wakes    int
	canceled []int64
}

func (s *recordingScheduler) Wake() { s.mu.Lock(); s.wakes++; s.mu.Unlock() }
func (s *recordingScheduler) Cancel(id int64) {
	s.mu.Lock()
	s.canceled = append(s.canceled, id)
	s.mu.Unlock()
}

type fixture struct {
	srv       *httptest.Server
	store     *store.DB
	sched     *recordingScheduler
	artifacts string
	ann, bob  string // tokens
	admin     string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	s, err := store.Open(ctx, store.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	f := &fixture{store: s, sched: &recordingScheduler{}, artifacts: t.TempDir()}
	for name, dst := range map[string]*string{"ann": &f.ann, "bob": &f.bob, "root": &f.admin} {
		u, err := s.CreateUser(ctx, name, name == "root")
		if err != nil {
			t.Fatal(err)
		}
		if *dst, _, err = s.CreateToken(ctx, u.ID, ""); err != nil {
			t.Fatal(err)
		}
	}
	resolve := func(_ context.Context, repo, ref string) (Commit, error) {
		if ref == "nope" {
			return Commit{}, fmt.Errorf("%w: branch %q not found in %s", ErrRefNotFound, ref, repo)
		}
		return Commit{SHA: "0123456789abcdef0123456789abcdef01234567", Ref: "refs/heads/" + ref, Branch: ref, Author: "Ann", Message: "msg"}, nil
	}
	a, err := New(Config{Store: s, Scheduler: f.sched, Resolve: resolve, ArtifactsDir: f.artifacts, MaxBodyBytes: 4096})
	if err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(a)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) do(t *testing.T, token, method, path, body string) (int, map[string]any, string) {
	t.Helper()
	req, _ := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	json.Unmarshal(raw, &m)
	return resp.StatusCode, m, string(raw)
}

func errCode(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

const appBody = `{"name":"app","repo":"/repo.git","default_branch":"main","steps":[{"name":"t","run":"true"}],"timeout":"5m"}`

func TestProjectsAndBuilds(t *testing.T) {
	f := newFixture(t)
	code, m, raw := f.do(t, f.ann, "POST", "/api/v1/projects", appBody)
	if code != 201 || m["name"] != "app" || m["timeout"] != "5m0s" {
		t.Fatalf("create project: %d %s", code, raw)
	}
	code, m, raw = f.do(t, f.ann, "POST", "/api/v1/projects/app/builds", `{"branch":"main"}`)
	if code != 201 || m["state"] != "QUEUED" || m["number"] != 1.0 || m["sha"] == "" || m["branch"] != "main" {
		t.Fatalf("trigger: %d %s", code, raw)
	}
	id := int64(m["id"].(float64))
	if f.sched.wakes != 1 {
		t.Fatalf("scheduler woken %d times", f.sched.wakes)
	}
	code, m, raw = f.do(t, f.ann, "POST", "/api/v1/projects/app/builds", "")
	if code != 201 || m["number"] != 2.0 {
		t.Fatalf("trigger default branch: %d %s", code, raw)
	}
	code, m, raw = f.do(t, f.ann, "GET", "/api/v1/projects/app/builds?limit=1", "")
	list, _ := m["builds"].([]any)
	if code != 200 || len(list) != 1 || m["next_cursor"] == nil {
		t.Fatalf("list: %d %s", code, raw)
	}
	code, m, _ = f.do(t, f.ann, "GET", "/api/v1/projects/app/builds?cursor="+m["next_cursor"].(string), "")
	if list, _ = m["builds"].([]any); code != 200 || len(list) != 1 || list[0].(map[string]any)["number"] != 1.0 {
		t.Fatalf("second page: %v", m)
	}
	code, m, raw = f.do(t, f.ann, "POST", fmt.Sprintf("/api/v1/builds/%d/cancel", id), "")
	if code != 200 || m["state"] != "FINISHED" || m["result"] != "canceled" {
		t.Fatalf("cancel queued: %d %s", code, raw)
	}
	code, _, _ = f.do(t, f.ann, "POST", fmt.Sprintf("/api/v1/builds/%d/cancel", id), "")
	if code != 409 {
		t.Fatalf("cancel twice: %d", code)
	}
	code, m, raw = f.do(t, f.ann, "POST", fmt.Sprintf("/api/v1/builds/%d/rebuild", id), "")
	if code != 201 || m["number"] != 3.0 || m["sha"] != "0123456789abcdef0123456789abcdef01234567" {
		t.Fatalf("rebuild: %d %s", code, raw)
	}
	code, m, raw = f.do(t, f.ann, "POST", "/api/v1/projects/app/builds", `{"ref":"refs/tags/v1","sha":"0123456789abcdef0123456789abcdef01234567"}`)
	if code != 201 || m["ref"] != "refs/tags/v1" {
		t.Fatalf("trigger ref+sha: %d %s", code, raw)
	}
	code, m, raw = f.do(t, f.ann, "PATCH", "/api/v1/projects/app", `{"default_branch":"dev"}`)
	if code != 200 || m["default_branch"] != "dev" || m["repo"] != "/repo.git" {
		t.Fatalf("patch: %d %s", code, raw)
	}
	code, m, _ = f.do(t, f.admin, "GET", "/api/v1/projects", "")
	if l, _ := m["projects"].([]any); code != 200 || len(l) != 1 {
		t.Fatalf("admin sees all: %v", m)
	}
	code, m, _ = f.do(t, f.bob, "GET", "/api/v1/projects", "")
	if l, _ := m["projects"].([]any); code != 200 || len(l) != 0 {
		t.Fatalf("bob sees ann's projects: %v", m)
	}
}

func TestBadInput(t *testing.T) {
	f := newFixture(t)
	if code, _, raw := f.do(t, f.ann, "POST", "/api/v1/projects", appBody); code != 201 {
		t.Fatalf("setup: %s", raw)
	}
	_, m, _ := f.do(t, f.ann, "POST", "/api/v1/projects/app/builds", `{"branch":"main"}`)
	buildPath := fmt.Sprintf("/api/v1/builds/%d", int64(m["id"].(float64)))
	big := `{"name":"x","repo":"` + strings.Repeat("a", 5000) + `"}`
	cases := []struct {
		name, token, method, path, body string
		status                          int
		code, mention                   string
	}{
		{"no token", "", "GET", "/api/v1/projects", "", 401, "unauthorized", "Authorization"},
		{"bad scheme", "x", "GET", "/api/v1/projects", "", 401, "unauthorized", ""},
		{"revoked-looking token", "bb_0000", "GET", "/api/v1/projects", "", 401, "unauthorized", "invalid"},
		{"malformed json", f.ann, "POST", "/api/v1/projects", `{"name":`, 400, "invalid_json", ""},
		{"syntax error", f.ann, "POST", "/api/v1/projects", `{"name" "x"}`, 400, "invalid_json", "byte"},
		{"unknown field", f.ann, "POST", "/api/v1/projects", `{"name":"x","repo":"/r","colour":"red"}`, 400, "unknown_field", "colour"},
		{"wrong type", f.ann, "POST", "/api/v1/projects", `{"name":"x","repo":5}`, 400, "invalid_field", "repo"},
		{"missing repo", f.ann, "POST", "/api/v1/projects", `{"name":"x"}`, 400, "invalid_field", "repo"},
		{"bad name", f.ann, "POST", "/api/v1/projects", `{"name":"../etc","repo":"/r"}`, 400, "invalid_field", "name"},
		{"bad timeout", f.ann, "POST", "/api/v1/projects", `{"name":"x","repo":"/r","timeout":"soon"}`, 400, "invalid_field", "timeout"},
		{"bad branch glob", f.ann, "PATCH", "/api/v1/projects/app", `{"settings":{"branches":{"include":["[bad"]}}}`, 400, "invalid_field", "settings.branches"},
		{"empty step", f.ann, "POST", "/api/v1/projects", `{"name":"x","repo":"/r","steps":[{"name":"a"}]}`, 400, "invalid_field", "steps[0].run"},
		{"two objects", f.ann, "POST", "/api/v1/projects", `{"name":"x","repo":"/r"}{}`, 400, "invalid_json", ""},
		{"oversized", f.ann, "POST", "/api/v1/projects", big, 413, "body_too_large", "4096"},
		{"duplicate", f.ann, "POST", "/api/v1/projects", appBody, 409, "conflict", "app"},
		{"another user's project", f.bob, "GET", "/api/v1/projects/app", "", 404, "not_found", "app"},
		{"another user's trigger", f.bob, "POST", "/api/v1/projects/app/builds", `{}`, 404, "not_found", ""},
		{"another user's build", f.bob, "GET", buildPath, "", 404, "not_found", ""},
		{"another user's cancel", f.bob, "POST", buildPath + "/cancel", "", 404, "not_found", ""},
		{"unknown branch", f.ann, "POST", "/api/v1/projects/app/builds", `{"branch":"nope"}`, 422, "ref_not_found", "nope"},
		{"option-like branch", f.ann, "POST", "/api/v1/projects/app/builds", `{"branch":"--upload-pack=x"}`, 400, "invalid_field", "branch"},
		{"bad sha", f.ann, "POST", "/api/v1/projects/app/builds", `{"ref":"refs/heads/main","sha":"zz"}`, 400, "invalid_field", "sha"},
		{"ref without sha", f.ann, "POST", "/api/v1/projects/app/builds", `{"ref":"refs/heads/main"}`, 400, "invalid_field", "sha"},
		{"bad build id", f.ann, "GET", "/api/v1/builds/abc", "", 400, "invalid_id", ""},
		{"unknown build", f.ann, "GET", "/api/v1/builds/999", "", 404, "not_found", "999"},
		{"bad state filter", f.ann, "GET", "/api/v1/projects/app/builds?state=DONE", "", 400, "invalid_query", "state"},
		{"bad log offset", f.ann, "GET", buildPath + "/log?offset=-1", "", 400, "invalid_query", "offset"},
		{"traversal", f.ann, "GET", buildPath + "/artifacts/../../../etc/passwd", "", 400, "invalid_path", ""},
		{"encoded traversal", f.ann, "GET", buildPath + "/artifacts/a/%2e%2e/%2e%2e/x", "", 400, "invalid_path", ""},
		{"unknown artifact", f.ann, "GET", buildPath + "/artifacts/nope.txt", "", 404, "not_found", ""},
		{"no such endpoint", f.ann, "GET", "/api/v1/nothing", "", 404, "not_found", ""},
		{"wrong method", f.ann, "PUT", "/api/v1/projects", "", 405, "method_not_allowed", ""},
	}
	before, _ := f.store.ListProjects(context.Background(), 0)
	for _, c := range cases {
		code, m, raw := f.do(t, c.token, c.method, c.path, c.body)
		if code != c.status || errCode(m) != c.code || !strings.Contains(raw, c.mention) {
			t.Errorf("%s: got %d %s; want %d %s mentioning %q", c.name, code, raw, c.status, c.code, c.mention)
		}
	}
	after, _ := f.store.ListProjects(context.Background(), 0)
	if len(after) != len(before) {
		t.Fatalf("bad input changed the projects: %d → %d", len(before), len(after))
	}
	if list, _ := f.store.ListBuilds(context.Background(), store.BuildFilter{}); len(list) != 1 {
		t.Fatalf("bad input queued builds: %d", len(list))
	}
}

func TestLogAndArtifacts(t *testing.T) {
	f := newFixture(t)
	f.do(t, f.ann, "POST", "/api/v1/projects", appBody)
	_, m, _ := f.do(t, f.ann, "POST", "/api/v1/projects/app/builds", `{}`)
	id := int64(m["id"].(float64))
	ctx := context.Background()
	f.store.AppendLog(ctx, id, []byte("line one\n"))
	f.store.AppendLog(ctx, id, []byte("line two\n"))
	req, _ := http.NewRequest("GET", fmt.Sprintf("%s/api/v1/builds/%d/log?offset=5", f.srv.URL, id), nil)
	req.Header.Set("Authorization", "Bearer "+f.ann)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "one\nline two\n" || resp.Header.Get("X-Log-Next-Offset") != "18" {
		t.Fatalf("log: %q next %s", body, resp.Header.Get("X-Log-Next-Offset"))
	}
	dir := filepath.Join(f.artifacts, fmt.Sprint(id), "out")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "report.html"), []byte("<script>x</script>"), 0o644)
	os.WriteFile(filepath.Join(f.artifacts, "secret.txt"), []byte("secret"), 0o644)
	os.Symlink(filepath.Join(f.artifacts, "secret.txt"), filepath.Join(dir, "link.txt"))
	f.store.AddArtifacts(ctx, id, []store.Artifact{{Path: "out/report.html", Size: 18, SHA256: "s"}, {Path: "out/link.txt", Size: 6, SHA256: "t"}})
	code, m, _ := f.do(t, f.ann, "GET", fmt.Sprintf("/api/v1/builds/%d/artifacts", id), "")
	if l, _ := m["artifacts"].([]any); code != 200 || len(l) != 2 {
		t.Fatalf("artifact list: %v", m)
	}
	req, _ = http.NewRequest("GET", fmt.Sprintf("%s/api/v1/builds/%d/artifacts/out/report.html", f.srv.URL, id), nil)
	req.Header.Set("Authorization", "Bearer "+f.ann)
	resp, _ = http.DefaultClient.Do(req)
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(body, []byte("<script>x</script>")) || resp.Header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("download: %d %q %s", resp.StatusCode, body, resp.Header.Get("Content-Type"))
	}
	code, _, raw := f.do(t, f.ann, "GET", fmt.Sprintf("/api/v1/builds/%d/artifacts/out/link.txt", id), "")
	if code == 200 || strings.Contains(raw, "secret") {
		t.Fatalf("symlink out of the build directory served: %d %s", code, raw)
	}
	if code, _, _ := f.do(t, f.bob, "GET", fmt.Sprintf("/api/v1/builds/%d/artifacts/out/report.html", id), ""); code != 404 {
		t.Fatalf("bob downloads ann's artifact: %d", code)
	}
	// Recorded, but uploaded to a node whose directory this one lacks.
	_, m, _ = f.do(t, f.ann, "POST", "/api/v1/projects/app/builds", `{}`)
	other := int64(m["id"].(float64))
	f.store.AddArtifacts(ctx, other, []store.Artifact{{Path: "elsewhere.txt", Size: 1, SHA256: "u"}})
	code, _, raw = f.do(t, f.ann, "GET", fmt.Sprintf("/api/v1/builds/%d/artifacts/elsewhere.txt", other), "")
	if code != 404 || !strings.Contains(raw, "artifacts_dir") {
		t.Fatalf("artifact of another node's directory: %d %s", code, raw)
	}
}
