package natsbroker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	pusher "github.com/pusher/pusher-http-go/v5"

	"github.com/buildbridge/buildbridge/realtime"
	"github.com/buildbridge/buildbridge/realtime/natsbroker"
)

const (
	appID  = "77"
	key    = "clusterkey"
	secret = "clustersecret"
)

func natsURL(t *testing.T) string {
	t.Helper()
	u := os.Getenv("BUILDBRIDGE_TEST_NATS")
	if u == "" {
		t.Skip("BUILDBRIDGE_TEST_NATS is not set (e.g. nats://127.0.0.1:4222); skipping the NATS broker tests")
	}
	return u
}

// testPrefix keeps concurrent test runs on one NATS server apart.
func testPrefix() string {
	return fmt.Sprintf("buildbridge.realtime.test%d.", rand.Uint64())
}

func connect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.Name("realtime-natsbroker-test"))
	if err != nil {
		t.Fatalf("connect to NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// node is one buildbridge node: a realtime.Server on its own NATS
// connection and HTTP server.
type node struct {
	srv *realtime.Server
	hs  *httptest.Server
	nc  *nats.Conn
}

// newNode starts a node whose configuration mutate, unless nil, may
// change; n.nc is its NATS connection.
func newNode(t *testing.T, url, prefix string, mutate func(*realtime.Config)) *node {
	t.Helper()
	nc := connect(t, url)
	b, err := natsbroker.New(natsbroker.Config{Conn: nc, SubjectPrefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	cfg := realtime.Config{
		Apps:   []realtime.App{{ID: appID, Key: key, Secret: secret, EnableClientEvents: true}},
		Broker: b,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := realtime.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		hs.Close()
	})
	return &node{srv: s, hs: hs, nc: nc}
}

type wsClient struct {
	t        *testing.T
	ws       *websocket.Conn
	socketID string
}

type frame struct {
	Event   string          `json:"event"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
	UserID  string          `json:"user_id"`
}

func (f frame) str() string {
	var s string
	if json.Unmarshal(f.Data, &s) == nil {
		return s
	}
	return string(f.Data)
}

func (n *node) dial(t *testing.T) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	url := "ws" + strings.TrimPrefix(n.hs.URL, "http") + "/app/" + key + "?protocol=7"
	ws, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ws.CloseNow() })
	c := &wsClient{t: t, ws: ws}
	f := c.expect("pusher:connection_established")
	var d struct {
		SocketID string `json:"socket_id"`
	}
	_ = json.Unmarshal([]byte(f.str()), &d)
	c.socketID = d.SocketID
	return c
}

func (c *wsClient) send(v any) {
	c.t.Helper()
	b, _ := json.Marshal(v)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, b); err != nil {
		c.t.Fatal(err)
	}
}

func (c *wsClient) expect(event string) frame {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, b, err := c.ws.Read(ctx)
	if err != nil {
		c.t.Fatalf("waiting for %s: %v", event, err)
	}
	var f frame
	if err := json.Unmarshal(b, &f); err != nil {
		c.t.Fatal(err)
	}
	if f.Event != event {
		c.t.Fatalf("got %s %s, want %s", f.Event, f.Data, event)
	}
	return f
}

func (c *wsClient) subscribe(channel, channelData string) frame {
	c.t.Helper()
	d := map[string]string{"channel": channel}
	if strings.HasPrefix(channel, "private-") || strings.HasPrefix(channel, "presence-") {
		d["auth"] = realtime.ChannelAuth(key, secret, c.socketID, channel, channelData)
	}
	if channelData != "" {
		d["channel_data"] = channelData
	}
	c.send(map[string]any{"event": "pusher:subscribe", "data": d})
	return c.expect("pusher_internal:subscription_succeeded")
}

func TestTwoNodesShareEvents(t *testing.T) {
	url := natsURL(t)
	prefix := testPrefix()
	a, b := newNode(t, url, prefix, nil), newNode(t, url, prefix, nil)

	onB := b.dial(t)
	onB.subscribe("builds", "")
	onA := a.dial(t)
	onA.subscribe("builds", "")

	// Published in-process on node A, received on both nodes.
	if err := a.srv.Publish(context.Background(), appID, []string{"builds"}, "build-state-changed", `{"n":1}`, ""); err != nil {
		t.Fatal(err)
	}
	if f := onB.expect("build-state-changed"); f.str() != `{"n":1}` {
		t.Fatalf("on B: %+v", f)
	}
	onA.expect("build-state-changed")

	// Published through node B's HTTP API with the official library,
	// excluding the socket on A.
	pc := &pusher.Client{AppID: appID, Key: key, Secret: secret, Host: strings.TrimPrefix(b.hs.URL, "http://")}
	if err := pc.TriggerExclusive("builds", "via-http", "x", onA.socketID); err != nil {
		t.Fatal(err)
	}
	onB.expect("via-http")

	// A client event from A reaches B, not A.
	onA.subscribe("private-team", "")
	onB.subscribe("private-team", "")
	onA.send(map[string]any{"event": "client-wave", "channel": "private-team", "data": "{}"})
	onB.expect("client-wave")
	onA.send(map[string]any{"event": "pusher:ping", "data": map[string]any{}})
	onA.expect("pusher:pong")

	// Presence: a member joining on A is announced on B.
	onB.subscribe("presence-ops", `{"user_id":"b-user"}`)
	onA.subscribe("presence-ops", `{"user_id":"a-user"}`)
	onB.expectMember("pusher_internal:member_added", "a-user", "")

	// Binding a socket that lives on B, from A.
	if err := a.srv.BindSocket(appID, onB.socketID, "owner-9"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "UserSubscriptions on B to be 3", func() bool { return b.srv.UserSubscriptions(appID, "owner-9") == 3 })
	// Node A counts them too, from B's reports (within
	// Cluster.FlushInterval: 100ms).
	waitFor(t, "UserSubscriptions on A to be 3", func() bool { return a.srv.UserSubscriptions(appID, "owner-9") == 3 })

	// Terminating a user signed in on B, from A.
	ud := `{"id":"leaver"}`
	onB.send(map[string]any{"event": "pusher:signin", "data": map[string]string{
		"user_data": ud, "auth": realtime.UserAuth(key, secret, onB.socketID, ud)}})
	onB.expect("pusher:signin_success")
	if err := a.srv.TerminateUserConnections(context.Background(), appID, "leaver"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		_, _, err := onB.ws.Read(ctx)
		if err != nil {
			if code := websocket.CloseStatus(err); code != realtime.CodeUnauthorized {
				t.Fatalf("closed with %d (%v), want 4009", code, err)
			}
			break
		}
	}
}

func TestBrokerOrderAndUnsubscribe(t *testing.T) {
	url := natsURL(t)
	prefix := testPrefix()
	b, err := natsbroker.New(natsbroker.Config{Conn: connect(t, url), SubjectPrefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan realtime.Message, 2000)
	stop, err := b.Subscribe(func(m realtime.Message) { got <- m })
	if err != nil {
		t.Fatal(err)
	}
	const n = 1000
	for i := range n {
		if err := b.Publish(context.Background(), realtime.Message{Kind: realtime.KindEvent, AppID: "a",
			Channels: []string{"c"}, Event: "e", Data: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		select {
		case m := <-got:
			if m.Data != fmt.Sprint(i) || m.Channels[0] != "c" {
				t.Fatalf("message %d: %+v", i, m)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d of %d messages", i, n)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(context.Background(), realtime.Message{Kind: realtime.KindEvent, AppID: "a"}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		t.Fatalf("delivered after unsubscribe: %+v", m)
	case <-time.After(200 * time.Millisecond):
	}
	if err := b.Publish(context.Background(), realtime.Message{AppID: "a.b"}); err == nil {
		t.Error("an app id with a dot was published")
	}
}

func TestConfigValidate(t *testing.T) {
	if _, err := natsbroker.New(natsbroker.Config{}); err == nil || !strings.Contains(err.Error(), "Conn") {
		t.Errorf("missing Conn: %v", err)
	}
}
