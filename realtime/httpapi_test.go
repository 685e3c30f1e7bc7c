package realtime

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	pusher "github.com/pusher/pusher-http-go/v5"
)

// pusherClient is the official server library pointed at the test server.
func pusherClient(hs *httptest.Server, secret string) *pusher.Client {
	return &pusher.Client{AppID: testAppID, Key: testKey, Secret: secret,
		Host: strings.TrimPrefix(hs.URL, "http://"), Secure: false}
}

func TestHTTPAPITrigger(t *testing.T) {
	_, hs := newTestServer(t, nil)
	pc := pusherClient(hs, testSecret)
	a, b := dial(t, hs), dial(t, hs)
	a.subscribeOK("orders", "")
	b.subscribeOK("private-user-1", "")

	if err := pc.Trigger("orders", "created", map[string]any{"id": 7}); err != nil {
		t.Fatalf("Trigger: %v", err)
	}
	if f := a.expect("created"); f.dataString() != `{"id":7}` || f.Channel != "orders" {
		t.Fatalf("event %+v", f)
	}

	if err := pc.TriggerMulti([]string{"orders", "private-user-1"}, "multi", "plain text"); err != nil {
		t.Fatalf("TriggerMulti: %v", err)
	}
	a.expect("multi")
	if f := b.expect("multi"); f.dataString() != "plain text" {
		t.Fatalf("event %+v", f)
	}

	// Excluding the sender's socket.
	if err := pc.TriggerExclusive("orders", "excl", "x", a.socketID); err != nil {
		t.Fatalf("TriggerExclusive: %v", err)
	}
	a.sync()

	// SendToUser reaches a signed-in connection.
	ud := `{"id":"42"}`
	b.send(map[string]any{"event": "pusher:signin", "data": map[string]string{
		"user_data": ud, "auth": UserAuth(testKey, testSecret, b.socketID, ud)}})
	b.expect("pusher:signin_success")
	if err := pc.SendToUser("42", "for-you", map[string]int{"n": 1}); err != nil {
		t.Fatalf("SendToUser: %v", err)
	}
	if f := b.expect("for-you"); f.Channel != "#server-to-user-42" {
		t.Fatalf("event %+v", f)
	}
}

func TestHTTPAPITriggerWithInfoAndBatch(t *testing.T) {
	_, hs := newTestServer(t, nil)
	pc := pusherClient(hs, testSecret)
	a, b := dial(t, hs), dial(t, hs)
	a.subscribeOK("presence-lobby", `{"user_id":"ann"}`)
	b.subscribeOK("presence-lobby", `{"user_id":"ann"}`)
	b.subscribeOK("news", "")

	res, err := pc.TriggerWithParams("presence-lobby", "hello", "d",
		pusher.TriggerParams{Info: ptr("user_count,subscription_count")})
	if err != nil {
		t.Fatalf("TriggerWithParams: %v", err)
	}
	got := res.Channels["presence-lobby"]
	if got.UserCount == nil || *got.UserCount != 1 || got.SubscriptionCount == nil || *got.SubscriptionCount != 2 {
		t.Fatalf("info %+v", got)
	}
	a.expect("hello")
	b.expect("hello")

	batch, err := pc.TriggerBatch([]pusher.Event{
		{Channel: "news", Name: "b1", Data: "one", Info: ptr("subscription_count")},
		{Channel: "presence-lobby", Name: "b2", Data: map[string]int{"two": 2}, SocketID: &a.socketID},
	})
	if err != nil {
		t.Fatalf("TriggerBatch: %v", err)
	}
	if len(batch.Batch) != 2 || batch.Batch[0].SubscriptionCount == nil || *batch.Batch[0].SubscriptionCount != 1 {
		t.Fatalf("batch info %+v", batch)
	}
	if f := b.expect("b1"); f.dataString() != "one" {
		t.Fatalf("b1 %+v", f)
	}
	if f := b.expect("b2"); f.dataString() != `{"two":2}` {
		t.Fatalf("b2 %+v", f)
	}
	a.sync() // excluded from b2
}

