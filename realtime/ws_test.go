package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestConnectionEstablished(t *testing.T) {
	_, hs := newTestServer(t, nil)
	c := dialRaw(t, wsURL(hs, testKey, "?protocol=7&client=js&version=8.4.0&flash=false"))
	f := c.expect("pusher:connection_established")
	if f.Data[0] != '"' {
		t.Errorf("data should be a JSON string as Pusher sends it, got %s", f.Data)
	}
	var d struct {
		SocketID        string `json:"socket_id"`
		ActivityTimeout int    `json:"activity_timeout"`
	}
	f.decode(t, &d)
	if !regexp.MustCompile(`^\d+\.\d+$`).MatchString(d.SocketID) {
		t.Errorf("socket_id %q does not match \\d+.\\d+", d.SocketID)
	}
	if d.ActivityTimeout != 120 {
		t.Errorf("activity_timeout = %d, want 120", d.ActivityTimeout)
	}
}

func TestClientPingGetsPong(t *testing.T) {
	_, hs := newTestServer(t, nil)
	c := dial(t, hs)
	c.send(map[string]any{"event": "pusher:ping", "data": map[string]any{}})
	c.expect("pusher:pong")
}

func TestServerPingsSilentClientAndClosesWithoutPong(t *testing.T) {
	_, hs := newTestServer(t, func(c *Config) {
		c.ActivityTimeout = 150 * time.Millisecond
		c.PongTimeout = 150 * time.Millisecond
	})
	c := dial(t, hs)
	start := time.Now()
	c.expect("pusher:ping")
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("ping after %v, before the activity timeout", d)
	}
	// Answering keeps the connection: the next ping comes, not a close.
	c.send(map[string]any{"event": "pusher:pong", "data": map[string]any{}})
	c.expect("pusher:ping")
	// Silence now: closed with 4201.
	if code := c.expectClose(); code != CodePongTimeout {
		t.Fatalf("close code %d, want %d", code, CodePongTimeout)
	}
}

func TestUnknownAppKeyRefused(t *testing.T) {
	_, hs := newTestServer(t, nil)
	c := dialRaw(t, wsURL(hs, "nosuchkey", "?protocol=7"))
	f := c.expect("pusher:error")
	var d struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	f.decode(t, &d)
	if d.Code != CodeAppNotFound {
		t.Errorf("error code %d, want 4001", d.Code)
	}
	if code := c.expectClose(); code != CodeAppNotFound {
		t.Errorf("close code %d, want 4001", code)
	}
}

func TestProtocolVersionRefused(t *testing.T) {
	_, hs := newTestServer(t, nil)
	for _, tc := range []struct {
		query string
		code  websocket.StatusCode
	}{
		{"?protocol=6", CodeUnsupportedProtocol},
		{"?protocol=5&client=js", CodeUnsupportedProtocol},
		{"?protocol=8", CodeUnsupportedProtocol},
		{"?protocol=seven", CodeInvalidVersion},
		{"?client=js", CodeNoProtocol},
	} {
		c := dialRaw(t, wsURL(hs, testKey, tc.query))
		f := c.expect("pusher:error")
		var d struct{ Code websocket.StatusCode }
		f.decode(t, &d)
		if d.Code != tc.code {
			t.Errorf("%s: error code %d, want %d", tc.query, d.Code, tc.code)
		}
		if code := c.expectClose(); code != tc.code {
			t.Errorf("%s: close code %d, want %d", tc.query, code, tc.code)
		}
	}
}

func TestMaxConnections(t *testing.T) {
	_, hs := newTestServer(t, func(c *Config) { c.Apps[0].MaxConnections = 2 })
	a, b := dial(t, hs), dial(t, hs)
	c := dialRaw(t, wsURL(hs, testKey, "?protocol=7"))
	c.expect("pusher:error")
	if code := c.expectClose(); code != CodeOverCapacity {
		t.Fatalf("close code %d, want 4100", code)
	}
	a.sync()
	b.sync()
}

