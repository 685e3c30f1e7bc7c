package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/spf13/pflag"

	"github.com/buildbridge/buildbridge/event"
)

// usageOfUser is a user's total requests over the default range, as the
// admin usage endpoint reports them.
func usageOfUser(t *testing.T, admin client, name string) (requests, errors int) {
	t.Helper()
	m := admin.mustCall(t, 200, "GET", "/api/v1/admin/usage?user="+name, nil)
	users, _ := m["users"].([]any)
	if len(users) == 0 {
		return 0, 0
	}
	u := users[0].(map[string]any)
	return int(u["requests"].(float64)), int(u["errors"].(float64))
}

// burst makes n authenticated requests and fails on any but 200.
func burst(t *testing.T, c client, n int) {
	t.Helper()
	for range n {
		c.mustCall(t, 200, "GET", "/api/v1/user", nil)
	}
}

// TestUsageThresholdsAndAlerts runs a real server whose rules send
// usage-threshold, system-alert and system-recovered events to a
// loopback webhook receiver: a user crossing 80% of their limit gives
// exactly one usage-threshold event, 100% one more; the request over the
// limit is refused with 429 and trips an alert on the rate-limited
// figure, which recovers at the next quiet sample.
func TestUsageThresholdsAndAlerts(t *testing.T) {
	data, dir := t.TempDir(), t.TempDir()
	annToken := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--data", data))
	rootToken := strings.TrimSpace(runCLI(t, "user", "add", "root", "--admin", "--data", data))
	recv := newHookReceiver(t)
	rules := writeRules(t, filepath.Join(dir, "rules.yaml"), `sinks:
  billing:
    type: webhook
    url: `+recv.srv.URL+`/usage
    secret: ${HOOK_SECRET}
  ops:
    type: webhook
    url: `+recv.srv.URL+`/ops
    secret: ${HOOK_SECRET}
routes:
  - name: quota
    match: {event: usage-threshold}
    to: [billing]
  - name: alerts
    match: {event: [system-alert, system-recovered]}
    to: [ops]
alerts:
  - name: refusals
    if: rate_limited >= 1
    severity: critical
    summary: Someone hit the rate limit.
`)
	t.Setenv("HOOK_SECRET", hookSecret)
	t.Setenv("BUILDBRIDGE_DELIVERIES_WEBHOOK_ALLOW", "127.0.0.1")
	addr := freeAddr(t)
	startServer(t, data, addr, newEventLog(), "--rules", rules, "--usage-rate-limit", "10", "--usage-rate-window", "1h",
		"--usage-system-interval", "300ms")
	ann := client{base: "http://" + addr, token: annToken}
	root := client{base: ann.base, token: rootToken}

	threshold := func(q hookReq) map[string]any {
		var d map[string]any
		json.Unmarshal(q.ev.Data, &d)
		return d
	}
	burst(t, ann, 7)
	time.Sleep(time.Second)
	if got := recv.accepted("/usage"); len(got) != 0 {
		t.Fatalf("below 80%%: %d events", len(got))
	}
	burst(t, ann, 1) // 8 of 10
	waitFor(t, 15*time.Second, func() bool { return len(recv.accepted("/usage")) == 1 })
	burst(t, ann, 1)
	time.Sleep(time.Second)
	got := recv.accepted("/usage")
	if len(got) != 1 || len(recv.all()) != 1 {
		t.Fatalf("80%%: %d events, %d requests; want exactly one", len(got), len(recv.all()))
	}
	d := threshold(got[0])
	if got[0].ev.Type != event.TypeUsageThreshold || d["percent"] != 80.0 || d["user"] != "ann" || d["limit"] != 10.0 ||
		d["used"] != 8.0 || d["window_seconds"] != 3600.0 || d["reset_at"] == nil {
		t.Fatalf("80%% event: %+v %s", got[0].ev, got[0].ev.Data)
	}

	burst(t, ann, 1) // 10 of 10
	waitFor(t, 15*time.Second, func() bool { return len(recv.accepted("/usage")) == 2 })
	if d := threshold(recv.accepted("/usage")[1]); d["percent"] != 100.0 {
		t.Fatalf("100%% event: %v", d)
	}
	// Over the limit: 429 with Retry-After, and the alert fires, then
	// recovers.
	req, _ := http.NewRequest("GET", ann.base+"/api/v1/user", nil)
	req.Header.Set("Authorization", "Bearer "+annToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || resp.Header.Get("RateLimit-Remaining") != "0" {
		t.Fatalf("over the limit: %d %v", resp.StatusCode, resp.Header)
	}
	waitFor(t, 15*time.Second, func() bool { return len(recv.accepted("/ops")) == 2 })
	ops := recv.accepted("/ops")
	var alert, recovered map[string]any
	json.Unmarshal(ops[0].ev.Data, &alert)
	json.Unmarshal(ops[1].ev.Data, &recovered)
	if ops[0].ev.Type != event.TypeSystemAlert || alert["alert"] != "refusals" || alert["severity"] != "critical" ||
		alert["figures"].(map[string]any)["rate_limited"] != 1.0 ||
		ops[1].ev.Type != event.TypeSystemRecovered || recovered["alert"] != "refusals" || recovered["recovered_at"] == nil {
		t.Fatalf("alert events: %s / %s", ops[0].ev.Data, ops[1].ev.Data)
	}
	// Nothing more: one crossing of each level in the window.
	time.Sleep(500 * time.Millisecond)
	if n := len(recv.accepted("/usage")); n != 2 {
		t.Fatalf("%d usage-threshold events", n)
	}
	if r, e := usageOfUser(t, root, "ann"); r != 11 || e != 1 {
		t.Fatalf("ann's usage: %d requests, %d errors", r, e)
	}

	// The alerts reload with the rules: a new alert on any request.
	os.WriteFile(rules, []byte(strings.Replace(string(mustRead(t, rules)), "  - name: refusals\n    if: rate_limited >= 1",
		"  - name: busy\n    if: requests >= 1", 1)), 0o644)
	root.mustCall(t, 200, "POST", "/api/v1/admin/rules/reload", nil)
	waitFor(t, 15*time.Second, func() bool {
		for _, q := range recv.accepted("/ops") {
			var d map[string]any
			json.Unmarshal(q.ev.Data, &d)
			if q.ev.Type == event.TypeSystemRecovered && d["alert"] == "busy" {
				return true
			}
		}
		return false
	})
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestUsageSurvivesRestarts: counts survive a graceful restart exactly;
// after SIGKILL, at most the last flush interval is lost.
func TestUsageSurvivesRestarts(t *testing.T) {
	data := t.TempDir()
	annToken := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--data", data))
	rootToken := strings.TrimSpace(runCLI(t, "user", "add", "root", "--admin", "--data", data))
	addr := freeAddr(t)
	ann := client{base: "http://" + addr, token: annToken}
	root := client{base: ann.base, token: rootToken}

	// Graceful: no periodic flush happens (1h); the last one at SIGTERM
	// stores everything.
	p := startServer(t, data, addr, newEventLog(), "--usage-flush-interval", "1h")
	burst(t, ann, 25)
	ann.call(t, "GET", "/api/v1/builds/999999", nil) // an error
	p.stop(t)
	p = startServer(t, data, addr, newEventLog(), "--usage-flush-interval", "1h")
	if r, e := usageOfUser(t, root, "ann"); r != 26 || e != 1 {
		t.Fatalf("after a graceful restart: %d requests, %d errors; want 26, 1", r, e)
	}
	p.stop(t)

	// SIGKILL: what was answered more than a flush interval before the
	// kill is stored; what came after may be lost, never counted twice.
	const flush = 300 * time.Millisecond
	p = startServer(t, data, addr, newEventLog(), "--usage-flush-interval", flush.String())
	burst(t, ann, 40)
	time.Sleep(3 * flush)
	burst(t, ann, 30)
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	startServer(t, data, addr, newEventLog(), "--usage-flush-interval", flush.String())
	r, _ := usageOfUser(t, root, "ann")
	if r < 26+40 || r > 26+40+30 {
		t.Fatalf("after SIGKILL: %d requests; want between %d and %d", r, 26+40, 26+40+30)
	}
	t.Logf("after SIGKILL: %d of the last 30 requests were stored", r-66)
	// The CLI shows the same, as a table.
	out := runCLI(t, "usage", "--url", ann.base, "--token", rootToken, "--user", "ann")
	if !strings.Contains(out, "USER") || !strings.Contains(out, "ann") || !strings.Contains(out, "GET /api/v1/user") {
		t.Fatalf("buildbridge usage:\n%s", out)
	}
}

// pusherConn is a raw Pusher-protocol client of the embedded server.
type pusherConn struct {
	ws       *websocket.Conn
	socketID string
}

func dialPusher(t *testing.T, base string) *pusherConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, strings.Replace(base, "http://", "ws://", 1)+"/app/buildbridge?protocol=7", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	p := &pusherConn{ws: ws}
	ev, data := p.next(t, 10*time.Second)
	if ev != "pusher:connection_established" {
		t.Fatalf("first message %s", ev)
	}
	var est struct {
		SocketID string `json:"socket_id"`
	}
	json.Unmarshal([]byte(data), &est)
	p.socketID = est.SocketID
	return p
}

// next returns the next event other than pings, with its data.
func (p *pusherConn) next(t *testing.T, within time.Duration) (string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for {
		_, raw, err := p.ws.Read(ctx)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		var m struct {
			Event string          `json:"event"`
			Data  json.RawMessage `json:"data"`
		}
		json.Unmarshal(raw, &m)
		if m.Event == "pusher:ping" {
			continue
		}
		var s string
		if json.Unmarshal(m.Data, &s) != nil {
			s = string(m.Data)
		}
		return m.Event, s
	}
}

func (p *pusherConn) subscribe(t *testing.T, channel, auth string) {
	t.Helper()
	msg, _ := json.Marshal(map[string]any{"event": "pusher:subscribe", "data": map[string]string{"channel": channel, "auth": auth}})
	if err := p.ws.Write(context.Background(), websocket.MessageText, msg); err != nil {
		t.Fatal(err)
	}
}

// auth asks the hub's auth endpoint to sign a subscription.
func channelAuth(t *testing.T, c client, socketID, channel string) (int, string) {
	t.Helper()
	form := url.Values{"socket_id": {socketID}, "channel_name": {channel}}
	req, _ := http.NewRequest("POST", c.base+"/user/channel/auth", strings.NewReader(form.Encode()))
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m struct {
		Auth string `json:"auth"`
	}
	json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m.Auth
}

// TestSystemChannel: the auth endpoint refuses private-system to a
// non-admin (403); so does the server itself when the subscription was
// signed elsewhere, with the app's secret, for a socket bound to a
// non-admin; an admin is signed and receives the figures.
func TestSystemChannel(t *testing.T) {
	data := t.TempDir()
	annToken := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--data", data))
	rootToken := strings.TrimSpace(runCLI(t, "user", "add", "root", "--admin", "--data", data))
	addr := freeAddr(t)
	startServer(t, data, addr, newEventLog(), "--usage-system-interval", "200ms")
	ann := client{base: "http://" + addr, token: annToken}
	root := client{base: ann.base, token: rootToken}
	annID := int64(ann.mustCall(t, 200, "GET", "/api/v1/user", nil)["id"].(float64))

	p := dialPusher(t, ann.base)
	if code, _ := channelAuth(t, ann, p.socketID, "private-system"); code != 403 {
		t.Fatalf("auth endpoint signed private-system for a non-admin: %d", code)
	}
	// Bound to ann by her own channel's signature, then private-system
	// signed with the secret: the server refuses it.
	code, auth := channelAuth(t, ann, p.socketID, event.UserChannel(annID))
	if code != 200 {
		t.Fatalf("own channel: %d", code)
	}
	p.subscribe(t, event.UserChannel(annID), auth)
	if ev, d := p.next(t, 10*time.Second); ev != "pusher_internal:subscription_succeeded" {
		t.Fatalf("own channel: %s %s", ev, d)
	}
	secret, err := os.ReadFile(filepath.Join(data, "realtime.secret"))
	if err != nil {
		t.Fatal(err)
	}
	mac := hmac.New(sha256.New, []byte(strings.TrimSpace(string(secret))))
	mac.Write([]byte(p.socketID + ":private-system"))
	p.subscribe(t, "private-system", "buildbridge:"+hex.EncodeToString(mac.Sum(nil)))
	for {
		ev, d := p.next(t, 10*time.Second)
		if ev == "pusher_internal:subscription_succeeded" || ev == EventSystemFigures {
			t.Fatalf("non-admin subscribed to private-system: %s %s", ev, d)
		}
		if ev == "pusher:subscription_error" {
			if !strings.Contains(d, `"status":403`) || !strings.Contains(d, "only admins") {
				t.Fatalf("refusal: %s", d)
			}
			break
		}
	}

	// The admin: signed, then figures every 200ms with the requests made.
	a := dialPusher(t, root.base)
	code, auth = channelAuth(t, root, a.socketID, "private-system")
	if code != 200 {
		t.Fatalf("admin's private-system: %d", code)
	}
	a.subscribe(t, "private-system", auth)
	if ev, d := a.next(t, 10*time.Second); ev != "pusher_internal:subscription_succeeded" {
		t.Fatalf("admin: %s %s", ev, d)
	}
	burst(t, ann, 5)
	deadline := time.Now().Add(10 * time.Second)
	var requests float64
	for {
		ev, d := a.next(t, 10*time.Second)
		if ev != EventSystemFigures {
			continue
		}
		var f map[string]any
		if err := json.Unmarshal([]byte(d), &f); err != nil {
			t.Fatalf("figures %q: %v", d, err)
		}
		for _, k := range []string{"interval_seconds", "request_rate", "error_rate", "latency_p50_ms", "latency_p95_ms",
			"latency_p99_ms", "builds_per_minute", "queue_depth", "delivery_failures", "delivery_backlog", "connections"} {
			if _, ok := f[k]; !ok {
				t.Fatalf("figures without %s: %s", k, d)
			}
		}
		// The burst may span two samples.
		requests += f["requests"].(float64)
		if requests >= 6 && f["connections"].(float64) == 2 && (f["requests"].(float64) == 0 || f["latency_p99_ms"].(float64) > 0) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no figures with the burst: last %s", d)
		}
	}
}