func TestHTTPAPIChannelQueries(t *testing.T) {
	_, hs := newTestServer(t, nil)
	pc := pusherClient(hs, testSecret)
	c1, c2, c3 := dial(t, hs), dial(t, hs), dial(t, hs)
	c1.subscribeOK("presence-room-1", `{"user_id":"u1"}`)
	c2.subscribeOK("presence-room-1", `{"user_id":"u2"}`)
	c1.expect("pusher_internal:member_added")
	c3.subscribeOK("presence-room-1", `{"user_id":"u2"}`)
	c1.subscribeOK("presence-room-2", `{"user_id":"u1"}`)
	c1.subscribeOK("private-a", "")
	c2.subscribeOK("public-b", "")

	all, err := pc.Channels(pusher.ChannelsParams{})
	if err != nil {
		t.Fatalf("Channels: %v", err)
	}
	if len(all.Channels) != 4 {
		t.Fatalf("channels %+v", all.Channels)
	}
	pres, err := pc.Channels(pusher.ChannelsParams{FilterByPrefix: ptr("presence-"), Info: ptr("user_count")})
	if err != nil {
		t.Fatalf("Channels(presence-, user_count): %v", err)
	}
	if len(pres.Channels) != 2 || pres.Channels["presence-room-1"].UserCount != 2 || pres.Channels["presence-room-2"].UserCount != 1 {
		t.Fatalf("presence channels %+v", pres.Channels)
	}
	if _, err := pc.Channels(pusher.ChannelsParams{FilterByPrefix: ptr("private-"), Info: ptr("user_count")}); err == nil ||
		!strings.Contains(err.Error(), "400") {
		t.Errorf("user_count without presence prefix: %v", err)
	}

	ch, err := pc.Channel("presence-room-1", pusher.ChannelParams{Info: ptr("user_count,subscription_count")})
	if err != nil {
		t.Fatalf("Channel: %v", err)
	}
	if !ch.Occupied || ch.UserCount != 2 || ch.SubscriptionCount != 3 {
		t.Fatalf("channel %+v", ch)
	}
	empty, err := pc.Channel("nobody-here", pusher.ChannelParams{})
	if err != nil || empty.Occupied {
		t.Fatalf("empty channel %+v, %v", empty, err)
	}

	users, err := pc.GetChannelUsers("presence-room-1")
	if err != nil {
		t.Fatalf("GetChannelUsers: %v", err)
	}
	if len(users.List) != 2 || users.List[0].ID != "u1" || users.List[1].ID != "u2" {
		t.Fatalf("users %+v", users.List)
	}
	if _, err := pc.GetChannelUsers("private-a"); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("users of a private channel: %v", err)
	}
}

