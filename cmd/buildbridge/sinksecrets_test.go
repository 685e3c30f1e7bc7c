package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// recordingReceiver is a loopback webhook receiver that keeps every
// request as it came, for the test to verify with the secrets it
// fetched.
type recordingReceiver struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []hookReq
}

func newRecordingReceiver(t *testing.T) *recordingReceiver {
	r := &recordingReceiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		hr := hookReq{path: req.URL.Path, id: req.Header.Get("webhook-id"), code: 200, header: req.Header.Clone(), body: body}
		json.Unmarshal(body, &hr.ev)
		r.mu.Lock()
		r.reqs = append(r.reqs, hr)
		r.mu.Unlock()
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// waitBuild waits for the three events of a build.
func (r *recordingReceiver) waitBuild(t *testing.T, build int64) []hookReq {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var evs []hookReq
		r.mu.Lock()
		for _, q := range r.reqs {
			if q.ev.Build != nil && q.ev.Build.ID == build {
				evs = append(evs, q)
			}
		}
		r.mu.Unlock()
		if len(evs) >= 3 {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("build %d: %d events received within 30s", build, len(evs))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkSigned fails unless every request carries n signatures and
// verifies, with the standard-webhooks library, with each secret of
// valid and with none of invalid.
func checkSigned(t *testing.T, what string, reqs []hookReq, n int, valid, invalid []string) {
	t.Helper()
	for _, q := range reqs {
		if got := len(strings.Fields(q.header.Get("webhook-signature"))); got != n {
			t.Fatalf("%s: %s carries %d signatures, want %d", what, q.id, got, n)
		}
		for i, sec := range append(append([]string(nil), valid...), invalid...) {
			wh, err := standardwebhooks.NewWebhook(sec)
			if err != nil {
				t.Fatal(err)
			}
			err = wh.Verify(q.body, q.header)
			if i < len(valid) && err != nil {
				t.Fatalf("%s: %s does not verify with secret %d: %v", what, q.id, i, err)
			}
			if i >= len(valid) && err == nil {
				t.Fatalf("%s: %s verifies with a secret that must not sign", what, q.id)
			}
		}
	}
}

// TestGeneratedSinkSecret runs a real server whose rules give a webhook
// sink no secret: `rules check` passes, the server generates a secret and
// logs one line without it, an admin fetches it once through the API,
// the receiver verifies every request with it (also after a restart),
// a rotation sends both signatures during the grace, and a secret put in
// the rules wins.
func TestGeneratedSinkSecret(t *testing.T) {
	data, dir := t.TempDir(), t.TempDir()
	token := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--data", data))
	rootToken := strings.TrimSpace(runCLI(t, "user", "add", "root", "--admin", "--data", data))
	recv := newRecordingReceiver(t)
	noSecret := `sinks:
  deploy:
    type: webhook
    url: ` + recv.srv.URL + `/hook
    retry_schedule: [0s]
routes:
  - name: every build event
    to: [deploy]
`
	rules := writeRules(t, filepath.Join(dir, "rules.yaml"), noSecret)
	if out, err := exec.Command(binPath, "rules", "check", rules).CombinedOutput(); err != nil {
		t.Fatalf("rules check of a webhook without a secret: %v\n%s", err, out)
	}
	t.Setenv("BUILDBRIDGE_DELIVERIES_WEBHOOK_ALLOW", "127.0.0.1")
	t.Setenv("HOOK_SECRET", hookSecret)
	addr := freeAddr(t)
	p := startServer(t, data, addr, newEventLog(), "--rules", rules)
	c := client{base: "http://" + addr, token: token}
	root := client{base: c.base, token: rootToken}
	creation := func(p *serverProc) []string {
		var out []string
		for _, l := range strings.Split(p.log(), "\n") {
			if strings.Contains(l, "no secret in the rules") {
				out = append(out, l)
			}
		}
		return out
	}
	if lines := creation(p); len(lines) != 1 || !strings.Contains(lines[0], `"sink":"deploy"`) ||
		!strings.Contains(lines[0], "POST /api/v1/sinks/deploy/secret") {
		t.Fatalf("creation lines: %q", lines)
	}

	// Admins only; webhook sinks of the rules only.
	if code, _ := c.call(t, "POST", "/api/v1/sinks/deploy/secret", nil); code != 403 {
		t.Fatalf("a user fetched the secret: %d", code)
	}
	if code, m := root.call(t, "POST", "/api/v1/sinks/nowhere/secret", nil); code != 404 {
		t.Fatalf("unknown sink: %d %v", code, m)
	}
	if code, m := root.call(t, "POST", "/api/v1/sinks/deploy/secret", map[string]any{"grace": "forever"}); code != 400 {
		t.Fatalf("bad grace: %d %v", code, m)
	}
	// The first fetch: the secret generated at load, not a new one.
	m := root.mustCall(t, 200, "POST", "/api/v1/sinks/deploy/secret", nil)
	s1, _ := m["secret"].(string)
	if !strings.HasPrefix(s1, "whsec_") || m["rotated"] != false || m["previous_expires_at"] != nil ||
		!strings.Contains(creation(p)[0], m["fingerprint"].(string)) {
		t.Fatalf("first fetch: %v", m)
	}

	repo := newTestRepo(t)
	repo.commit(t, "main", "work", map[string]string{".buildbridge.yml": "steps:\n  - name: a\n    run: \"true\"\n"})
	c.mustCall(t, 201, "POST", "/api/v1/projects", map[string]any{"name": "app", "repo": repo.bare})
	checkSigned(t, "generated", recv.waitBuild(t, triggerBuild(t, c)), 1, []string{s1}, []string{hookSecret})

	// A restart: the same secret, no second creation line.
	p.stop(t)
	addr = freeAddr(t)
	p = startServer(t, data, addr, newEventLog(), "--rules", rules)
	c.base, root.base = "http://"+addr, "http://"+addr
	if lines := creation(p); len(lines) != 0 {
		t.Fatalf("creation lines after a restart: %q", lines)
	}
	checkSigned(t, "after a restart", recv.waitBuild(t, triggerBuild(t, c)), 1, []string{s1}, nil)

	// A rotation: a new secret, the old one signing too during the grace.
	m = root.mustCall(t, 201, "POST", "/api/v1/sinks/deploy/secret", map[string]any{"grace": "1h"})
	s2, _ := m["secret"].(string)
	if !strings.HasPrefix(s2, "whsec_") || s2 == s1 || m["rotated"] != true || m["previous_expires_at"] == nil {
		t.Fatalf("rotation: %v", m)
	}
	checkSigned(t, "during the grace", recv.waitBuild(t, triggerBuild(t, c)), 2, []string{s2, s1}, []string{hookSecret})

	// A rotation without grace: the new secret alone.
	m = root.mustCall(t, 201, "POST", "/api/v1/sinks/deploy/secret", map[string]any{"grace": 0})
	s3, _ := m["secret"].(string)
	checkSigned(t, "no grace", recv.waitBuild(t, triggerBuild(t, c)), 1, []string{s3}, []string{s2, s1})

	// A secret in the rules wins, and is not the API's to rotate.
	writeRules(t, rules, strings.Replace(noSecret, "    retry_schedule", "    secret: ${HOOK_SECRET}\n    retry_schedule", 1))
	root.mustCall(t, 200, "POST", "/api/v1/admin/rules/reload", nil)
	if code, m := root.call(t, "POST", "/api/v1/sinks/deploy/secret", nil); code != 409 || !strings.Contains(m["error"].(map[string]any)["code"].(string), "secret_in_rules") {
		t.Fatalf("rotation of a secret from the rules: %d %v", code, m)
	}
	checkSigned(t, "rules secret", recv.waitBuild(t, triggerBuild(t, c)), 1, []string{hookSecret}, []string{s3})

	// No secret is ever in the log.
	p.stop(t)
	for _, s := range []string{s1, s2, s3} {
		if strings.Contains(p.log(), strings.TrimPrefix(s, "whsec_")) {
			t.Fatal("a generated secret is in the server's log")
		}
	}
}