func TestMalformedJSONKeepsConnection(t *testing.T) {
	_, hs := newTestServer(t, nil)
	c := dial(t, hs)
	for _, bad := range []string{`{not json`, `[]`, `"str"`, `{"event":5}`, `{}`, `{"event":"pusher:subscribe","data":7}`} {
		c.sendRaw([]byte(bad))
		f := c.expect("pusher:error")
		var d struct {
			Code    int
			Message string
		}
		f.decode(t, &d)
		if d.Code != CodeBadMessage || d.Message == "" {
			t.Errorf("%s: error %+v", bad, d)
		}
	}
	c.sync()
}

func TestOversizedFrame(t *testing.T) {
	_, hs := newTestServer(t, func(c *Config) { c.MaxMessageSize = 1024 })
	c := dial(t, hs)
	big := `{"event":"client-x","channel":"private-a","data":"` + strings.Repeat("x", 2000) + `"}`
	c.sendRaw([]byte(big))
	f := c.expect("pusher:error")
	var d struct {
		Code    int
		Message string
	}
	f.decode(t, &d)
	if d.Code != CodeBadMessage || !strings.Contains(d.Message, "too large") {
		t.Errorf("error %+v, want a too-large error", d)
	}
	c.sync() // still open and in step

	// Far beyond the limit the WebSocket layer closes with 1009.
	c.sendRaw([]byte(strings.Repeat("y", 9*1024)))
	if code := c.expectClose(); code != websocket.StatusMessageTooBig {
		t.Fatalf("close code %d, want 1009", code)
	}
}

func TestSubscribePublicAndPublish(t *testing.T) {
	s, hs := newTestServer(t, nil)
	c := dial(t, hs)
	f := c.subscribeOK("news", "")
	if f.dataString() != "{}" {
		t.Errorf("subscription_succeeded data %s", f.Data)
	}
	if err := s.Publish(context.Background(), testAppID, []string{"news"}, "headline", `{"a":1}`, ""); err != nil {
		t.Fatal(err)
	}
	ev := c.expect("headline")
	if ev.Channel != "news" || ev.dataString() != `{"a":1}` {
		t.Fatalf("event %+v", ev)
	}
	// Unsubscribed: nothing more arrives.
	c.send(map[string]any{"event": "pusher:unsubscribe", "data": map[string]string{"channel": "news"}})
	c.sync()
	if err := s.Publish(context.Background(), testAppID, []string{"news"}, "headline", "x", ""); err != nil {
		t.Fatal(err)
	}
	c.sync()
	if ci, _ := s.ChannelInfo(testAppID, "news"); ci.Occupied {
		t.Errorf("channel still occupied after unsubscribe: %+v", ci)
	}
}

func TestInvalidChannelName(t *testing.T) {
	_, hs := newTestServer(t, nil)
	c := dial(t, hs)
	c.subscribe("bad channel!", "", "")
	f := c.expect("pusher:subscription_error")
	var d struct {
		Type   string
		Status int
	}
	f.decode(t, &d)
	if d.Status != 400 {
		t.Errorf("status %d, want 400", d.Status)
	}
}

func TestPrivateChannelAuth(t *testing.T) {
	_, hs := newTestServer(t, nil)
	c := dial(t, hs)
	ch := "private-orders"
	wrongSecret := ChannelAuth(testKey, "not-the-secret", c.socketID, ch, "")
	otherSocket := ChannelAuth(testKey, testSecret, "1.2", ch, "")
	otherChannel := ChannelAuth(testKey, testSecret, c.socketID, "private-other", "")
	otherKey := ChannelAuth("otherkey", testSecret, c.socketID, ch, "")
	for name, auth := range map[string]string{"none": "", "wrong secret": wrongSecret, "other socket": otherSocket,
		"other channel": otherChannel, "other key": otherKey, "garbage": "testkey:zz", "no colon": "abc"} {
		c.subscribe(ch, auth, "")
		f := c.expect("pusher:subscription_error")
		var d struct {
			Type   string `json:"type"`
			Error  string `json:"error"`
			Status int    `json:"status"`
		}
		f.decode(t, &d)
		if f.Channel != ch || d.Type != "AuthError" || d.Status != 401 || d.Error == "" {
			t.Errorf("%s: subscription_error %+v on %q", name, d, f.Channel)
		}
	}
	c.subscribeOK(ch, "")
	c.subscribeOK("private-encrypted-vault", "")
}

type presenceData struct {
	Presence struct {
		IDs   []string                   `json:"ids"`
		Hash  map[string]json.RawMessage `json:"hash"`
		Count int                        `json:"count"`
	} `json:"presence"`
}

