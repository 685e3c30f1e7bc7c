package slack

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/builds/runner"
	"github.com/buildbridge/buildbridge/sinks/slack/slacktest"
	"github.com/buildbridge/buildbridge/store"
)

const secret = "8f742231b10e8888abcd99yyyzzz85a5"

type wakes struct{ n atomic.Int64 }

func (w *wakes) Wake() { w.n.Add(1) }

// env is a store with users and a project on a real git repository, the
// source's endpoints on a loopback server, and a fake Slack for response
// URLs and users.info.
type env struct {
	t     *testing.T
	db    *store.DB
	h     *Handler
	srv   *httptest.Server
	slack *slacktest.Server
	wakes *wakes
	ann   store.User
	app   builds.Project
	sha   string
}

func gitRun(t *testing.T, dir string, args ...string) string {
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

func newEnv(t *testing.T, mutate func(*Config)) *env {
	t.Helper()
	e := &env{t: t, wakes: &wakes{}, slack: slacktest.NewServer("xoxb-source")}
	t.Cleanup(e.slack.Close)
	root := t.TempDir()
	bare, work := filepath.Join(root, "repo.git"), filepath.Join(root, "work")
	gitRun(t, root, "init", "--bare", "-q", bare)
	gitRun(t, root, "clone", "-q", bare, work)
	gitRun(t, work, "commit", "-q", "--allow-empty", "-m", "First commit")
	gitRun(t, work, "push", "-q", "origin", "main")
	e.sha = gitRun(t, work, "rev-parse", "HEAD")

	var err error
	e.db, err = store.Open(context.Background(), store.Config{DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.db.Close() })
	ctx := context.Background()
	if e.ann, err = e.db.CreateUser(ctx, "ann", false); err != nil {
		t.Fatal(err)
	}
	bob, _ := e.db.CreateUser(ctx, "bob", false)
	if _, err := e.db.CreateUser(ctx, "root", true); err != nil {
		t.Fatal(err)
	}
	if e.app, err = e.db.CreateProject(ctx, builds.Project{Name: "app", OwnerID: e.ann.ID, Repo: bare, DefaultBranch: "main"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.CreateProject(ctx, builds.Project{Name: "bobs", OwnerID: bob.ID, Repo: bare, DefaultBranch: "main"}); err != nil {
		t.Fatal(err)
	}
	cfg := Config{SigningSecret: secret, Users: map[string]string{"U0ANN": "ann", "U0ROOT": "root", "U0GHOST": "ghost"},
		APIURL: e.slack.APIURL(), BuildURL: "https://ci.example.com/builds/", Store: e.db, Scheduler: e.wakes,
		Resolve: func(ctx context.Context, repo, ref string) (Commit, error) {
			c, err := runner.ResolveCommit(ctx, "git", repo, ref)
			return Commit{SHA: c.SHA, Ref: c.Ref, Branch: c.Branch, Author: c.Author, AuthorEmail: c.AuthorEmail, Message: c.Message}, err
		},
		Logger: slog.New(slog.DiscardHandler)}
	if mutate != nil {
		mutate(&cfg)
	}
	e.h, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/slack/commands", e.h.ServeCommands)
	mux.HandleFunc("/slack/interactions", e.h.ServeInteractions)
	e.srv = httptest.NewServer(mux)
	t.Cleanup(func() { e.srv.Close(); e.h.Close() })
	return e
}

// signed makes a request as Slack signs it, at ts.
func (e *env) signed(path string, body string, ts time.Time) *http.Request {
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Slack-Request-Timestamp", strconv.FormatInt(ts.Unix(), 10))
	req.Header.Set("X-Slack-Signature", Sign(secret, ts, []byte(body)))
	return req
}

func (e *env) do(req *http.Request) (int, map[string]any, string) {
	e.t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	json.Unmarshal(raw, &m)
	return resp.StatusCode, m, string(raw)
}

// triggers numbers requests: Slack gives each its own trigger id, so no
// two bodies are the same.
var triggers atomic.Int64

func commandBody(user, text, responseURL string) string {
	return url.Values{"command": {"/buildbridge"}, "text": {text}, "user_id": {user}, "user_name": {"someone"},
		"channel_id": {"C0001"}, "team_id": {"T0001"}, "response_url": {responseURL},
		"trigger_id": {"13345224609.738474920." + strconv.FormatInt(triggers.Add(1), 10)}}.Encode()
}

// command sends a signed command and returns the answer's text.
func (e *env) command(user, text string) (string, string) {
	e.t.Helper()
	code, m, raw := e.do(e.signed("/slack/commands", commandBody(user, text, e.slack.ResponseURL("c1")), time.Now()))
	if code != 200 {
		e.t.Fatalf("%s: %d %s", text, code, raw)
	}
	s, _ := m["text"].(string)
	t, _ := m["response_type"].(string)
	return s, t
}

func (e *env) builds() []builds.Build {
	list, err := e.db.ListBuilds(context.Background(), store.BuildFilter{Limit: 100})
	if err != nil {
		e.t.Fatal(err)
	}
	return list
}

// TestSignedRequests: a valid command runs; tampered, stale, replayed,
// unsigned and otherwise signed requests are refused and run nothing.
func TestSignedRequests(t *testing.T) {
	e := newEnv(t, nil)
	body := commandBody("U0ANN", "build app main", e.slack.ResponseURL("c1"))
	now := time.Now()
	good := e.signed("/slack/commands", body, now)
	code, m, raw := e.do(good)
	if code != 200 || m["response_type"] != "in_channel" || !strings.Contains(m["text"].(string), "<@U0ANN> queued *app* #1 on `main` ("+e.sha[:7]+" First commit) <https://ci.example.com/builds/") {
		t.Fatalf("valid command: %d %s", code, raw)
	}
	bs := e.builds()
	if len(bs) != 1 || bs[0].SHA != e.sha || bs[0].TriggeredBy != e.ann.ID || bs[0].Branch != "main" || bs[0].State != builds.Queued || e.wakes.n.Load() != 1 {
		t.Fatalf("builds %+v, wakes %d", bs, e.wakes.n.Load())
	}

	refuse := func(name string, req *http.Request, status int, code string) {
		t.Helper()
		got, m, raw := e.do(req)
		errObj, _ := m["error"].(map[string]any)
		if got != status || errObj["code"] != code {
			t.Fatalf("%s: %d %s, want %d %s", name, got, raw, status, code)
		}
	}
	// The same request again.
	refuse("replay", e.signed("/slack/commands", body, now), 401, "replayed")
	// Tampered: signed for one body, sent with another.
	tampered := e.signed("/slack/commands", body, time.Now())
	tampered.Body = io.NopCloser(strings.NewReader(strings.Replace(body, "main", "evil", 1)))
	tampered.ContentLength = int64(len(body))
	refuse("tampered body", tampered, 401, "bad_signature")
	other := e.signed("/slack/commands", body, time.Now())
	other.Header.Set("X-Slack-Signature", Sign("another-secret", time.Now(), []byte(body)))
	refuse("other secret", other, 401, "bad_signature")
	shifted := e.signed("/slack/commands", body, time.Now())
	shifted.Header.Set("X-Slack-Request-Timestamp", strconv.FormatInt(time.Now().Unix()+1, 10))
	refuse("timestamp changed", shifted, 401, "bad_signature")
	refuse("stale", e.signed("/slack/commands", body, time.Now().Add(-6*time.Minute)), 401, "stale_request")
	refuse("future", e.signed("/slack/commands", body, time.Now().Add(6*time.Minute)), 401, "stale_request")
	unsigned := e.signed("/slack/commands", body, time.Now())
	unsigned.Header.Del("X-Slack-Signature")
	refuse("unsigned", unsigned, 401, "unsigned")
	garbage := e.signed("/slack/commands", body, time.Now())
	garbage.Header.Set("X-Slack-Signature", "v0=zz")
	refuse("garbage signature", garbage, 401, "bad_signature")
	refuse("interaction replay", func() *http.Request {
		r := e.signed("/slack/interactions", body, now)
		return r
	}(), 401, "replayed")
	big := e.signed("/slack/commands", strings.Repeat("a", 70<<10), time.Now())
	refuse("too large", big, 413, "body_too_large")
	get, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/slack/commands", nil)
	refuse("GET", get, 405, "method_not_allowed")

	if n := len(e.builds()); n != 1 || e.wakes.n.Load() != 1 {
		t.Fatalf("refused requests ran something: %d builds, %d wakes", n, e.wakes.n.Load())
	}
}

// TestUsersAndProjects: unmapped users, users mapped to nobody and
// projects the user cannot see get an ephemeral error; nothing runs.
func TestUsersAndProjects(t *testing.T) {
	e := newEnv(t, nil)
	for _, c := range []struct{ user, text, says string }{
		{"U0STRANGER", "build app", "is not linked to a buildbridge user"},
		{"U0GHOST", "build app", "buildbridge user \"ghost\", which does not exist"},
		{"U0ANN", "build bobs", "Project `bobs` not found"},
		{"U0ANN", "status bobs", "Project `bobs` not found"},
		{"U0ANN", "build nope", "Project `nope` not found"},
		{"U0ANN", "build app no-such-branch", "Cannot build `no-such-branch` of *app*"},
		{"U0ANN", "build app ../x", "is not a valid branch name"},
		{"U0ANN", "build app --upload-pack=x", "is not a valid branch name"},
		{"U0ANN", "deploy app", "Unknown command `deploy`"},
		{"U0ANN", "build", "Usage"},
		{"U0ANN", "", "*/buildbridge build PROJECT [BRANCH]* queues a build"},
		{"U0ANN", "help", "*/buildbridge status PROJECT*"},
	} {
		text, typ := e.command(c.user, c.text)
		if typ != "ephemeral" || !strings.Contains(text, c.says) {
			t.Errorf("%s %q: %s %q", c.user, c.text, typ, text)
		}
	}
	if n := len(e.builds()); n != 0 {
		t.Fatalf("%d builds ran", n)
	}
	// An admin sees every project; the default branch is the project's.
	text, typ := e.command("U0ROOT", "build bobs")
	if typ != "in_channel" || !strings.Contains(text, "queued *bobs* #1 on `main`") {
		t.Fatalf("admin: %s %q", typ, text)
	}
	text, _ = e.command("U0ANN", "status app")
	if !strings.Contains(text, "*app* has no builds yet") {
		t.Fatalf("status: %q", text)
	}
	e.command("U0ANN", "build app")
	text, _ = e.command("U0ANN", "status app")
	if !strings.Contains(text, "Latest builds of *app*:\n⏳ #1 `main` queued "+e.sha[:7]+" First commit <https://ci.example.com/builds/") {
		t.Fatalf("status: %q", text)
	}
}

// TestEmailMapping maps a Slack user by email, looked up with users.info.
func TestEmailMapping(t *testing.T) {
	var e *env
	e = newEnv(t, func(c *Config) {
		c.Users = map[string]string{"Ann@Example.com": "ann"}
		c.BotToken = "xoxb-source"
	})
	e.slack.AddUser(slacktest.User{ID: "U0SOMEONE", Name: "ann", Email: "ann@example.com"})
	for range 2 {
		if text, typ := e.command("U0SOMEONE", "build app"); typ != "in_channel" || !strings.Contains(text, "queued *app*") {
			t.Fatalf("mapped by email: %s %q", typ, text)
		}
	}
	if n := e.slack.Count("users.info"); n != 1 {
		t.Fatalf("users.info called %d times", n)
	}
	if text, _ := e.command("U0NOBODY", "build app"); !strings.Contains(text, "not linked") {
		t.Fatalf("unknown member: %q", text)
	}
	if _, err := New(Config{SigningSecret: "x", Users: map[string]string{"a@b.c": "ann"}, Store: e.db, Scheduler: e.wakes,
		Resolve: func(context.Context, string, string) (Commit, error) { return Commit{}, nil }}); err == nil || !strings.Contains(err.Error(), "BotToken") {
		t.Fatalf("email key without a bot token: %v", err)
	}
}

func interaction(user, actionID, value, responseURL string) string {
	payload, _ := json.Marshal(map[string]any{
		"type": "block_actions", "user": map[string]any{"id": user, "username": "someone", "team_id": "T0001"},
		"api_app_id": "A0001", "trigger_id": "1.2." + strconv.FormatInt(triggers.Add(1), 10), "response_url": responseURL,
		"container": map[string]any{"type": "message_attachment", "message_ts": "1700000000.000100", "channel_id": "C0001"},
		"channel":   map[string]any{"id": "C0001", "name": "builds"},
		"actions": []map[string]any{{"action_id": actionID, "block_id": "buildbridge_actions", "value": value,
			"type": "button", "action_ts": "1700000001.000200", "text": map[string]any{"type": "plain_text", "text": "Rebuild"}}},
	})
	return url.Values{"payload": {string(payload)}}.Encode()
}

func (e *env) waitResponses(n int) []slacktest.Response {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if r := e.slack.Responses(); len(r) >= n {
			return r
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%d responses, want %d", len(e.slack.Responses()), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRebuildButton: the button's payload rebuilds the same commit for a
// mapped user; an unmapped user gets an ephemeral error.
func TestRebuildButton(t *testing.T) {
	e := newEnv(t, nil)
	e.command("U0ANN", "build app")
	first := e.builds()[0]
	post := func(user, action, value, respURL string) {
		t.Helper()
		code, _, raw := e.do(e.signed("/slack/interactions", interaction(user, action, value, respURL), time.Now()))
		if code != 200 || raw != "" {
			t.Fatalf("interaction: %d %q", code, raw)
		}
	}
	post("U0ANN", RebuildActionID, strconv.FormatInt(first.ID, 10), e.slack.ResponseURL("r1"))
	r := e.waitResponses(1)[0]
	if r.ID != "r1" || r.ResponseType != "in_channel" || !strings.Contains(r.Text, "<@U0ANN> rebuilt *app* #1 as #2") {
		t.Fatalf("response: %+v", r)
	}
	bs := e.builds()
	if len(bs) != 2 || bs[0].SHA != first.SHA || bs[0].Ref != first.Ref || bs[0].TriggeredBy != e.ann.ID {
		t.Fatalf("rebuild: %+v", bs)
	}

	post("U0STRANGER", RebuildActionID, strconv.FormatInt(first.ID, 10), e.slack.ResponseURL("r2"))
	r = e.waitResponses(2)[1]
	if r.ResponseType != "ephemeral" || !strings.Contains(r.Text, "not linked") {
		t.Fatalf("unmapped: %+v", r)
	}
	post("U0ANN", RebuildActionID, "999", e.slack.ResponseURL("r3"))
	if r = e.waitResponses(3)[2]; !strings.Contains(r.Text, "Build 999 not found") {
		t.Fatalf("unknown build: %+v", r)
	}
	// Another button needs nothing; a response URL that is not Slack's
	// is not followed.
	post("U0ANN", "buildbridge_open", "", e.slack.ResponseURL("r4"))
	post("U0ANN", RebuildActionID, strconv.FormatInt(first.ID, 10), "http://192.0.2.1/steal")
	time.Sleep(200 * time.Millisecond)
	if n := len(e.slack.Responses()); n != 3 {
		t.Fatalf("%d responses", n)
	}
	code, m, _ := e.do(e.signed("/slack/interactions", "payload=%7Bnot+json", time.Now()))
	if code != 400 || m["error"].(map[string]any)["code"] != "bad_payload" {
		t.Fatalf("bad payload: %d %v", code, m)
	}
	if n := len(e.builds()); n != 3 {
		t.Fatalf("%d builds, want 3", n)
	}
	if p := e.slack.Problems(); len(p) > 0 {
		t.Fatal(p)
	}
}

// TestSlowCommandAnswersLater: past ReplyWithin, the command answers at
// once and posts its result to the response URL.
func TestSlowCommandAnswersLater(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		resolve := c.Resolve
		c.ReplyWithin = 50 * time.Millisecond
		c.Resolve = func(ctx context.Context, repo, ref string) (Commit, error) {
			time.Sleep(300 * time.Millisecond)
			return resolve(ctx, repo, ref)
		}
	})
	text, typ := e.command("U0ANN", "build app")
	if typ != "ephemeral" || !strings.Contains(text, "Working on it") {
		t.Fatalf("first answer: %s %q", typ, text)
	}
	r := e.waitResponses(1)[0]
	if r.ID != "c1" || !strings.Contains(r.Text, "queued *app* #1") {
		t.Fatalf("later answer: %+v", r)
	}
	// Closed: nothing more runs.
	e.h.Close()
	code, _, _ := e.do(e.signed("/slack/commands", commandBody("U0ANN", "build app", ""), time.Now()))
	if code != 503 {
		t.Fatalf("after Close: %d", code)
	}
}
