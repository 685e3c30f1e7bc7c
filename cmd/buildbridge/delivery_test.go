package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/buildbridge/buildbridge/event"
)

const hookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// hookReceiver is a loopback webhook receiver that verifies every request
// with the standard-webhooks library and answers with status.
type hookReceiver struct {
	t      *testing.T
	srv    *httptest.Server
	wh     *standardwebhooks.Webhook
	status atomic.Int32

	mu     sync.Mutex
	reqs   []hookReq
	byPath map[string]int // status per path, over status
}

type hookReq struct {
	path   string
	id     string
	code   int
	ev     event.Envelope
	header http.Header
	body   []byte
}

func newHookReceiver(t *testing.T) *hookReceiver {
	r := &hookReceiver{t: t}
	r.wh, _ = standardwebhooks.NewWebhook(hookSecret)
	r.status.Store(200)
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		if err := r.wh.Verify(body, req.Header); err != nil {
			t.Errorf("receiver: the standard-webhooks library refuses the signature: %v", err)
			w.WriteHeader(400)
			return
		}
		code := int(r.status.Load())
		r.mu.Lock()
		if c, ok := r.byPath[req.URL.Path]; ok {
			code = c
		}
		r.mu.Unlock()
		hr := hookReq{path: req.URL.Path, id: req.Header.Get("webhook-id"), code: code, header: req.Header.Clone(), body: body}
		json.Unmarshal(body, &hr.ev)
		r.mu.Lock()
		r.reqs = append(r.reqs, hr)
		r.mu.Unlock()
		w.WriteHeader(code)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *hookReceiver) setPath(path string, code int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byPath == nil {
		r.byPath = map[string]int{}
	}
	r.byPath[path] = code
}

func (r *hookReceiver) all() []hookReq {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]hookReq(nil), r.reqs...)
}

// accepted returns the events received with a 2xx, once each, in the
// order of their first acceptance.
func (r *hookReceiver) accepted(path string) []hookReq {
	seen := map[string]bool{}
	var out []hookReq
	for _, q := range r.all() {
		if q.code == 200 && q.path == path && !seen[q.ev.ID] {
			seen[q.ev.ID] = true
			out = append(out, q)
		}
	}
	return out
}