func TestPresenceMembers(t *testing.T) {
	s, hs := newTestServer(t, nil)
	const ch = "presence-room"
	alice := dial(t, hs)
	var pd presenceData
	alice.subscribeOK(ch, `{"user_id":"alice","user_info":{"name":"Alice"}}`).decode(t, &pd)
	if pd.Presence.Count != 1 || pd.Presence.IDs[0] != "alice" || string(pd.Presence.Hash["alice"]) != `{"name":"Alice"}` {
		t.Fatalf("alice's presence data %+v", pd)
	}

	bob1 := dial(t, hs)
	pd = presenceData{}
	bob1.subscribeOK(ch, `{"user_id":"bob"}`).decode(t, &pd)
	if pd.Presence.Count != 2 || len(pd.Presence.IDs) != 2 {
		t.Fatalf("bob's presence data %+v", pd)
	}
	var added struct {
		UserID   string          `json:"user_id"`
		UserInfo json.RawMessage `json:"user_info"`
	}
	alice.expect("pusher_internal:member_added").decode(t, &added)
	if added.UserID != "bob" {
		t.Fatalf("member_added %+v", added)
	}
	bob1.sync() // the joining socket is not told about itself

	// A second socket of bob: bob is already a member, nobody is told.
	bob2 := dial(t, hs)
	bob2.subscribeOK(ch, `{"user_id":"bob"}`)
	alice.sync()
	if users, _ := s.PresenceUsers(testAppID, ch); len(users) != 2 {
		t.Fatalf("users %v", users)
	}

	// Bob's first socket leaves: bob is still there.
	bob1.send(map[string]any{"event": "pusher:unsubscribe", "data": map[string]string{"channel": ch}})
	bob1.sync()
	alice.sync()
	// The last one leaves (by closing): member_removed.
	_ = bob2.ws.Close(websocket.StatusNormalClosure, "")
	var removed struct {
		UserID string `json:"user_id"`
	}
	alice.expect("pusher_internal:member_removed").decode(t, &removed)
	if removed.UserID != "bob" {
		t.Fatalf("member_removed %+v", removed)
	}
	if ci, _ := s.ChannelInfo(testAppID, ch); ci.UserCount != 1 || ci.SubscriptionCount != 1 {
		t.Fatalf("channel info %+v", ci)
	}
}

func TestPresenceNeedsUserID(t *testing.T) {
	_, hs := newTestServer(t, nil)
	c := dial(t, hs)
	for _, cd := range []string{`{"user_info":{}}`, `not json`, `{"user_id":""}`, `{"user_id":{}}`} {
		c.subscribe("presence-x", ChannelAuth(testKey, testSecret, c.socketID, "presence-x", cd), cd)
		f := c.expect("pusher:subscription_error")
		var d struct{ Status int }
		f.decode(t, &d)
		if d.Status != 400 {
			t.Errorf("channel_data %s: status %d", cd, d.Status)
		}
	}
	// A numeric user id is accepted and reported as a string.
	var pd presenceData
	c.subscribeOK("presence-x", `{"user_id":42}`).decode(t, &pd)
	if pd.Presence.IDs[0] != "42" {
		t.Fatalf("ids %v", pd.Presence.IDs)
	}
}

func TestPresenceMemberLimit(t *testing.T) {
	_, hs := newTestServer(t, nil)
	const ch = "presence-full"
	for i := range MaxPresenceMembers {
		c := dial(t, hs)
		c.subscribeOK(ch, fmt.Sprintf(`{"user_id":"u%d"}`, i))
	}
	c := dial(t, hs)
	cd := `{"user_id":"one-too-many"}`
	c.subscribe(ch, ChannelAuth(testKey, testSecret, c.socketID, ch, cd), cd)
	var d struct {
		Type   string
		Status int
	}
	c.expect("pusher:subscription_error").decode(t, &d)
	if d.Type != "LimitReached" {
		t.Fatalf("error %+v", d)
	}
	// An existing member may still add a socket.
	c.subscribeOK(ch, `{"user_id":"u0"}`)
}

