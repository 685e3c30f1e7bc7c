package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/store/storetest"
)

// buildScenario drives one hub through the builds every user meets:
// passing with an artifact, failing then fixed, timed out, canceled.
func buildScenario(t *testing.T, c client, logs *eventLog) {
	repo := newTestRepo(t)
	pass := repo.commit(t, "main", "first commit", map[string]string{
		".buildbridge.yml": "steps:\n  - name: build\n    run: mkdir -p out && echo built $BUILDBRIDGE_BUILD_NUMBER > out/result.txt && echo hello from the build\nartifacts: [\"out/*.txt\"]\n",
	})
	c.mustCall(t, 201, "POST", "/api/v1/projects", map[string]any{
		"name": "app", "repo": repo.bare, "default_branch": "main", "timeout": "60s",
		"steps": []map[string]string{{"name": "fallback", "run": "true"}},
	})

	// A passing build, with its log and artifact.
	b := c.mustCall(t, 201, "POST", "/api/v1/projects/app/builds", map[string]any{"branch": "main"})
	if b["state"] != "QUEUED" || b["sha"] != pass {
		t.Fatalf("trigger: %v (want sha %s)", b, pass)
	}
	id := int64(b["id"].(float64))
	evs := logs.waitFinished(t, id, 30*time.Second)
	assertStates(t, evs, "passed", "passed")
	last := evs[len(evs)-1]
	if last.Type != event.TypeBuildStateChanged || last.Build.SHA != pass || last.Build.Author != "Ann Author" ||
		last.Build.Message != "first commit" || last.Build.DurationMS == nil || last.Build.Success == nil || !*last.Build.Success ||
		last.Job == nil || last.Job.Name != "app" || last.Build.URL == "" || last.Build.StartedAt == nil || last.Build.FinishedAt == nil {
		t.Fatalf("FINISHED payload incomplete: %+v build %+v", last, last.Build)
	}
	code, logResp := c.call(t, "GET", fmt.Sprintf("/api/v1/builds/%d/log", id), nil)
	if code != 200 || !strings.Contains(fmt.Sprint(logResp["_raw"]), "hello from the build") {
		t.Fatalf("log: %d %v", code, logResp)
	}
	arts := c.mustCall(t, 200, "GET", fmt.Sprintf("/api/v1/builds/%d/artifacts", id), nil)
	if l, _ := arts["artifacts"].([]any); len(l) != 1 || l[0].(map[string]any)["path"] != "out/result.txt" {
		t.Fatalf("artifacts: %v", arts)
	}
	req, _ := http.NewRequest("GET", fmt.Sprintf("%s/api/v1/builds/%d/artifacts/out/result.txt", c.base, id), nil)
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "built 1\n" {
		t.Fatalf("artifact download: %d %q", resp.StatusCode, body)
	}

	// A failing build on a branch, then a passing one: failed, then fixed.
	repo.commit(t, "feature", "break it", map[string]string{".buildbridge.yml": "steps:\n  - name: test\n    run: echo failing; exit 1\n"})
	b = c.mustCall(t, 201, "POST", "/api/v1/projects/app/builds", map[string]any{"branch": "feature"})
	evs = logs.waitFinished(t, int64(b["id"].(float64)), 30*time.Second)
	assertStates(t, evs, "failed", "failed")
	if r := evs[len(evs)-1].Build.Reason; !strings.Contains(r, "test") {
		t.Fatalf("failure reason %q does not name the step", r)
	}
	repo.commit(t, "feature", "fix it", map[string]string{".buildbridge.yml": "steps:\n  - name: test\n    run: echo ok\n"})
	b = c.mustCall(t, 201, "POST", "/api/v1/projects/app/builds", map[string]any{"branch": "feature"})
	evs = logs.waitFinished(t, int64(b["id"].(float64)), 30*time.Second)
	assertStates(t, evs, "passed", "fixed")
	if p := evs[len(evs)-1].Previous; p == nil || p.Result == nil || *p.Result != "failed" {
		t.Fatalf("previous of the fixing build: %+v", p)
	}

	// A build over its timeout is errored.
	repo.commit(t, "slow", "slow", map[string]string{".buildbridge.yml": "timeout: 1s\nsteps:\n  - name: sleep\n    run: sleep 30\n"})
	b = c.mustCall(t, 201, "POST", "/api/v1/projects/app/builds", map[string]any{"branch": "slow"})
	start := time.Now()
	evs = logs.waitFinished(t, int64(b["id"].(float64)), 20*time.Second)
	assertStates(t, evs, "errored", "errored")
	if r := evs[len(evs)-1].Build.Reason; !strings.Contains(r, "timed out") || time.Since(start) > 15*time.Second {
		t.Fatalf("timeout: reason %q after %s", r, time.Since(start))
	}

	// A running build canceled through the API.
	repo.commit(t, "cancel-me", "long", map[string]string{".buildbridge.yml": "steps:\n  - name: sleep\n    run: sleep 60\n"})
	b = c.mustCall(t, 201, "POST", "/api/v1/projects/app/builds", map[string]any{"branch": "cancel-me"})
	cid := int64(b["id"].(float64))
	logs.waitState(t, cid, "STARTED", 20*time.Second)
	c.mustCall(t, 202, "POST", fmt.Sprintf("/api/v1/builds/%d/cancel", cid), nil)
	evs = logs.waitFinished(t, cid, 15*time.Second)
	assertStates(t, evs, "canceled", "canceled")
}