// waitBuild waits for the three events of a build, accepted on path.
func (r *hookReceiver) waitBuild(t *testing.T, path string, build int64, within time.Duration) []hookReq {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var evs []hookReq
		for _, q := range r.accepted(path) {
			if q.ev.Build != nil && q.ev.Build.ID == build {
				evs = append(evs, q)
			}
		}
		if len(evs) == 3 {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("build %d: %d events accepted on %s within %s", build, len(evs), path, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func writeRules(t *testing.T, path, text string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func hookRules(url, schedule string) string {
	return `sinks:
  deploy:
    type: webhook
    url: ` + url + `/hook
    secret: ${HOOK_SECRET}
    retry_schedule: ` + schedule + `
routes:
  - name: every build event
    to: [deploy]
`
}

func triggerBuild(t *testing.T, c client) int64 {
	t.Helper()
	b := c.mustCall(t, 201, "POST", "/api/v1/projects/app/builds", map[string]any{"branch": "main"})
	return int64(b["id"].(float64))
}

func deliveryIDs(m map[string]any) []string {
	var out []string
	l, _ := m["deliveries"].([]any)
	for _, d := range l {
		out = append(out, fmt.Sprint(int64(d.(map[string]any)["id"].(float64))))
	}
	return out
}

// waitDeliveries waits until the sink has n deliveries with status.
func waitDeliveries(t *testing.T, c client, sink, status string, n int) map[string]any {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		m := c.mustCall(t, 200, "GET", "/api/v1/deliveries?limit=500&sink="+sink+"&status="+status, nil)
		if len(deliveryIDs(m)) == n {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d %s deliveries to %s, want %d: %v", len(deliveryIDs(m)), status, sink, n, m)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// TestWebhookDeliveries runs a real server with a rules file that sends
// every build event to a loopback receiver: signed, in order, logged,
// redelivered and recovered through the API and the CLI, verified by
// `webhook verify`, and the rules reloaded.
func TestWebhookDeliveries(t *testing.T) {
	data, dir := t.TempDir(), t.TempDir()
	token := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--data", data))
	rootToken := strings.TrimSpace(runCLI(t, "user", "add", "root", "--admin", "--data", data))
	recv := newHookReceiver(t)
	rules := writeRules(t, filepath.Join(dir, "rules.yaml"), hookRules(recv.srv.URL, "[0s]"))
	t.Setenv("HOOK_SECRET", hookSecret)
	t.Setenv("BUILDBRIDGE_DELIVERIES_WEBHOOK_ALLOW", "127.0.0.1")
	addr := freeAddr(t)
	p := startServer(t, data, addr, newEventLog(), "--rules", rules)
	c := client{base: "http://" + addr, token: token}
	root := client{base: c.base, token: rootToken}
	repo := newTestRepo(t)
	repo.commit(t, "main", "work", map[string]string{".buildbridge.yml": "steps:\n  - name: a\n    run: \"true\"\n"})
	c.mustCall(t, 201, "POST", "/api/v1/projects", map[string]any{"name": "app", "repo": repo.bare})

	// Signed (the receiver verifies), in order, one message id each.
	b1 := triggerBuild(t, c)
	evs := recv.waitBuild(t, "/hook", b1, 30*time.Second)
	for i, want := range []string{"QUEUED", "STARTED", "FINISHED"} {
		if string(evs[i].ev.Build.State) != want || !strings.HasPrefix(evs[i].id, "msg_") {
			t.Fatalf("event %d: %s %s", i, evs[i].ev.Build.State, evs[i].id)
		}
	}
	m := waitDeliveries(t, c, "deploy", "succeeded", 3)
	ids := deliveryIDs(m)
	first := m["deliveries"].([]any)[2].(map[string]any) // oldest: QUEUED
	if first["event_id"] != evs[0].ev.ID || first["message_id"] != evs[0].id {
		t.Fatalf("delivery log: %v, first request %s %s", first, evs[0].ev.ID, evs[0].id)
	}
	// The user channel deliveries go through the engine too (pusher), on
	// their own schedule.
	waitDeliveries(t, c, "realtime", "succeeded", 3)

	// The CLI: list, show, redeliver (same message id again).
	cli := []string{"--url", c.base, "--token", token}
	if out := runCLI(t, append([]string{"deliveries", "list", "--sink", "deploy"}, cli...)...); strings.Count(out, "succeeded") != 3 {
		t.Fatalf("deliveries list:\n%s", out)
	}
	qid := ids[2]
	out := runCLI(t, append([]string{"deliveries", "show", qid}, cli...)...)
	if !strings.Contains(out, "attempts (1)") || !strings.Contains(out, evs[0].id) || !strings.Contains(out, "success  200") {
		t.Fatalf("deliveries show:\n%s", out)
	}
	before := len(recv.all())
	if out := runCLI(t, append([]string{"deliveries", "redeliver", qid}, cli...)...); !strings.Contains(out, evs[0].id) {
		t.Fatalf("deliveries redeliver:\n%s", out)
	}
	waitFor(t, 10*time.Second, func() bool { return len(recv.all()) > before })
	if again := recv.all()[before]; again.id != evs[0].id || again.ev.ID != evs[0].ev.ID {
		t.Fatalf("redelivery has message id %s, first %s", again.id, evs[0].id)
	}
	// The receiver has the request before the engine records the answer.
	waitDeliveries(t, c, "deploy", "succeeded", 3)

	// The environment instead of flags.
	t.Setenv("BUILDBRIDGE_URL", c.base)
	t.Setenv("BUILDBRIDGE_TOKEN", token)
	if out := runCLI(t, "deliveries", "list", "--status", "succeeded", "--json"); strings.Count(out, `"message_id"`) != 6 {
		t.Fatalf("deliveries list --json with the environment:\n%s", out)
	}
	if sec := strings.TrimSpace(runCLI(t, "webhook", "secret")); !strings.HasPrefix(sec, "whsec_") || len(sec) < 40 {
		t.Fatalf("webhook secret: %q", sec)
	}

	// `webhook verify` on a received request, as the receiver logged it.
	raw := requestText(recv.all()[0])
	if out, code := verifyCLI(t, raw, hookSecret); code != 0 || !strings.Contains(out, "signature valid") {
		t.Fatalf("webhook verify: %d %s", code, out)
	}
	if out, code := verifyCLI(t, raw, "whsec_dGhpcyBpcyB0aGUgb2xkIHNlY3JldCBrZXk="); code != 1 || !strings.Contains(out, "NOT valid") {
		t.Fatalf("webhook verify with another secret: %d %s", code, out)
	}
	if out, code := verifyCLI(t, strings.Replace(raw, `"QUEUED"`, `"FINISHED"`, 1), hookSecret); code != 1 {
		t.Fatalf("webhook verify of a changed body: %d %s", code, out)
	}

	// A refusing receiver (400: permanent): dead letters, then recovered.
	recv.status.Store(400)
	b2 := triggerBuild(t, c)
	waitDeliveries(t, c, "deploy", "failed", 3)
	recv.status.Store(200)
	res := c.mustCall(t, 202, "POST", "/api/v1/sinks/deploy/recover", map[string]any{"since": "1h"})
	if res["redelivered"] != 3.0 {
		t.Fatalf("recover: %v", res)
	}
	evs = recv.waitBuild(t, "/hook", b2, 20*time.Second)
	if evs[0].ev.Build.State != "QUEUED" || evs[2].ev.Build.State != "FINISHED" {
		t.Fatalf("recovered out of order: %s %s %s", evs[0].ev.Build.State, evs[1].ev.Build.State, evs[2].ev.Build.State)
	}

	// Reload: a broken file is refused, a good one adds a sink; SIGHUP
	// reloads too.
	writeRules(t, rules, strings.Replace(hookRules(recv.srv.URL, "[0s]"), "[deploy]", "[deploy, nowhere]", 1))
	if code, m := root.call(t, "POST", "/api/v1/admin/rules/reload", nil); code != 422 || !strings.Contains(fmt.Sprint(m), "nowhere") {
		t.Fatalf("reload of a broken file: %d %v", code, m)
	}
	if code, _ := c.call(t, "POST", "/api/v1/admin/rules/reload", nil); code != 403 {
		t.Fatalf("reload by a user: %d", code)
	}
	writeRules(t, rules, strings.Replace(strings.Replace(hookRules(recv.srv.URL, "[0s]"), "routes:", `  second:
    type: webhook
    url: `+recv.srv.URL+`/two
    secret: ${HOOK_SECRET}
routes:`, 1), "[deploy]", "[deploy, second]", 1))
	m = root.mustCall(t, 200, "POST", "/api/v1/admin/rules/reload", nil)
	if !strings.Contains(fmt.Sprint(m["summary"]), "2 sinks") {
		t.Fatalf("reload: %v", m)
	}
	b3 := triggerBuild(t, c)
	recv.waitBuild(t, "/two", b3, 20*time.Second)
	writeRules(t, rules, hookRules(recv.srv.URL, "[0s]"))
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, func() bool {
		return strings.Contains(p.log(), "SIGHUP: reloading the rules") && strings.Count(p.log(), `"msg":"rules: loaded"`) >= 3
	})
	if !strings.Contains(p.log(), "1 sink (webhook 1)") {
		t.Fatalf("SIGHUP did not load the file back to one sink:\n%s", p.log())
	}
	p.stop(t)
}

// requestText writes a received request as a receiver would log it.
func requestText(q hookReq) string {
	var b strings.Builder
	b.WriteString("POST " + q.path + " HTTP/1.1\r\nHost: receiver.example\r\n")
	q.header.Write(&b)
	b.WriteString("\r\n")
	b.Write(q.body)
	return b.String()
}

func verifyCLI(t *testing.T, input, secret string) (string, int) {
	t.Helper()
	cmd := exec.Command(binPath, "webhook", "verify", "--secret", secret)
	cmd.Stdin = strings.NewReader(input)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), 0
}

func waitFor(t *testing.T, within time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDeliveryCrash kills the server with SIGKILL while deliveries are
// pending and scheduled for retry, twice, and checks that after the
// restarts the receiver gets every committed event, duplicates only
// with the same webhook-id.
func TestDeliveryCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test skipped in -short mode")
	}
	data, dir := t.TempDir(), t.TempDir()
	token := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--data", data))
	recv := newHookReceiver(t)
	recv.status.Store(503)
	rules := writeRules(t, filepath.Join(dir, "rules.yaml"), hookRules(recv.srv.URL, "[0s, 300ms, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s]"))
	t.Setenv("HOOK_SECRET", hookSecret)
	t.Setenv("BUILDBRIDGE_DELIVERIES_WEBHOOK_ALLOW", "127.0.0.1")
	addr := freeAddr(t)
	c := client{base: "http://" + addr, token: token}
	repo := newTestRepo(t)
	repo.commit(t, "main", "work", map[string]string{".buildbridge.yml": "steps:\n  - name: a\n    run: sleep 0.2\n"})

	p := startServer(t, data, addr, newEventLog(), "--rules", rules, "--concurrency", "4")
	c.mustCall(t, 201, "POST", "/api/v1/projects", map[string]any{"name": "app", "repo": repo.bare})
	var builds []int64
	for i := 0; i < 4; i++ {
		builds = append(builds, triggerBuild(t, c))
	}
	// Failed attempts made, retries scheduled: kill.
	waitFor(t, 20*time.Second, func() bool { return len(recv.all()) >= 8 })
	p.kill()

	p = startServer(t, data, addr, newEventLog(), "--rules", rules, "--concurrency", "4")
	for i := 0; i < 4; i++ {
		builds = append(builds, triggerBuild(t, c))
	}
	n := len(recv.all())
	waitFor(t, 20*time.Second, func() bool { return len(recv.all()) >= n+6 })
	// The receiver comes back while deliveries are in flight: kill again.
	recv.status.Store(200)
	time.Sleep(150 * time.Millisecond)
	p.kill()

	p = startServer(t, data, addr, newEventLog(), "--rules", rules, "--concurrency", "4")
	deadline := time.Now().Add(40 * time.Second)
	for _, b := range builds {
		for {
			m := c.mustCall(t, 200, "GET", fmt.Sprintf("/api/v1/builds/%d/events", b), nil)
			l, _ := m["events"].([]any)
			if len(l) > 0 && l[len(l)-1].(map[string]any)["state"] == "FINISHED" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("build %d did not finish: %v", b, m)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// One message id per event, whatever the restarts and retries.
	dups := hookEachEvent(t, c, recv, builds)
	p.stop(t)
	t.Logf("%d builds, %d accepted twice (same id) over 2 SIGKILLs", len(builds), dups)
}

// hookEachEvent waits until every committed event of the builds is
// accepted by the receiver, checks that each reached it under one
// webhook-id only, and returns how many were accepted more than once
// (with that id: a node killed between an attempt and its record).
func hookEachEvent(t *testing.T, c client, recv *hookReceiver, builds []int64) (dups int) {
	t.Helper()
	var committed []string
	for _, b := range builds {
		m := c.mustCall(t, 200, "GET", fmt.Sprintf("/api/v1/builds/%d/events", b), nil)
		l, _ := m["events"].([]any)
		for _, e := range l {
			committed = append(committed, e.(map[string]any)["event_id"].(string))
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := map[string]bool{}
		for _, q := range recv.accepted("/hook") {
			got[q.ev.ID] = true
		}
		missing := 0
		for _, id := range committed {
			if !got[id] {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d committed events never accepted by the webhook receiver", missing, len(committed))
		}
		time.Sleep(50 * time.Millisecond)
	}
	msgIDs := map[string]map[string]bool{}
	accepted := map[string]int{}
	for _, q := range recv.all() {
		if msgIDs[q.ev.ID] == nil {
			msgIDs[q.ev.ID] = map[string]bool{}
		}
		msgIDs[q.ev.ID][q.id] = true
		if q.code == 200 {
			accepted[q.ev.ID]++
		}
	}
	for ev, ids := range msgIDs {
		if len(ids) != 1 {
			t.Errorf("event %s reached the receiver under %d webhook-ids: %v", ev, len(ids), ids)
		}
		dups += max(accepted[ev]-1, 0)
	}
	if len(msgIDs) != len(committed) {
		t.Errorf("%d events received, %d committed", len(msgIDs), len(committed))
	}
	t.Logf("webhook receiver: %d events, %d requests, %d accepted twice (same webhook-id)", len(committed), len(recv.all()), dups)
	return dups
}

// TestEndpointDisabledIsRoutable: an endpoint that answers 410 is
// disabled, and the endpoint-disabled event goes where the rules send it.
func TestEndpointDisabledIsRoutable(t *testing.T) {
	data, dir := t.TempDir(), t.TempDir()
	token := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--data", data))
	rootToken := strings.TrimSpace(runCLI(t, "user", "add", "root", "--admin", "--data", data))
	recv := newHookReceiver(t)
	recv.setPath("/hook", 410)
	rules := writeRules(t, filepath.Join(dir, "rules.yaml"), strings.Replace(hookRules(recv.srv.URL, "[0s, 1s]"), "routes:", `  ops:
    type: webhook
    url: `+recv.srv.URL+`/ops
    secret: ${HOOK_SECRET}
routes:
  - name: disabled endpoints
    match:
      event: endpoint-disabled
    to: [ops]`, 1))
	t.Setenv("HOOK_SECRET", hookSecret)
	t.Setenv("BUILDBRIDGE_DELIVERIES_WEBHOOK_ALLOW", "127.0.0.1")
	addr := freeAddr(t)
	p := startServer(t, data, addr, newEventLog(), "--rules", rules)
	c := client{base: "http://" + addr, token: token}
	root := client{base: c.base, token: rootToken}
	repo := newTestRepo(t)
	repo.commit(t, "main", "work", map[string]string{".buildbridge.yml": "steps:\n  - name: a\n    run: \"true\"\n"})
	c.mustCall(t, 201, "POST", "/api/v1/projects", map[string]any{"name": "app", "repo": repo.bare})
	b := triggerBuild(t, c)

	var note hookReq
	waitFor(t, 20*time.Second, func() bool {
		for _, q := range recv.all() {
			if q.path == "/ops" && q.code == 200 {
				note = q
				return true
			}
		}
		return false
	})
	var disabled struct {
		Sink, Target, Reason string
	}
	json.Unmarshal(note.ev.Data, &disabled)
	if note.ev.Type != "endpoint-disabled" || disabled.Sink != "deploy" || disabled.Target != recv.srv.URL+"/hook" || !strings.Contains(disabled.Reason, "410") {
		t.Fatalf("endpoint-disabled event: %s", note.body)
	}
	eps := root.mustCall(t, 200, "GET", "/api/v1/endpoints", nil)
	if l, _ := eps["endpoints"].([]any); len(l) != 1 || l[0].(map[string]any)["disabled_at"] == nil {
		t.Fatalf("endpoints: %v", eps)
	}
	// Every event of the build failed: one 410, the rest without an attempt.
	waitDeliveries(t, c, "deploy", "failed", 3)
	if n := len(recv.accepted("/hook")); n != 0 {
		t.Fatalf("%d deliveries accepted by a gone endpoint", n)
	}
	// The system event's delivery is the admin's to see.
	if l := deliveryIDs(c.mustCall(t, 200, "GET", "/api/v1/deliveries?sink=ops", nil)); len(l) != 0 {
		t.Fatalf("a user sees system deliveries: %v", l)
	}
	if l := deliveryIDs(root.mustCall(t, 200, "GET", "/api/v1/deliveries?sink=ops&type=endpoint-disabled", nil)); len(l) != 1 {
		t.Fatalf("admin's endpoint-disabled deliveries: %v", l)
	}
	// Back again: enable, recover, received in order.
	recv.setPath("/hook", 200)
	root.mustCall(t, 200, "POST", "/api/v1/sinks/deploy/endpoints/enable", map[string]any{"target": recv.srv.URL + "/hook"})
	c.mustCall(t, 202, "POST", "/api/v1/sinks/deploy/recover", map[string]any{"since": "1h"})
	evs := recv.waitBuild(t, "/hook", b, 20*time.Second)
	if evs[0].ev.Build.State != "QUEUED" || evs[2].ev.Build.State != "FINISHED" {
		t.Fatalf("recovered out of order")
	}
	p.stop(t)
}