func TestClientEvents(t *testing.T) {
	_, hs := newTestServer(t, nil)
	const ch = "private-chat"
	a, b := dial(t, hs), dial(t, hs)
	a.subscribeOK(ch, "")
	b.subscribeOK(ch, "")
	a.send(map[string]any{"event": "client-typing", "channel": ch, "data": map[string]any{"who": "a"}})
	f := b.expect("client-typing")
	if f.Channel != ch || f.dataString() != `{"who":"a"}` {
		t.Fatalf("client event %+v", f)
	}
	a.sync() // not echoed to the sender

	// Refused: a public channel, a channel not subscribed, an encrypted one.
	b.subscribeOK("public-room", "")
	b.subscribeOK("private-encrypted-x", "")
	for _, channel := range []string{"public-room", "private-not-mine", "private-encrypted-x"} {
		b.send(map[string]any{"event": "client-x", "channel": channel, "data": "{}"})
		var d struct{ Code int }
		b.expect("pusher:error").decode(t, &d)
		if d.Code != CodeBadMessage {
			t.Errorf("%s: code %d", channel, d.Code)
		}
	}
	a.sync()
}

func TestClientEventsDisabled(t *testing.T) {
	_, hs := newTestServer(t, func(c *Config) { c.Apps[0].EnableClientEvents = false })
	a, b := dial(t, hs), dial(t, hs)
	a.subscribeOK("private-chat", "")
	b.subscribeOK("private-chat", "")
	a.send(map[string]any{"event": "client-typing", "channel": "private-chat", "data": "{}"})
	var d struct {
		Code    int
		Message string
	}
	a.expect("pusher:error").decode(t, &d)
	if !strings.Contains(d.Message, "not enabled") {
		t.Errorf("error %+v", d)
	}
	b.sync()
}

func TestClientEventsRateLimited(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	_, hs := newTestServer(t, func(c *Config) {
		c.Apps[0].ClientEventsPerSecond = 3
		c.Now = func() time.Time { return time.Unix(0, now.Load()) }
	})
	a, b := dial(t, hs), dial(t, hs)
	a.subscribeOK("private-chat", "")
	b.subscribeOK("private-chat", "")
	for i := range 5 {
		a.send(map[string]any{"event": "client-n", "channel": "private-chat", "data": fmt.Sprint(i)})
	}
	for range 2 {
		var d struct{ Code int }
		a.expect("pusher:error").decode(t, &d)
		if d.Code != CodeRateLimited {
			t.Fatalf("code %d, want 4301", d.Code)
		}
	}
	for i := range 3 {
		if f := b.expect("client-n"); f.dataString() != fmt.Sprint(i) {
			t.Fatalf("event %d: %+v", i, f)
		}
	}
	b.sync()
	// A new second: allowed again.
	now.Add(int64(time.Second))
	a.send(map[string]any{"event": "client-n", "channel": "private-chat", "data": "again"})
	b.expect("client-n")
}

func TestPresenceClientEventCarriesUserID(t *testing.T) {
	_, hs := newTestServer(t, nil)
	const ch = "presence-chat"
	a, b := dial(t, hs), dial(t, hs)
	a.subscribeOK(ch, `{"user_id":"ann"}`)
	b.subscribeOK(ch, `{"user_id":"ben"}`)
	a.expect("pusher_internal:member_added")
	b.send(map[string]any{"event": "client-hi", "channel": ch, "data": "{}"})
	if f := a.expect("client-hi"); f.UserID != "ben" {
		t.Fatalf("user_id %q, want ben", f.UserID)
	}
}

