package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/sinks/delivery"
	"github.com/buildbridge/buildbridge/sinks/webhook"
	"github.com/buildbridge/buildbridge/store"
)

// deliveryFixture is the API with a real delivery engine posting to a
// loopback receiver through a webhook sink named "hook".
type deliveryFixture struct {
	*fixture
	engine   *delivery.Engine
	hook     *httptest.Server
	status   atomic.Int32 // what the receiver answers
	received atomic.Int32
	ids      map[string]int64 // user name → id
}

func newDeliveryFixture(t *testing.T) *deliveryFixture {
	t.Helper()
	ctx := context.Background()
	s, err := store.Open(ctx, store.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	f := &deliveryFixture{fixture: &fixture{store: s, sched: &recordingScheduler{}, artifacts: t.TempDir()}, ids: map[string]int64{}}
	for name, dst := range map[string]*string{"ann": &f.ann, "bob": &f.bob, "root": &f.admin} {
		u, err := s.CreateUser(ctx, name, name == "root")
		if err != nil {
			t.Fatal(err)
		}
		f.ids[name] = u.ID
		if *dst, _, err = s.CreateToken(ctx, u.ID, ""); err != nil {
			t.Fatal(err)
		}
	}
	f.status.Store(500)
	f.hook = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.received.Add(1)
		w.WriteHeader(int(f.status.Load()))
	}))
	t.Cleanup(f.hook.Close)

	var doc yaml.Node
	yaml.Unmarshal([]byte("type: webhook\nurl: "+f.hook.URL+"\nsecret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\nretry_schedule: [0s]\n"), &doc)
	tp, _ := sinks.Lookup("webhook")
	cfg, errs := tp.Decode("hook", doc.Content[0], &sinks.Resolver{ReadFile: os.ReadFile})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	f.engine, err = delivery.New(delivery.Config{Store: s, ShutdownGrace: 100 * time.Millisecond,
		NewSink: func(c *sinks.Config) (sinks.Sink, error) {
			return webhook.NewSink(c, webhook.Options{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
		}})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.engine.Configure([]*sinks.Config{cfg}); err != nil {
		t.Fatal(err)
	}
	if err := f.engine.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.engine.Close() })
	a, err := New(Config{Store: s, Scheduler: f.sched, Resolve: func(context.Context, string, string) (Commit, error) { return Commit{}, nil },
		ArtifactsDir: f.artifacts, MaxBodyBytes: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.EnableDeliveries(f.engine); err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(a)
	t.Cleanup(f.srv.Close)
	return f
}

// enqueue delivers an event of a project owned by owner (0: a system
// event) to the hook.
func (f *deliveryFixture) enqueue(t *testing.T, id string, owner int64) {
	t.Helper()
	ev := event.Envelope{ID: id, Type: event.TypeEndpointDisabled, Time: time.Now(), Data: json.RawMessage(`{"x":1}`)}
	if owner != 0 {
		ev.Type = event.TypeBuildStateChanged
		ev.Project = &event.Project{ID: owner, Name: "p", OwnerID: owner}
		ev.Build = &event.Build{ID: owner * 100, Number: 1}
	}
	body, _ := json.Marshal(ev)
	err := f.engine.Enqueue(context.Background(), []sinks.Delivery{{EventID: id, Event: ev, Route: "r", Sink: "hook", SinkType: "webhook",
		Target: f.hook.URL, Body: body, ContentType: "application/json"}})
	if err != nil {
		t.Fatal(err)
	}
}

// waitStatus waits until the deliveries with the given statuses number n.
func (f *deliveryFixture) waitStatus(t *testing.T, status string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, _ := f.store.ListSinkDeliveries(context.Background(), store.SinkDeliveryFilter{Status: status})
		if len(l) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d deliveries %s, want %d", len(l), status, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ids(m map[string]any) []int64 {
	var out []int64
	l, _ := m["deliveries"].([]any)
	for _, d := range l {
		out = append(out, int64(d.(map[string]any)["id"].(float64)))
	}
	return out
}

func TestDeliveriesAPI(t *testing.T) {
	f := newDeliveryFixture(t)
	f.enqueue(t, "evt_ann", f.ids["ann"])
	f.enqueue(t, "evt_bob", f.ids["bob"])
	f.enqueue(t, "evt_sys", 0)
	f.waitStatus(t, store.DeliveryFailed, 3) // one attempt, HTTP 500, schedule of one

	// Users see their own; admins see everything.
	code, m, raw := f.do(t, f.ann, "GET", "/api/v1/deliveries", "")
	if code != 200 || len(ids(m)) != 1 {
		t.Fatalf("ann's list: %d %s", code, raw)
	}
	annID := ids(m)[0]
	d := m["deliveries"].([]any)[0].(map[string]any)
	if d["event_id"] != "evt_ann" || d["status"] != "failed" || d["sink"] != "hook" || d["attempt_count"] != 1.0 ||
		d["last_status_code"] != 500.0 || d["message_id"] == "" {
		t.Fatalf("delivery JSON: %s", raw)
	}
	if _, m, _ = f.do(t, f.admin, "GET", "/api/v1/deliveries?status=failed&sink=hook", ""); len(ids(m)) != 3 {
		t.Fatalf("admin's list: %v", m)
	}
	if _, m, _ = f.do(t, f.admin, "GET", "/api/v1/deliveries?event=evt_bob", ""); len(ids(m)) != 1 {
		t.Fatalf("filter by event: %v", m)
	}
	if _, m, _ = f.do(t, f.admin, "GET", "/api/v1/deliveries?type=endpoint-disabled&since=1h", ""); len(ids(m)) != 1 {
		t.Fatalf("filter by type and since: %v", m)
	}
	if _, m, _ = f.do(t, f.admin, "GET", "/api/v1/deliveries?until="+time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), ""); len(ids(m)) != 0 {
		t.Fatalf("filter by until: %v", m)
	}
	if _, m, _ = f.do(t, f.admin, "GET", fmt.Sprintf("/api/v1/deliveries?owner=%d", f.ids["bob"]), ""); len(ids(m)) != 1 {
		t.Fatalf("filter by owner: %v", m)
	}
	if code, m, _ = f.do(t, f.ann, "GET", fmt.Sprintf("/api/v1/deliveries?owner=%d", f.ids["bob"]), ""); code != 403 {
		t.Fatalf("a user asking for another's deliveries: %d %v", code, m)
	}
	// Cursor pagination: pages of 2 cover the 3 once.
	_, m, _ = f.do(t, f.admin, "GET", "/api/v1/deliveries?limit=2", "")
	first := ids(m)
	cur, _ := m["next_cursor"].(string)
	_, m, _ = f.do(t, f.admin, "GET", "/api/v1/deliveries?limit=2&cursor="+cur, "")
	if len(first) != 2 || cur == "" || len(ids(m)) != 1 || m["next_cursor"] != nil || ids(m)[0] >= first[1] {
		t.Fatalf("pages: %v then %v (cursor %q)", first, m, cur)
	}
	for _, q := range []string{"status=lost", "limit=0", "limit=501", "cursor=abc", "since=yesterday", "owner=x"} {
		if code, m, _ := f.do(t, f.admin, "GET", "/api/v1/deliveries?"+q, ""); code != 400 || errCode(m) != "invalid_query" {
			t.Errorf("%s: %d %v", q, code, m)
		}
	}

	// One delivery with its attempts and message.
	code, m, raw = f.do(t, f.ann, "GET", fmt.Sprintf("/api/v1/deliveries/%d", annID), "")
	atts, _ := m["attempts"].([]any)
	msg, _ := m["message"].(map[string]any)
	if code != 200 || len(atts) != 1 || atts[0].(map[string]any)["status_code"] != 500.0 || atts[0].(map[string]any)["outcome"] != "permanent" && atts[0].(map[string]any)["outcome"] != "failed" ||
		msg == nil || msg["content_type"] != "application/json" || msg["route"] != "r" {
		t.Fatalf("show: %d %s", code, raw)
	}
	var body event.Envelope
	if s, _ := msg["body"].(string); json.Unmarshal([]byte(s), &body) != nil || body.ID != "evt_ann" {
		t.Fatalf("message body: %v", msg["body"])
	}
	_, m, _ = f.do(t, f.admin, "GET", "/api/v1/deliveries?event=evt_bob", "")
	bobID := ids(m)[0]
	if code, m, _ = f.do(t, f.ann, "GET", fmt.Sprintf("/api/v1/deliveries/%d", bobID), ""); code != 404 {
		t.Fatalf("another user's delivery: %d %v", code, m)
	}
	if code, _, _ = f.do(t, f.ann, "GET", "/api/v1/deliveries/nope", ""); code != 400 {
		t.Fatalf("bad id: %d", code)
	}
	if code, _, _ = f.do(t, "", "GET", "/api/v1/deliveries", ""); code != 401 {
		t.Fatalf("no token: %d", code)
	}

	// Redeliver: the receiver is back.
	f.status.Store(200)
	if code, m, _ = f.do(t, f.ann, "POST", fmt.Sprintf("/api/v1/deliveries/%d/redeliver", bobID), ""); code != 404 {
		t.Fatalf("redeliver another user's: %d %v", code, m)
	}
	code, m, raw = f.do(t, f.ann, "POST", fmt.Sprintf("/api/v1/deliveries/%d/redeliver", annID), "")
	if code != 202 || m["delivery"].(map[string]any)["status"] != "pending" {
		t.Fatalf("redeliver: %d %s", code, raw)
	}
	f.waitStatus(t, store.DeliverySucceeded, 1)

	// Recover: a user recovers their own failures, an admin the rest.
	code, m, raw = f.do(t, f.bob, "POST", "/api/v1/sinks/hook/recover", `{"since":"1h"}`)
	if code != 202 || m["redelivered"] != 1.0 {
		t.Fatalf("bob's recover: %d %s", code, raw)
	}
	f.waitStatus(t, store.DeliverySucceeded, 2)
	code, m, raw = f.do(t, f.admin, "POST", "/api/v1/sinks/hook/recover", `{"since":"`+time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)+`"}`)
	if code != 202 || m["redelivered"] != 1.0 {
		t.Fatalf("admin's recover: %d %s", code, raw)
	}
	f.waitStatus(t, store.DeliverySucceeded, 3)
	for _, bad := range []string{``, `{}`, `{"since":"last week"}`, `{"since":"1h","x":1}`} {
		if code, _, _ := f.do(t, f.admin, "POST", "/api/v1/sinks/hook/recover", bad); code != 400 {
			t.Errorf("recover %q: %d", bad, code)
		}
	}

	// Endpoints: admins only.
	target := `{"target":"` + f.hook.URL + `","reason":"maintenance"}`
	if code, _, _ = f.do(t, f.ann, "POST", "/api/v1/sinks/hook/endpoints/disable", target); code != 403 {
		t.Fatalf("a user disabling an endpoint: %d", code)
	}
	if code, _, _ = f.do(t, f.ann, "GET", "/api/v1/endpoints", ""); code != 403 {
		t.Fatalf("a user listing endpoints: %d", code)
	}
	if code, _, raw = f.do(t, f.admin, "POST", "/api/v1/sinks/hook/endpoints/disable", target); code != 200 {
		t.Fatalf("disable: %d %s", code, raw)
	}
	code, m, raw = f.do(t, f.admin, "GET", "/api/v1/sinks/hook/endpoints", "")
	eps, _ := m["endpoints"].([]any)
	if code != 200 || len(eps) != 1 || eps[0].(map[string]any)["disabled_at"] == nil ||
		eps[0].(map[string]any)["disabled_reason"] != "disabled by root: maintenance" {
		t.Fatalf("endpoints: %d %s", code, raw)
	}
	if code, m, _ = f.do(t, f.ann, "POST", fmt.Sprintf("/api/v1/deliveries/%d/redeliver", annID), ""); code != 409 || errCode(m) != "endpoint_disabled" {
		t.Fatalf("redeliver to a disabled endpoint: %d %v", code, m)
	}
	if code, _, _ = f.do(t, f.admin, "POST", "/api/v1/sinks/hook/endpoints/enable", `{}`); code != 400 {
		t.Fatalf("enable without a target: %d", code)
	}
	if code, _, raw = f.do(t, f.admin, "POST", "/api/v1/sinks/hook/endpoints/enable", target); code != 200 {
		t.Fatalf("enable: %d %s", code, raw)
	}
	before := f.received.Load()
	if code, _, raw = f.do(t, f.ann, "POST", fmt.Sprintf("/api/v1/deliveries/%d/redeliver", annID), ""); code != 202 {
		t.Fatalf("redeliver after enabling: %d %s", code, raw)
	}
	deadline := time.Now().Add(5 * time.Second)
	for f.received.Load() == before {
		if time.Now().After(deadline) {
			t.Fatal("redelivery after enabling not received")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