func TestHTTPAPIRefusesBadSignatures(t *testing.T) {
	_, hs := newTestServer(t, nil)
	wrong := pusherClient(hs, "not-the-secret")
	err := wrong.Trigger("c", "e", "d")
	if err == nil || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "invalid signature") {
		t.Fatalf("wrong secret: %v", err)
	}
	otherKey := pusherClient(hs, testSecret)
	otherKey.Key = "otherkey"
	if err := otherKey.Trigger("c", "e", "d"); err == nil || !strings.Contains(err.Error(), "unknown auth_key") {
		t.Fatalf("unknown key: %v", err)
	}

	// Stale: signed correctly but 11 minutes ago.
	path := "/apps/" + testAppID + "/channels"
	q := SignRequest(testKey, testSecret, "GET", path, nil, nil, time.Now().Add(-11*time.Minute))
	resp := get(t, hs.URL+path+"?"+q)
	if resp.status != 401 || !strings.Contains(resp.body, "auth_timestamp expired") {
		t.Fatalf("stale timestamp: %d %s", resp.status, resp.body)
	}
	// The same, fresh, is accepted: the failure above was the timestamp.
	q = SignRequest(testKey, testSecret, "GET", path, nil, nil, time.Now())
	if resp := get(t, hs.URL+path+"?"+q); resp.status != 200 {
		t.Fatalf("fresh: %d %s", resp.status, resp.body)
	}
	// A tampered parameter breaks the signature.
	q = SignRequest(testKey, testSecret, "GET", path, map[string]string{"filter_by_prefix": "a"}, nil, time.Now())
	if resp := get(t, hs.URL+path+"?"+strings.Replace(q, "filter_by_prefix=a", "filter_by_prefix=b", 1)); resp.status != 401 {
		t.Fatalf("tampered: %d %s", resp.status, resp.body)
	}
	// A body that does not match body_md5.
	body := []byte(`{"name":"e","channel":"c","data":"d"}`)
	epath := "/apps/" + testAppID + "/events"
	q = SignRequest(testKey, testSecret, "POST", epath, nil, body, time.Now())
	if resp := post(t, hs.URL+epath+"?"+q, []byte(`{"name":"x","channel":"c","data":"d"}`)); resp.status != 401 ||
		!strings.Contains(resp.body, "body_md5") {
		t.Fatalf("body swapped: %d %s", resp.status, resp.body)
	}
	if resp := get(t, hs.URL+"/apps/999/channels?"+q); resp.status != 404 {
		t.Fatalf("unknown app: %d %s", resp.status, resp.body)
	}
	if resp := get(t, hs.URL+path); resp.status != 401 || !strings.Contains(resp.body, "missing auth_key") {
		t.Fatalf("unsigned: %d %s", resp.status, resp.body)
	}
}

func TestHTTPAPIBadRequests(t *testing.T) {
	_, hs := newTestServer(t, nil)
	epath := "/apps/" + testAppID + "/events"
	bpath := "/apps/" + testAppID + "/batch_events"
	many := make([]string, 101)
	for i := range many {
		many[i] = fmt.Sprintf("c%d", i)
	}
	manyJSON, _ := json.Marshal(many)
	batch := make([]map[string]string, 11)
	for i := range batch {
		batch[i] = map[string]string{"channel": "c", "name": "e", "data": "d"}
	}
	batchJSON, _ := json.Marshal(map[string]any{"batch": batch})
	for _, tc := range []struct {
		name, path, body string
		status           int
	}{
		{"not json", epath, `{`, 400},
		{"no data", epath, `{"name":"e","channel":"c"}`, 400},
		{"no channel", epath, `{"name":"e","data":"d"}`, 400},
		{"bad channel", epath, `{"name":"e","channel":"a b","data":"d"}`, 400},
		{"no name", epath, `{"channel":"c","data":"d"}`, 400},
		{"too many channels", epath, `{"name":"e","channels":` + string(manyJSON) + `,"data":"d"}`, 400},
		{"encrypted with others", epath, `{"name":"e","channels":["private-encrypted-a","b"],"data":"d"}`, 400},
		{"bad socket", epath, `{"name":"e","channel":"c","data":"d","socket_id":"x"}`, 400},
		{"bad info", epath, `{"name":"e","channel":"c","data":"d","info":"nonsense"}`, 400},
		{"data too large", epath, `{"name":"e","channel":"c","data":"` + strings.Repeat("x", MaxEventDataSize+1) + `"}`, 413},
		{"body too large", epath, strings.Repeat(" ", maxAPIBody+1), 413},
		{"batch too long", bpath, string(batchJSON), 400},
		{"batch empty", bpath, `{"batch":[]}`, 400},
		{"batch item without channel", bpath, `{"batch":[{"name":"e","data":"d"}]}`, 400},
		{"ok", epath, `{"name":"e","channel":"c","data":"d"}`, 200},
		{"ok batch", bpath, `{"batch":[{"name":"e","channel":"c","data":"d"}]}`, 200},
	} {
		body := []byte(tc.body)
		q := SignRequest(testKey, testSecret, "POST", tc.path, nil, body, time.Now())
		resp := post(t, hs.URL+tc.path+"?"+q, body)
		if resp.status != tc.status {
			t.Errorf("%s: status %d, want %d (%s)", tc.name, resp.status, tc.status, resp.body)
			continue
		}
		if tc.status != 200 {
			var e struct {
				Error struct{ Code, Message string }
			}
			if json.Unmarshal([]byte(resp.body), &e) != nil || e.Error.Message == "" {
				t.Errorf("%s: error body %s", tc.name, resp.body)
			}
		}
	}
}