func TestSigninAndServerToUser(t *testing.T) {
	s, hs := newTestServer(t, nil)
	c := dial(t, hs)
	ud := `{"id":"u-7","user_info":{"name":"Ann"}}`

	c.send(map[string]any{"event": "pusher:signin", "data": map[string]string{
		"user_data": ud, "auth": UserAuth(testKey, "wrong", c.socketID, ud)}})
	var e struct{ Code int }
	c.expect("pusher:error").decode(t, &e)
	if e.Code != CodeUnauthorized {
		t.Fatalf("bad signin: code %d", e.Code)
	}
	// Not signed in: the user's channel is refused.
	c.subscribe("#server-to-user-u-7", "", "")
	c.expect("pusher:subscription_error")

	c.send(map[string]any{"event": "pusher:signin", "data": map[string]string{
		"user_data": ud, "auth": UserAuth(testKey, testSecret, c.socketID, ud)}})
	var ok struct {
		UserData string `json:"user_data"`
	}
	c.expect("pusher:signin_success").decode(t, &ok)
	if ok.UserData != ud {
		t.Fatalf("signin_success user_data %q", ok.UserData)
	}
	// pusher-js then subscribes to its own channel with an empty auth.
	c.subscribe("#server-to-user-u-7", "", "")
	c.expect("pusher_internal:subscription_succeeded")
	c.subscribe("#server-to-user-someone-else", "", "")
	c.expect("pusher:subscription_error")

	if err := s.Publish(context.Background(), testAppID, []string{"#server-to-user-u-7"}, "notice", "hi", ""); err != nil {
		t.Fatal(err)
	}
	if f := c.expect("notice"); f.Channel != "#server-to-user-u-7" || f.dataString() != "hi" {
		t.Fatalf("event %+v", f)
	}

	if err := s.TerminateUserConnections(context.Background(), testAppID, "u-7"); err != nil {
		t.Fatal(err)
	}
	if code := c.expectClose(); code != CodeUnauthorized {
		t.Fatalf("close code %d, want 4009", code)
	}
}

func TestPublishFanOutExcludesSocket(t *testing.T) {
	s, hs := newTestServer(t, nil)
	var cs []*client
	for range 3 {
		c := dial(t, hs)
		c.subscribeOK("fan", "")
		cs = append(cs, c)
	}
	other := dial(t, hs)
	other.subscribeOK("elsewhere", "")
	if err := s.Publish(context.Background(), testAppID, []string{"fan", "elsewhere"}, "e", "d", cs[1].socketID); err != nil {
		t.Fatal(err)
	}
	cs[0].expect("e")
	cs[2].expect("e")
	cs[1].sync()
	if f := other.expect("e"); f.Channel != "elsewhere" {
		t.Fatalf("channel %q", f.Channel)
	}
	// Bad publishes are refused before reaching anyone.
	for name, err := range map[string]error{
		"unknown app": s.Publish(context.Background(), "nope", []string{"fan"}, "e", "d", ""),
		"bad channel": s.Publish(context.Background(), testAppID, []string{"a b"}, "e", "d", ""),
		"no channels": s.Publish(context.Background(), testAppID, nil, "e", "d", ""),
		"big data":    s.Publish(context.Background(), testAppID, []string{"fan"}, "e", strings.Repeat("x", MaxEventDataSize+1), ""),
		"bad socket":  s.Publish(context.Background(), testAppID, []string{"fan"}, "e", "d", "abc"),
		"no event":    s.Publish(context.Background(), testAppID, []string{"fan"}, "", "d", ""),
	} {
		if err == nil {
			t.Errorf("%s: published", name)
		}
	}
	cs[0].sync()
}

var errDenied = errors.New("you have too many open channels (limit 1)")

func TestAuthorizeHookAndUserSubscriptions(t *testing.T) {
	var seen sync.Map
	var srv atomic.Pointer[Server]
	s, hs := newTestServer(t, func(c *Config) {
		c.Hooks.Authorize = func(ctx context.Context, req SubscribeRequest) error {
			seen.Store(req.Channel, req)
			if req.UserID != "" && srv.Load().UserSubscriptions(req.AppID, req.UserID) >= 1 {
				return errDenied
			}
			return nil
		}
	})
	srv.Store(s)
	c := dial(t, hs)
	if err := s.BindSocket(testAppID, c.socketID, "user-5"); err != nil {
		t.Fatal(err)
	}
	c.subscribeOK("public-free", "") // public: no hook, but counted
	if n := s.UserSubscriptions(testAppID, "user-5"); n != 1 {
		t.Fatalf("UserSubscriptions = %d, want 1", n)
	}
	c.subscribe("private-user-5", ChannelAuth(testKey, testSecret, c.socketID, "private-user-5", ""), "")
	var d struct {
		Type   string `json:"type"`
		Error  string `json:"error"`
		Status int    `json:"status"`
	}
	c.expect("pusher:subscription_error").decode(t, &d)
	if d.Status != 403 || d.Error != errDenied.Error() {
		t.Fatalf("subscription_error %+v", d)
	}
	v, _ := seen.Load("private-user-5")
	if req := v.(SubscribeRequest); req.UserID != "user-5" || req.SocketID != c.socketID || req.AppID != testAppID {
		t.Fatalf("hook saw %+v", req)
	}
	// Freeing a subscription makes room.
	c.send(map[string]any{"event": "pusher:unsubscribe", "data": map[string]string{"channel": "public-free"}})
	c.sync()
	if n := s.UserSubscriptions(testAppID, "user-5"); n != 0 {
		t.Fatalf("UserSubscriptions = %d after unsubscribe", n)
	}
	c.subscribeOK("private-user-5", "")
	// Closing the socket frees its subscriptions.
	_ = c.ws.Close(websocket.StatusNormalClosure, "")
	eventually(t, "subscriptions freed", func() bool { return s.UserSubscriptions(testAppID, "user-5") == 0 })

	if err := s.BindSocket(testAppID, "not-a-socket", "u"); err == nil {
		t.Error("BindSocket accepted a malformed socket id")
	}
}

