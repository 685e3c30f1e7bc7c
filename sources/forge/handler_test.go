package forge

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/sources"
	"github.com/buildbridge/buildbridge/sources/forge/forgetest"
	"github.com/buildbridge/buildbridge/store"
)

// wakes counts Wake calls: the queue's side of the ingester.
type wakes struct{ n atomic.Int64 }

func (w *wakes) Wake() { w.n.Add(1) }

type fixture struct {
	t       *testing.T
	store   *store.DB
	project builds.Project
	srv     *httptest.Server
	reg     *prometheus.Registry
	wakes   *wakes
	now     time.Time
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{t: t, reg: prometheus.NewRegistry(), wakes: &wakes{}, now: time.Now()}
	s, err := store.Open(ctx, store.Config{DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	f.store = s
	u, err := s.CreateUser(ctx, "ann", false)
	if err != nil {
		t.Fatal(err)
	}
	f.project, err = s.CreateProject(ctx, builds.Project{Name: "app", OwnerID: u.ID, Repo: "/r", DefaultBranch: "main",
		Steps: []builds.Step{{Name: "t", Run: "true"}}})
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := sources.NewMetrics(f.reg)
	if err != nil {
		t.Fatal(err)
	}
	ing, err := sources.New(sources.Config{Store: s, Scheduler: f.wakes, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHandler(Config{Projects: s, Ingester: ing, Metrics: metrics, MaxBodyBytes: 64 << 10,
		Logger: slog.New(slog.DiscardHandler), Now: func() time.Time { return f.now }})
	if err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(h)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) rotate(secret string, grace time.Duration) {
	f.t.Helper()
	if _, err := f.store.RotateWebhookSecret(context.Background(), f.project.ID, secret, grace); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) setSettings(s builds.Settings) {
	f.t.Helper()
	p, _ := f.store.ProjectByID(context.Background(), f.project.ID)
	p.Settings = s
	if _, err := f.store.UpdateProject(context.Background(), p); err != nil {
		f.t.Fatal(err)
	}
}

// post sends a delivery and checks the status; it returns the decoded
// answer.
func (f *fixture) post(d forgetest.Delivery, forge, project string, want int) map[string]any {
	f.t.Helper()
	code, body, err := d.Post(f.srv.Client(), f.srv.URL+"/hooks/"+forge+"/"+project)
	if err != nil {
		f.t.Fatal(err)
	}
	if code != want {
		f.t.Fatalf("%s delivery: status %d, want %d: %s", forge, code, want, body)
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		f.t.Fatalf("answer is not JSON: %q", body)
	}
	return m
}

func (f *fixture) builds() []builds.Build {
	f.t.Helper()
	list, err := f.store.ListBuilds(context.Background(), store.BuildFilter{ProjectID: f.project.ID})
	if err != nil {
		f.t.Fatal(err)
	}
	return list
}

func sha(s string) string {
	sum := sha1.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

func errCode(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

// forges describes how to make each forge's push delivery.
var forges = []struct {
	name string
	push func(p forgetest.Push, id, secret string) forgetest.Delivery
	// sigHeader carries the signature or token.
	sigHeader string
	// eventHeader names the event.
	eventHeader string
}{
	{"github", forgetest.GitHubPush, "X-Hub-Signature-256", "X-GitHub-Event"},
	{"gitlab", func(p forgetest.Push, id, secret string) forgetest.Delivery {
		return forgetest.GitLabPush(p, id, secret, "")
	},
		"X-Gitlab-Token", "X-Gitlab-Event"},
	{"gitea", forgetest.GiteaPush, "X-Gitea-Signature", "X-Gitea-Event"},
}

func TestForgeDeliveries(t *testing.T) {
	for _, fg := range forges {
		t.Run(fg.name, func(t *testing.T) {
			f := newFixture(t)
			push := forgetest.Push{Ref: "refs/heads/main", Before: sha("0"), After: sha("1"),
				Message: "Add the README\n\nwith a body", Author: "Ann Author", Email: "ann@example.com", Pusher: "ann"}

			// Without a secret nothing verifies.
			m := f.post(fg.push(push, "d-0", "whatever"), fg.name, "app", http.StatusUnauthorized)
			if errCode(m) != "no_webhook_secret" {
				t.Fatalf("no secret: %v", m)
			}
			f.rotate("s3cret", 0)

			m = f.post(fg.push(push, "d-1", "s3cret"), fg.name, "app", http.StatusOK)
			list := f.builds()
			if len(list) != 1 || m["duplicate"] != false || len(m["builds"].([]any)) != 1 {
				t.Fatalf("signed push: %v, builds %+v", m, list)
			}
			b := list[0]
			if b.SHA != push.After || b.Ref != "refs/heads/main" || b.Branch != "main" || b.Author != "Ann Author" ||
				b.AuthorEmail != "ann@example.com" || b.Message != "Add the README\n\nwith a body" || b.State != builds.Queued {
				t.Fatalf("build: %+v", b)
			}
			pi, _ := f.store.BuildPushInfo(context.Background(), b.ID)
			if pi.Pusher != "ann" || !strings.Contains(pi.CompareURL, "/compare/") {
				t.Fatalf("push info: %+v", pi)
			}
			if f.wakes.n.Load() != 1 {
				t.Fatalf("queue woken %d times", f.wakes.n.Load())
			}

			// A redelivery answers 200 and builds nothing.
			m = f.post(fg.push(push, "d-1", "s3cret"), fg.name, "app", http.StatusOK)
			if m["duplicate"] != true || len(f.builds()) != 1 {
				t.Fatalf("replay: %v", m)
			}

			// Unsigned, tampered, wrongly signed: 401 and nothing recorded.
			f.post(fg.push(push, "d-2", ""), fg.name, "app", http.StatusUnauthorized)
			good := fg.push(push, "d-3", "s3cret")
			// GitLab signs nothing: its token is the secret itself, so
			// tampering shows in the token only.
			tampered := good.WithBody([]byte(strings.Replace(string(good.Body), "Add the README", "Add the READMf", 1)))
			if fg.name == "gitlab" {
				tampered = good.With(fg.sigHeader, "s3cres")
			}
			m = f.post(tampered, fg.name, "app", http.StatusUnauthorized)
			if errCode(m) != "invalid_signature" {
				t.Fatalf("tampered: %v", m)
			}
			f.post(fg.push(push, "d-4", "other"), fg.name, "app", http.StatusUnauthorized)
			f.post(good.With(fg.sigHeader, "garbage"), fg.name, "app", http.StatusUnauthorized)
			if n := len(f.builds()); n != 1 {
				t.Fatalf("%d builds after refused deliveries", n)
			}
			// A refused delivery was not recorded: sent right, it builds.
			f.post(good, fg.name, "app", http.StatusOK)
			if n := len(f.builds()); n != 2 {
				t.Fatalf("%d builds after the good copy of a tampered delivery", n)
			}

			// An unknown event is accepted and ignored, with a reason.
			m = f.post(fg.push(push, "d-5", "s3cret").With(fg.eventHeader, "Issue Hook"), fg.name, "app", http.StatusAccepted)
			if m["ignored"] != true || !strings.Contains(m["reason"].(string), "Issue Hook") {
				t.Fatalf("unknown event: %v", m)
			}

			// A deleted branch and a [skip ci] commit build nothing.
			del := push
			del.After = forgetest.ZeroSHA
			m = f.post(fg.push(del, "d-6", "s3cret"), fg.name, "app", http.StatusOK)
			if len(m["builds"].([]any)) != 0 || m["skipped"].([]any)[0].(map[string]any)["reason"] != sources.SkipDeleted {
				t.Fatalf("deleted branch: %v", m)
			}
			skip := push
			skip.After, skip.Message = sha("2"), "WIP [skip ci]"
			m = f.post(fg.push(skip, "d-7", "s3cret"), fg.name, "app", http.StatusOK)
			if len(m["builds"].([]any)) != 0 || m["skipped"].([]any)[0].(map[string]any)["reason"] != sources.SkipCI {
				t.Fatalf("[skip ci]: %v", m)
			}

			// Bad input.
			f.post(fg.push(push, "d-8", "s3cret"), fg.name, "nope", http.StatusNotFound)
			big := strings.Repeat("x", 70<<10)
			f.post(good.WithBody([]byte(big)), fg.name, "app", http.StatusRequestEntityTooLarge)
			bad := fg.push(push, "d-9", "s3cret").WithBody([]byte(`{"ref": "refs/heads/main", "before": `))
			bad = resign(bad, fg.sigHeader, "s3cret")
			m = f.post(bad, fg.name, "app", http.StatusBadRequest)
			if !strings.Contains(m["error"].(map[string]any)["message"].(string), "JSON") {
				t.Fatalf("malformed JSON: %v", m)
			}
			noSHA := resign(fg.push(push, "d-10", "s3cret").WithBody([]byte(strings.Replace(string(good.Body), push.After, "HEAD", -1))), fg.sigHeader, "s3cret")
			m = f.post(noSHA, fg.name, "app", http.StatusBadRequest)
			if !strings.Contains(m["error"].(map[string]any)["message"].(string), `"after"`) {
				t.Fatalf("bad sha: %v", m)
			}

			// Rotation: the previous secret verifies during the grace period.
			f.rotate("n3w", time.Hour)
			f.post(fg.push(skip, "d-11", "s3cret"), fg.name, "app", http.StatusOK)
			f.post(fg.push(skip, "d-12", "n3w"), fg.name, "app", http.StatusOK)
			f.now = f.now.Add(2 * time.Hour)
			f.post(fg.push(skip, "d-13", "s3cret"), fg.name, "app", http.StatusUnauthorized)
			f.post(fg.push(skip, "d-14", "n3w"), fg.name, "app", http.StatusOK)

			if n := counter(t, f.reg, fg.name, "refused", "bad_signature"); n < 3 {
				t.Fatalf("bad_signature counted %v times", n)
			}
			if n := counter(t, f.reg, fg.name, "ignored", "unknown_event"); n != 1 {
				t.Fatalf("unknown_event counted %v times", n)
			}
		})
	}
}

// resign signs a delivery's (new) body again.
func resign(d forgetest.Delivery, header, secret string) forgetest.Delivery {
	switch header {
	case "X-Hub-Signature-256":
		return d.With(header, "sha256="+forgetest.HMAC(secret, d.Body))
	case "X-Gitea-Signature":
		return d.With(header, forgetest.HMAC(secret, d.Body))
	}
	return d
}

// counter reads buildbridge_source_requests_total for one label set.
func counter(t *testing.T, reg *prometheus.Registry, source, outcome, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "buildbridge_source_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["source"] == source && labels["outcome"] == outcome && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestGitHubSpecifics(t *testing.T) {
	f := newFixture(t)
	f.rotate("k", 0)
	m := f.post(forgetest.GitHubPing("p-1", "k"), "github", "app", http.StatusOK)
	if m["ok"] != true {
		t.Fatalf("ping: %v", m)
	}
	f.post(forgetest.GitHubPing("p-2", "wrong"), "github", "app", http.StatusUnauthorized)

	// Form-encoded deliveries carry the JSON in "payload"; the signature
	// covers the form body.
	d := forgetest.GitHubPush(forgetest.Push{Ref: "refs/heads/dev", After: sha("f"), Message: "form", Author: "A", Email: "a@x"}, "f-1", "")
	form := []byte("payload=" + url.QueryEscape(string(d.Body)))
	d = d.WithBody(form).With("Content-Type", "application/x-www-form-urlencoded").With("X-Hub-Signature-256", "sha256="+forgetest.HMAC("k", form))
	m = f.post(d, "github", "app", http.StatusOK)
	if len(m["builds"].([]any)) != 1 || f.builds()[0].Message != "form" || f.builds()[0].Branch != "dev" {
		t.Fatalf("form delivery: %v", m)
	}

	// A missing event header is a bad request; another method is refused.
	f.post(forgetest.GitHubPing("p-3", "k").With("X-GitHub-Event", ""), "github", "app", http.StatusBadRequest)
	resp, err := http.Get(f.srv.URL + "/hooks/github/app")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %d", resp.StatusCode)
	}
	f.post(forgetest.GitHubPing("p-4", "k"), "bitbucket", "app", http.StatusNotFound)
}

func TestGitLabTagsAndIdempotencyKey(t *testing.T) {
	f := newFixture(t)
	f.rotate("tok", 0)
	tag := forgetest.Push{Ref: "refs/tags/v1.0", After: sha("t"), Message: "release", Author: "A", Email: "a@x"}
	m := f.post(forgetest.GitLabPush(tag, "u-1", "tok", ""), "gitlab", "app", http.StatusOK)
	if len(m["builds"].([]any)) != 0 || m["skipped"].([]any)[0].(map[string]any)["reason"] != sources.SkipTag {
		t.Fatalf("tag without build_tags: %v", m)
	}
	f.setSettings(builds.Settings{BuildTags: true})
	m = f.post(forgetest.GitLabPush(tag, "u-2", "tok", ""), "gitlab", "app", http.StatusOK)
	if b := f.builds(); len(b) != 1 || b[0].Ref != "refs/tags/v1.0" || b[0].Branch != "" || b[0].SHA != tag.After {
		t.Fatalf("tag build: %v %+v", m, b)
	}
	// A Tag Push Hook header with a push payload is refused.
	d := forgetest.GitLabPush(forgetest.Push{Ref: "refs/heads/main", After: sha("x")}, "u-3", "tok", "").With("X-Gitlab-Event", "Tag Push Hook")
	f.post(d, "gitlab", "app", http.StatusBadRequest)

	// A retry keeps its Idempotency-Key under a new event UUID.
	push := forgetest.Push{Ref: "refs/heads/main", After: sha("m"), Message: "m", Author: "A", Email: "a@x"}
	f.post(forgetest.GitLabPush(push, "u-4", "tok", "key-1"), "gitlab", "app", http.StatusOK)
	m = f.post(forgetest.GitLabPush(push, "u-5", "tok", "key-1"), "gitlab", "app", http.StatusOK)
	if m["duplicate"] != true || len(f.builds()) != 2 {
		t.Fatalf("retry with the same Idempotency-Key: %v", m)
	}
}

func TestBranchFiltersAndSupersede(t *testing.T) {
	f := newFixture(t)
	f.rotate("k", 0)
	f.setSettings(builds.Settings{Branches: builds.BranchFilter{Include: []string{"main", "release/*"}, Exclude: []string{"release/old*"}},
		SupersedeQueued: true})
	send := func(id, ref, after string) map[string]any {
		return f.post(forgetest.GiteaPush(forgetest.Push{Ref: ref, After: after, Message: id}, id, "k"), "gitea", "app", http.StatusOK)
	}
	for _, tc := range []struct{ ref, want string }{
		{"refs/heads/feature", sources.SkipBranchFilter},
		{"refs/heads/release/old-1", sources.SkipBranchFilter},
		{"refs/notes/commits", sources.SkipOtherRef},
	} {
		m := send("x"+tc.ref, tc.ref, sha(tc.ref))
		if len(m["builds"].([]any)) != 0 || m["skipped"].([]any)[0].(map[string]any)["reason"] != tc.want {
			t.Errorf("%s: %v", tc.ref, m)
		}
	}
	first := send("a", "refs/heads/release/2", sha("a"))
	other := send("b", "refs/heads/main", sha("b"))
	second := send("c", "refs/heads/release/2", sha("c"))
	if sup, _ := second["superseded"].([]any); len(sup) != 1 || sup[0] != first["builds"].([]any)[0].(map[string]any)["id"] {
		t.Fatalf("superseded: %v (first %v)", second, first)
	}
	ctx := context.Background()
	b, _ := f.store.Build(ctx, int64(first["builds"].([]any)[0].(map[string]any)["id"].(float64)))
	if b.State != builds.Finished || b.Result != builds.Canceled || !strings.Contains(b.Reason, "superseded") {
		t.Fatalf("first build: %+v", b)
	}
	o, _ := f.store.Build(ctx, int64(other["builds"].([]any)[0].(map[string]any)["id"].(float64)))
	if o.State != builds.Queued {
		t.Fatalf("another branch's build was touched: %+v", o)
	}
}
