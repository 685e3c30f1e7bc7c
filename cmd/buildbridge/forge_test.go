package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/sources/forge/forgetest"
)

// deliver posts a webhook delivery and checks the status.
func deliver(t *testing.T, base, forge, project string, d forgetest.Delivery, want int) map[string]any {
	t.Helper()
	code, body, err := d.Post(nil, base+"/hooks/"+forge+"/"+project)
	if err != nil {
		t.Fatal(err)
	}
	if code != want {
		t.Fatalf("%s delivery to %s: status %d, want %d: %s", forge, project, code, want, body)
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("answer is not JSON: %q", body)
	}
	return m
}

// TestForgeWebhooksEndToEnd sends GitHub, GitLab and Gitea deliveries,
// written in each forge's documented format, to a real `buildbridge
// serve`: signed pushes build the pushed commit with its metadata;
// unsigned, tampered and wrongly signed ones are refused with 401 and
// leave nothing but a counter and a log line; replays, unknown events,
// deleted branches and [skip ci] commits build nothing.
func TestForgeWebhooksEndToEnd(t *testing.T) {
	data := t.TempDir()
	token := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--data", data))
	logs := newEventLog()
	p := startServer(t, data, freeAddr(t), logs, "--concurrency", "1")
	c := client{base: "http://" + p.addr, token: token}
	repo := newTestRepo(t)
	sha := repo.commit(t, "main", "first commit", map[string]string{".buildbridge.yml": "steps:\n  - name: ok\n    run: echo ok\n"})
	c.mustCall(t, 201, "POST", "/api/v1/projects", map[string]any{"name": "app", "repo": repo.bare})

	// Before any secret is made, nothing verifies.
	deliver(t, c.base, "github", "app", forgetest.GitHubPush(forgetest.Push{Ref: "refs/heads/main", After: sha}, "d-0", "guess"), 401)
	sec := c.mustCall(t, 201, "POST", "/api/v1/projects/app/webhook-secret", nil)
	secret, _ := sec["secret"].(string)
	if !strings.HasPrefix(secret, "bbwh_") || sec["webhook_urls"].(map[string]any)["gitea"] != c.base+"/hooks/gitea/app" {
		t.Fatalf("webhook secret answer: %v", sec)
	}

	type forgeCase struct {
		name     string
		push     func(p forgetest.Push, id, secret string) forgetest.Delivery
		sig      string // header carrying the signature or token
		eventHdr string
	}
	for _, fc := range []forgeCase{
		{"github", forgetest.GitHubPush, "X-Hub-Signature-256", "X-GitHub-Event"},
		{"gitlab", func(p forgetest.Push, id, s string) forgetest.Delivery { return forgetest.GitLabPush(p, id, s, "") }, "X-Gitlab-Token", "X-Gitlab-Event"},
		{"gitea", forgetest.GiteaPush, "X-Gitea-Signature", "X-Gitea-Event"},
	} {
		t.Run(fc.name, func(t *testing.T) {
			id := func(n int) string { return fmt.Sprintf("%s-%d", fc.name, n) }
			push := forgetest.Push{Ref: "refs/heads/main", Before: forgetest.ZeroSHA, After: sha,
				Message: "first commit from " + fc.name, Author: "Ann Author", Email: "ann@example.com", Pusher: "ann"}
			before := len(projectBuilds(t, c, "app"))

			m := deliver(t, c.base, fc.name, "app", fc.push(push, id(1), secret), 200)
			bl := m["builds"].([]any)
			if len(bl) != 1 {
				t.Fatalf("signed push: %v", m)
			}
			bid := int64(bl[0].(map[string]any)["id"].(float64))
			evs := logs.waitFinished(t, bid, 30*time.Second)
			assertStates(t, evs, "passed", "passed")
			if b := evs[0].Build; b.SHA != sha || b.Ref != "refs/heads/main" || b.Author != "Ann Author" ||
				b.AuthorEmail != "ann@example.com" || b.Message != "first commit from "+fc.name {
				t.Fatalf("QUEUED event: %+v", b)
			}
			if b := evs[2].Build; b.Pusher == "" || (fc.name == "github" && b.CompareURL == "") {
				t.Fatalf("push metadata missing from the FINISHED event: compare_url %q pusher %q", b.CompareURL, b.Pusher)
			}

			// Replayed, unsigned, tampered, wrongly signed: nothing built.
			if m := deliver(t, c.base, fc.name, "app", fc.push(push, id(1), secret), 200); m["duplicate"] != true {
				t.Fatalf("replay: %v", m)
			}
			deliver(t, c.base, fc.name, "app", fc.push(push, id(2), ""), 401)
			good := fc.push(push, id(3), secret)
			tampered := good.WithBody([]byte(strings.Replace(string(good.Body), "first commit", "evil commit", 1)))
			if fc.name == "gitlab" {
				tampered = good.With(fc.sig, secret+"x") // GitLab signs nothing; its token is the secret
			}
			deliver(t, c.base, fc.name, "app", tampered, 401)
			deliver(t, c.base, fc.name, "app", fc.push(push, id(4), "bbwh_not-the-secret"), 401)

			// An unknown event is ignored with a reason.
			m = deliver(t, c.base, fc.name, "app", fc.push(push, id(5), secret).With(fc.eventHdr, "Release Hook"), 202)
			if m["ignored"] != true || m["reason"] == "" {
				t.Fatalf("unknown event: %v", m)
			}
			// A deleted branch and a [skip ci] commit build nothing.
			del := push
			del.Ref, del.Before, del.After = "refs/heads/old", sha, forgetest.ZeroSHA
			if m := deliver(t, c.base, fc.name, "app", fc.push(del, id(6), secret), 200); len(m["builds"].([]any)) != 0 {
				t.Fatalf("deleted branch: %v", m)
			}
			skip := push
			skip.Message = "typo [skip ci]"
			if m := deliver(t, c.base, fc.name, "app", fc.push(skip, id(7), secret), 200); len(m["builds"].([]any)) != 0 {
				t.Fatalf("[skip ci]: %v", m)
			}
			if n := len(projectBuilds(t, c, "app")); n != before+1 {
				t.Fatalf("%d builds, want %d", n, before+1)
			}
		})
	}

	// Bad input: unknown project, too large, malformed JSON.
	push := forgetest.Push{Ref: "refs/heads/main", After: sha, Message: "m", Author: "A", Email: "a@x"}
	deliver(t, c.base, "github", "nope", forgetest.GitHubPush(push, "x-1", secret), 404)
	big := []byte(`{"ref":"` + strings.Repeat("x", 6<<20) + `"}`)
	deliver(t, c.base, "github", "app", forgetest.GitHubPush(push, "x-2", secret).WithBody(big), 413)
	bad := []byte(`{"ref":"refs/heads/main",`)
	m := deliver(t, c.base, "gitea", "app", forgetest.GiteaPush(push, "x-3", secret).WithBody(bad).With("X-Gitea-Signature", forgetest.HMAC(secret, bad)), 400)
	if msg := m["error"].(map[string]any)["message"].(string); !strings.Contains(msg, "JSON") {
		t.Fatalf("malformed JSON: %v", m)
	}
	if m := deliver(t, c.base, "github", "app", forgetest.GitHubPing("x-4", secret), 200); m["ok"] != true {
		t.Fatalf("ping: %v", m)
	}

	// Rotation: the old secret works during the grace period, not after a
	// rotation without grace.
	sec = c.mustCall(t, 201, "POST", "/api/v1/projects/app/webhook-secret", map[string]any{"grace": "1h"})
	newSecret := sec["secret"].(string)
	if newSecret == secret || sec["previous_expires_at"] == nil {
		t.Fatalf("rotation: %v", sec)
	}
	skip := push
	skip.Message = "[ci skip]"
	deliver(t, c.base, "github", "app", forgetest.GitHubPush(skip, "r-1", secret), 200)
	deliver(t, c.base, "github", "app", forgetest.GitHubPush(skip, "r-2", newSecret), 200)
	last := c.mustCall(t, 201, "POST", "/api/v1/projects/app/webhook-secret", map[string]any{"grace": 0})["secret"].(string)
	deliver(t, c.base, "github", "app", forgetest.GitHubPush(skip, "r-3", newSecret), 401)
	deliver(t, c.base, "github", "app", forgetest.GitHubPush(skip, "r-4", last), 200)
	c.mustCall(t, 400, "POST", "/api/v1/projects/app/webhook-secret", map[string]any{"grace": "forever"})

	// Superseding: with one runner busy, a newer push to main cancels the
	// build of main still queued.
	c.mustCall(t, 200, "PATCH", "/api/v1/projects/app", map[string]any{"settings": map[string]any{"supersede_queued": true}})
	slow := repo.commit(t, "slow", "slow", map[string]string{".buildbridge.yml": "steps:\n  - name: sleep\n    run: sleep 60\n"})
	m = deliver(t, c.base, "gitea", "app", forgetest.GiteaPush(forgetest.Push{Ref: "refs/heads/slow", After: slow, Message: "slow"}, "s-1", last), 200)
	slowID := int64(m["builds"].([]any)[0].(map[string]any)["id"].(float64))
	logs.waitState(t, slowID, "STARTED", 20*time.Second)
	m1 := deliver(t, c.base, "gitea", "app", forgetest.GiteaPush(forgetest.Push{Ref: "refs/heads/main", After: sha, Message: "one"}, "s-2", last), 200)
	m2 := deliver(t, c.base, "gitea", "app", forgetest.GiteaPush(forgetest.Push{Ref: "refs/heads/main", After: sha, Message: "two"}, "s-3", last), 200)
	firstID := int64(m1["builds"].([]any)[0].(map[string]any)["id"].(float64))
	if sup, _ := m2["superseded"].([]any); len(sup) != 1 || int64(sup[0].(float64)) != firstID {
		t.Fatalf("superseded: %v", m2)
	}
	evs := logs.waitFinished(t, firstID, 10*time.Second)
	if fin := evs[len(evs)-1].Build; fin.Result != "canceled" || !strings.Contains(fin.Reason, "superseded by build") {
		t.Fatalf("superseded build: %+v", fin)
	}
	c.mustCall(t, 202, "POST", fmt.Sprintf("/api/v1/builds/%d/cancel", slowID), nil)
	logs.waitFinished(t, slowID, 15*time.Second)

	// Counters by forge, outcome and reason; the refusals are logged
	// without any secret.
	resp, err := http.Get(c.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`buildbridge_source_requests_total{outcome="refused",reason="bad_signature",source="github"}`,
		`buildbridge_source_requests_total{outcome="refused",reason="missing_signature",source="gitea"}`,
		`buildbridge_source_requests_total{outcome="ignored",reason="unknown_event",source="gitlab"}`,
		`buildbridge_source_requests_total{outcome="accepted",reason="duplicate",source="gitea"}`,
		`buildbridge_source_requests_total{outcome="accepted",reason="built",source="github"}`,
		`buildbridge_source_requests_total{outcome="refused",reason="body_too_large",source="github"}`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	p.stop(t)
	serverLog := p.log()
	if !strings.Contains(serverLog, "webhook refused") {
		t.Fatal("no log line for refused webhooks")
	}
	for _, s := range []string{secret, newSecret, last} {
		if strings.Contains(serverLog, s) || strings.Contains(serverLog, s[len("bbwh_"):]) {
			t.Fatal("a webhook secret is in the server log")
		}
	}
}