func TestSubscriptionCount(t *testing.T) {
	_, hs := newTestServer(t, func(c *Config) { c.Apps[0].EnableSubscriptionCount = true })
	a := dial(t, hs)
	a.subscribeOK("counted", "")
	var d struct {
		N int `json:"subscription_count"`
	}
	a.expect("pusher_internal:subscription_count").decode(t, &d)
	if d.N != 1 {
		t.Fatalf("count %d", d.N)
	}
	b := dial(t, hs)
	b.subscribeOK("counted", "")
	b.expect("pusher_internal:subscription_count").decode(t, &d)
	if d.N != 2 {
		t.Fatalf("count %d", d.N)
	}
	a.expect("pusher_internal:subscription_count").decode(t, &d)
	if d.N != 2 {
		t.Fatalf("count %d", d.N)
	}
	_ = b.ws.Close(websocket.StatusNormalClosure, "")
	a.expect("pusher_internal:subscription_count").decode(t, &d)
	if d.N != 1 {
		t.Fatalf("count %d", d.N)
	}
}

func TestSlowConsumerIsDisconnected(t *testing.T) {
	s, hs := newTestServer(t, func(c *Config) {
		c.SendQueueSize = 8
		// Long enough that a publisher waiting for the slow client would
		// show, short enough for the test.
		c.WriteTimeout = 2 * time.Second
	})
	// The slow client's frames are never consumed: its reader stops once
	// its channel is full, then the socket buffers fill, then its queue.
	slow := dial(t, hs)
	slow.subscribeOK("firehose", "")
	fast := dial(t, hs)
	fast.subscribeOK("firehose", "")
	var received atomic.Int64
	go func() {
		for f := range fast.frames {
			if f.Event == "burst" {
				received.Add(1)
			}
		}
	}()
	data := strings.Repeat("z", 8<<10)
	slowGone := func() bool {
		ci, _ := s.ChannelInfo(testAppID, "firehose")
		return ci.SubscriptionCount == 1
	}
	sent := int64(0)
	deadline := time.Now().Add(30 * time.Second)
	for !slowGone() {
		if time.Now().After(deadline) {
			t.Fatalf("slow consumer still subscribed after %d events", sent)
		}
		start := time.Now()
		if err := s.Publish(context.Background(), testAppID, []string{"firehose"}, "burst", data, ""); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("Publish blocked for %v", d)
		}
		sent++
		// Keep the fast client within its queue.
		for received.Load() < sent-4 {
			time.Sleep(100 * time.Microsecond)
		}
	}
	eventually(t, "fast consumer got everything", func() bool { return received.Load() == sent })
}

func TestShutdownClosesWith4200(t *testing.T) {
	cfg := Config{Apps: []App{{ID: testAppID, Key: testKey, Secret: testSecret}}}
	cfg.Logger = newTestLogger()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := newHTTPServer(t, s.Handler())
	var cs []*client
	for range 5 {
		c := dial(t, hs)
		c.subscribeOK("x", "")
		cs = append(cs, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if code := c.expectClose(); code != CodeReconnect {
			t.Errorf("close code %d, want 4200", code)
		}
	}
	if st := s.Stats(); st.Connections != 0 {
		t.Errorf("connections after shutdown: %+v", st)
	}
	resp, err := http.Get(hs.URL + "/app/" + testKey + "?protocol=7")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("after shutdown: status %d, want 503", resp.StatusCode)
	}
	if err := s.Publish(context.Background(), testAppID, []string{"x"}, "e", "d", ""); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Publish after shutdown: %v", err)
	}
}