// assertStates checks a build's events are QUEUED, STARTED, FINISHED in
// seq order with the given result and status at the end.
func assertStates(t *testing.T, evs []event.Envelope, result, status string) {
	t.Helper()
	var states []string
	for _, ev := range evs {
		states = append(states, string(ev.Build.State))
	}
	if strings.Join(states, ",") != "QUEUED,STARTED,FINISHED" {
		t.Fatalf("states %v, want QUEUED,STARTED,FINISHED: %s", states, describe(evs))
	}
	last := evs[2].Build
	if string(last.Result) != result || string(last.Status) != status {
		t.Fatalf("result %s status %s, want %s %s (reason %q)", last.Result, last.Status, result, status, last.Reason)
	}
	if evs[0].Build.Status != "queued" || evs[1].Build.Status != "started" || evs[0].Build.Success != nil {
		t.Fatalf("early statuses: %s", describe(evs))
	}
}

// TestEndToEndInProcess runs the scenario against a hub in this process,
// watching build-state-changed through a consumer on the router.
func TestEndToEndInProcess(t *testing.T) {
	data := t.TempDir()
	token := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--data", data))
	if !strings.HasPrefix(token, "bb_") || strings.Contains(token, "\n") {
		t.Fatalf("user add printed %q, want only the token", token)
	}
	cfg := defaultConfig()
	cfg.Data, cfg.Addr = data, freeAddr(t)
	cfg.BaseURL = "http://" + cfg.Addr
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	h, err := newHub(ctx, cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	logs := newEventLog()
	if err := h.br.AddConsumer("test", func(_ context.Context, ev event.Envelope) error { logs.add(ev); return nil }); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.run(ctx, io.Discard) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("hub stopped with %v", err)
		}
	})
	select {
	case <-h.ready:
	case err := <-done:
		t.Fatalf("hub stopped: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("hub not ready")
	}
	buildScenario(t, client{base: cfg.BaseURL, token: token}, logs)
}

// TestEndToEndSubprocess runs the same scenario against a real
// `buildbridge serve`, reading the events from its JSON log.
func TestEndToEndSubprocess(t *testing.T) {
	data := t.TempDir()
	token := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--data", data))
	logs := newEventLog()
	p := startServer(t, data, freeAddr(t), logs)
	buildScenario(t, client{base: "http://" + p.addr, token: token}, logs)
	p.stop(t)
}

// TestFirstStartPrintsAdminToken checks a fresh data directory gets an
// admin whose token is printed, and a second start prints none.
func TestFirstStartPrintsAdminToken(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	addr := freeAddr(t)
	p := startServer(t, data, addr, newEventLog())
	p.stop(t)
	out := p.stdout.String()
	var token string
	for _, f := range strings.Fields(out) {
		if strings.HasPrefix(f, "bb_") {
			token = f
			break
		}
	}
	if token == "" || !strings.Contains(out, "http://"+addr) {
		t.Fatalf("first start output lacks URL or token:\n%s", out)
	}
	p = startServer(t, data, addr, newEventLog())
	c := client{base: "http://" + addr, token: token}
	if m := c.mustCall(t, 200, "GET", "/api/v1/user", nil); m["name"] != "admin" || m["admin"] != true {
		t.Fatalf("token is not admin's: %v", m)
	}
	p.stop(t)
	if strings.Contains(p.stdout.String(), "bb_") {
		t.Fatalf("second start printed a token:\n%s", p.stdout.String())
	}
}

// TestEndToEndOnPostgresAndExternalNATS runs a build through a `serve`
// that keeps its state in PostgreSQL and uses the external NATS JetStream
// as its bus, each when the test environment names one.
func TestEndToEndOnPostgresAndExternalNATS(t *testing.T) {
	for _, tc := range []struct {
		name string
		args func(t *testing.T) []string
	}{
		{"postgres", func(t *testing.T) []string { return []string{"--postgres", storetest.PostgresDSN(t)} }},
		{"nats", func(t *testing.T) []string {
			return []string{"--nats-url", natsURL(t), "--nats-namespace", uniqueNamespace(t)}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := t.TempDir()
			args := tc.args(t)
			userArgs := []string{"user", "add", "ann", "--data", data}
			if args[0] == "--postgres" {
				userArgs = append(userArgs, args...)
			}
			token := strings.TrimSpace(runCLI(t, userArgs...))
			logs := newEventLog()
			p := startServer(t, data, freeAddr(t), logs, args...)
			c := client{base: "http://" + p.addr, token: token}
			repo := newTestRepo(t)
			repo.commit(t, "main", "c1", map[string]string{".buildbridge.yml": "steps:\n  - name: ok\n    run: echo ok\n"})
			c.mustCall(t, 201, "POST", "/api/v1/projects", map[string]any{"name": "app", "repo": repo.bare})
			b := c.mustCall(t, 201, "POST", "/api/v1/projects/app/builds", nil)
			assertStates(t, logs.waitFinished(t, int64(b["id"].(float64)), 30*time.Second), "passed", "passed")
			p.stop(t)
		})
	}
}

func natsURL(t *testing.T) string {
	u := os.Getenv("BUILDBRIDGE_TEST_NATS")
	if u == "" {
		t.Skip("BUILDBRIDGE_TEST_NATS is not set; skipping the external NATS variant")
	}
	return u
}

// uniqueNamespace names a bus namespace for one test and deletes its
// streams from the shared NATS when the test ends.
func uniqueNamespace(t *testing.T) string {
	ns := fmt.Sprintf("bbtest_%d", time.Now().UnixNano())
	t.Cleanup(func() {
		nc, err := nats.Connect(natsURL(t))
		if err != nil {
			return
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		names := js.StreamNames(ctx)
		for name := range names.Name() {
			if strings.HasPrefix(name, ns+"_") {
				js.DeleteStream(ctx, name)
			}
		}
	})
	return ns
}