func TestHTTPAPITerminateUserConnections(t *testing.T) {
	_, hs := newTestServer(t, nil)
	var cs []*client
	for range 2 {
		c := dial(t, hs)
		ud := `{"id":"bad-user"}`
		c.send(map[string]any{"event": "pusher:signin", "data": map[string]string{
			"user_data": ud, "auth": UserAuth(testKey, testSecret, c.socketID, ud)}})
		c.expect("pusher:signin_success")
		cs = append(cs, c)
	}
	bystander := dial(t, hs)
	path := "/apps/" + testAppID + "/users/bad-user/terminate_connections"
	body := []byte("{}")
	q := SignRequest(testKey, testSecret, "POST", path, nil, body, time.Now())
	if resp := post(t, hs.URL+path+"?"+q, body); resp.status != 200 {
		t.Fatalf("terminate: %d %s", resp.status, resp.body)
	}
	for _, c := range cs {
		if code := c.expectClose(); code != CodeUnauthorized {
			t.Errorf("close code %d, want 4009", code)
		}
	}
	bystander.sync()
}

func TestWebhooks(t *testing.T) {
	var mu sync.Mutex
	var events []pusher.WebhookEvent
	verifier := &pusher.Client{AppID: testAppID, Key: testKey, Secret: testSecret}
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		// The official library checks X-Pusher-Key and X-Pusher-Signature.
		hook, err := verifier.Webhook(r.Header, body)
		if err != nil {
			t.Errorf("webhook rejected by pusher-http-go: %v", err)
			w.WriteHeader(400)
			return
		}
		mu.Lock()
		events = append(events, hook.Events...)
		mu.Unlock()
	}))
	defer receiver.Close()
	_, hs := newTestServer(t, func(c *Config) {
		c.Apps[0].Webhook = WebhookConfig{URL: receiver.URL}
		c.WebhookBatchWindow = 20 * time.Millisecond
	})
	a := dial(t, hs)
	a.subscribeOK("presence-hooks", `{"user_id":"h1"}`)
	a.send(map[string]any{"event": "pusher:unsubscribe", "data": map[string]string{"channel": "presence-hooks"}})
	a.sync()
	want := []string{"channel_occupied:presence-hooks:", "member_added:presence-hooks:h1",
		"member_removed:presence-hooks:h1", "channel_vacated:presence-hooks:"}
	eventually(t, "four webhook events", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(events) >= len(want)
	})
	mu.Lock()
	defer mu.Unlock()
	var got []string
	for _, e := range events {
		got = append(got, e.Name+":"+e.Channel+":"+e.UserID)
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("webhook events %v, want %v", got, want)
	}
}

func TestWebhookEventsFilter(t *testing.T) {
	bodies := make(chan []byte, 10)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		bodies <- b
	}))
	defer receiver.Close()
	_, hs := newTestServer(t, func(c *Config) {
		c.Apps[0].Webhook = WebhookConfig{URL: receiver.URL, Events: []string{WebhookChannelVacated}}
		c.WebhookBatchWindow = 20 * time.Millisecond
	})
	a := dial(t, hs)
	a.subscribeOK("only-vacated", "")
	a.send(map[string]any{"event": "pusher:unsubscribe", "data": map[string]string{"channel": "only-vacated"}})
	select {
	case b := <-bodies:
		var wb WebhookBody
		if err := json.Unmarshal(b, &wb); err != nil || len(wb.Events) != 1 || wb.Events[0].Name != "channel_vacated" || wb.TimeMS == 0 {
			t.Fatalf("body %s", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no webhook")
	}
}

type response struct {
	status int
	body   string
}

func get(t *testing.T, url string) response {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, string(b)}
}

func post(t *testing.T, url string, body []byte) response {
	t.Helper()
	resp, err := http.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, string(b)}
}

func ptr[T any](v T) *T { return &v }