// TestUsageConfig: the usage settings from the file, the environment and
// flags, per-user limits from the file only, and bad values named.
func TestUsageConfig(t *testing.T) {
	load := func(file string, env map[string]string, args ...string) (Config, error) {
		dir := t.TempDir()
		p := filepath.Join(dir, "c.yaml")
		os.WriteFile(p, []byte(file), 0o600)
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		addConfigFlags(fs)
		if err := fs.Parse(append(args, "--config", p, "--data", dir)); err != nil {
			t.Fatal(err)
		}
		return loadConfig(fs, func(k string) string { return env[k] })
	}
	cfg, err := load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if u := cfg.Usage; u.RateLimit != 600 || u.RateWindow != time.Minute || u.FlushInterval != 5*time.Second ||
		u.APIUsageInterval != 5*time.Second || u.SystemInterval != 5*time.Second || len(u.Limits) != 0 {
		t.Fatalf("defaults: %+v", u)
	}
	cfg, err = load("usage:\n  rate_limit: 100\n  limits:\n    ann: 1000\n    ci-bot: 5000\n",
		map[string]string{"BUILDBRIDGE_USAGE_RATE_WINDOW": "1h"}, "--usage-flush-interval", "2s", "--usage-system-interval", "10s")
	if err != nil {
		t.Fatal(err)
	}
	if u := cfg.Usage; u.RateLimit != 100 || u.RateWindow != time.Hour || u.FlushInterval != 2*time.Second ||
		u.SystemInterval != 10*time.Second || u.Limits["ann"] != 1000 || u.Limits["ci-bot"] != 5000 {
		t.Fatalf("set: %+v", u)
	}
	for _, c := range []struct {
		file string
		args []string
		want string
	}{
		{args: []string{"--usage-rate-limit", "0"}, want: "setting usage.rate_limit"},
		{args: []string{"--usage-rate-window", "10ms"}, want: "setting usage.rate_window"},
		{args: []string{"--usage-flush-interval", "2h"}, want: "setting usage.flush_interval"},
		{args: []string{"--usage-api-usage-interval", "1ms"}, want: "setting usage.api_usage_interval"},
		{args: []string{"--usage-system-interval", "0s"}, want: "setting usage.system_interval"},
		{file: "usage:\n  limits:\n    ann: 0\n", want: "setting usage.limits.ann"},
		{file: "usage:\n  limits:\n    \"a b\": 5\n", want: "setting usage.limits"},
		{file: "usage:\n  limit: 5\n", want: "field limit not found"},
	} {
		_, err := load(c.file, nil, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v %q: %v, want %q", c.args, c.file, err, c.want)
		}
	}
}