func TestWebSocketPingAnswered(t *testing.T) {
	_, hs := newTestServer(t, nil)
	c := dial(t, hs)
	c.subscribeOK("x", "")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for range 3 {
		if err := c.ws.Ping(ctx); err != nil {
			t.Fatalf("WebSocket ping: %v", err)
		}
	}
	c.sync()
}

// serverGoroutines lists the goroutines running code of this package
// (test code aside).
func serverGoroutines() []string {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "buildbridge/realtime.") && !strings.Contains(g, "_test.go") &&
			!strings.Contains(g, "realtime.Test") {
			out = append(out, g)
		}
	}
	return out
}

func TestShutdownLeavesNoGoroutine(t *testing.T) {
	s, err := New(Config{Apps: []App{{ID: testAppID, Key: testKey, Secret: testSecret, EnableClientEvents: true}},
		Logger: newTestLogger()})
	if err != nil {
		t.Fatal(err)
	}
	hs := newHTTPServer(t, s.Handler())
	for i := range 20 {
		c := dial(t, hs)
		c.subscribeOK(fmt.Sprintf("private-g%d", i%3), "")
		if i%2 == 0 {
			c.subscribeOK("presence-g", fmt.Sprintf(`{"user_id":"u%d"}`, i))
		}
	}
	if err := s.Publish(context.Background(), testAppID, []string{"private-g0", "private-g1"}, "e", "d", ""); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// A read loop's goroutine may still be on its way out (in goexit)
	// just after it counted itself done: allow it a moment.
	left := serverGoroutines()
	for deadline := time.Now().Add(time.Second); len(left) > 0 && time.Now().Before(deadline); left = serverGoroutines() {
		time.Sleep(10 * time.Millisecond)
	}
	if len(left) > 0 {
		t.Fatalf("%d goroutines left after Shutdown:\n%s", len(left), strings.Join(left, "\n\n"))
	}
}

// Subscriptions, unsubscriptions, closes and publishes all at once: the
// race detector and the final state check the locking.
func TestConcurrentChurn(t *testing.T) {
	s, hs := newTestServer(t, func(c *Config) { c.Apps[0].EnableSubscriptionCount = true })
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for p := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ch := fmt.Sprintf("churn-%d", i%5)
				if err := s.Publish(context.Background(), testAppID, []string{ch, "presence-churn"}, "e", fmt.Sprint(p, i), ""); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for w := range 8 {
		wg.Go(func() {
			for round := range 5 {
				c := dial(t, hs)
				// Drain whatever arrives so nothing blocks.
				go func() {
					for range c.frames {
					}
				}()
				for i := range 5 {
					ch := fmt.Sprintf("churn-%d", (w+i+round)%5)
					c.subscribe(ch, "", "")
					cd := fmt.Sprintf(`{"user_id":"w%d"}`, w)
					c.subscribe("presence-churn", ChannelAuth(testKey, testSecret, c.socketID, "presence-churn", cd), cd)
					if i%2 == 0 {
						c.send(map[string]any{"event": "pusher:unsubscribe", "data": map[string]string{"channel": ch}})
					}
				}
				_ = c.ws.CloseNow()
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	eventually(t, "all channels vacated", func() bool { return s.Stats().Channels == 0 && s.Stats().Connections == 0 })
}

// unwrapOnly is middleware's response writer: no Hijack, only Unwrap.
type unwrapOnly struct{ http.ResponseWriter }

func (w unwrapOnly) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func TestUpgradeThroughWrappingMiddleware(t *testing.T) {
	s, _ := newTestServer(t, nil)
	hs := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.Handler().ServeHTTP(unwrapOnly{w}, r)
	}))
	c := dial(t, hs)
	c.subscribeOK("wrapped", "")
	if err := s.Publish(context.Background(), testAppID, []string{"wrapped"}, "e", "d", ""); err != nil {
		t.Fatal(err)
	}
	c.expect("e")
}
