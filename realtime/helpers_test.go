package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

const (
	testAppID  = "123"
	testKey    = "testkey"
	testSecret = "testsecret"
)

// newTestServer starts a Server behind a real HTTP server. mutate may
// change the configuration first. Both are shut down by t.Cleanup.
func newTestServer(t testing.TB, mutate func(*Config)) (*Server, *httptest.Server) {
	t.Helper()
	cfg := Config{
		Apps:   []App{{ID: testAppID, Key: testKey, Secret: testSecret, EnableClientEvents: true}},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
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
	return s, hs
}

func newTestLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newHTTPServer(t testing.TB, h http.Handler) *httptest.Server {
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	return hs
}

// frame is one message received by a test client.
type frame struct {
	Event   string          `json:"event"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
	UserID  string          `json:"user_id"`
}

// dataString returns the data as pusher-js sees it before parsing: the
// string for string data, the JSON text otherwise.
func (f frame) dataString() string { return dataString(f.Data) }

// decode parses the data (string-wrapped JSON or an object) into v.
func (f frame) decode(t testing.TB, v any) {
	t.Helper()
	if err := decodeData(f.Data, v); err != nil {
		t.Fatalf("decode %s data %s: %v", f.Event, f.Data, err)
	}
}

type client struct {
	t        testing.TB
	ws       *websocket.Conn
	socketID string
	frames   chan frame
	closed   chan error // receives the read error once
}

// wsURL turns the test server URL into the WebSocket URL for key.
func wsURL(hs *httptest.Server, key, query string) string {
	return "ws" + strings.TrimPrefix(hs.URL, "http") + "/app/" + key + query
}

// dialRaw connects without waiting for connection_established.
func dialRaw(t testing.TB, url string) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	ws.SetReadLimit(1 << 20)
	c := &client{t: t, ws: ws, frames: make(chan frame, 1024), closed: make(chan error, 1)}
	go c.readLoop()
	t.Cleanup(func() { _ = ws.CloseNow() })
	return c
}

// dial connects to the test app and waits for connection_established.
func dial(t testing.TB, hs *httptest.Server) *client {
	t.Helper()
	c := dialRaw(t, wsURL(hs, testKey, "?protocol=7&client=go-test&version=1.0"))
	f := c.expect("pusher:connection_established")
	var d struct {
		SocketID        string `json:"socket_id"`
		ActivityTimeout int    `json:"activity_timeout"`
	}
	f.decode(t, &d)
	c.socketID = d.SocketID
	return c
}

func (c *client) readLoop() {
	for {
		_, b, err := c.ws.Read(context.Background())
		if err != nil {
			c.closed <- err
			close(c.frames)
			return
		}
		var f frame
		if err := json.Unmarshal(b, &f); err != nil {
			c.closed <- errors.New("server sent invalid JSON: " + string(b))
			close(c.frames)
			return
		}
		c.frames <- f
	}
}

func (c *client) send(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	c.sendRaw(b)
}

func (c *client) sendRaw(b []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// next returns the next frame, failing the test after timeout.
func (c *client) next(timeout time.Duration) frame {
	c.t.Helper()
	select {
	case f, ok := <-c.frames:
		if !ok {
			c.t.Fatalf("connection closed: %v", <-c.closedErr())
		}
		return f
	case <-time.After(timeout):
		c.t.Fatalf("no frame within %v", timeout)
	}
	return frame{}
}

func (c *client) closedErr() chan error { return c.closed }

// expect returns the next frame, which must be event.
func (c *client) expect(event string) frame {
	c.t.Helper()
	f := c.next(5 * time.Second)
	if f.Event != event {
		c.t.Fatalf("got %s (channel %q, data %s), want %s", f.Event, f.Channel, f.Data, event)
	}
	return f
}

// sync proves that nothing is queued for the client: a ping's pong must
// be the very next frame.
func (c *client) sync() {
	c.t.Helper()
	c.send(map[string]any{"event": "pusher:ping", "data": map[string]any{}})
	c.expect("pusher:pong")
}

// expectClose waits for the connection to end and returns its close code.
func (c *client) expectClose() websocket.StatusCode {
	c.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-c.frames:
			if !ok {
				return websocket.CloseStatus(<-c.closed)
			}
		case <-deadline:
			c.t.Fatal("connection not closed within 10s")
		}
	}
}

func (c *client) subscribe(channel, auth, channelData string) {
	c.t.Helper()
	d := map[string]string{"channel": channel}
	if auth != "" {
		d["auth"] = auth
	}
	if channelData != "" {
		d["channel_data"] = channelData
	}
	c.send(map[string]any{"event": "pusher:subscribe", "data": d})
}

// subscribeOK subscribes with a correct signature and waits for success.
func (c *client) subscribeOK(channel, channelData string) frame {
	c.t.Helper()
	auth := ""
	if kindOf(channel).signed() {
		auth = ChannelAuth(testKey, testSecret, c.socketID, channel, channelData)
	}
	c.subscribe(channel, auth, channelData)
	f := c.expect("pusher_internal:subscription_succeeded")
	if f.Channel != channel {
		c.t.Fatalf("subscription_succeeded for %q, want %q", f.Channel, channel)
	}
	return f
}

// eventually polls cond until it holds or 5s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
