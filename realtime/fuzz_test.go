package realtime

import (
	"strings"
	"testing"
	"time"
)

// FuzzClientFrame sends arbitrary messages over a real WebSocket to a
// real server. Whatever arrives, the server must neither crash nor drop
// the connection: a ping sent afterwards must be answered.
func FuzzClientFrame(f *testing.F) {
	for _, seed := range []string{
		`{"event":"pusher:ping","data":{}}`,
		`{"event":"pusher:subscribe","data":{"channel":"news"}}`,
		`{"event":"pusher:subscribe","data":"{\"channel\":\"news\"}"}`,
		`{"event":"pusher:subscribe","data":{"channel":"private-x","auth":"testkey:00"}}`,
		`{"event":"pusher:subscribe","data":{"channel":"presence-x","auth":"testkey:ab","channel_data":"{\"user_id\":1}"}}`,
		`{"event":"pusher:subscribe","data":{"channel":"#server-to-user-1"}}`,
		`{"event":"pusher:unsubscribe","data":{"channel":"news"}}`,
		`{"event":"pusher:signin","data":{"auth":"testkey:00","user_data":"{\"id\":\"1\"}"}}`,
		`{"event":"client-x","channel":"private-x","data":{"a":1}}`,
		`{"event":"client-x","channel":"news","data":"s"}`,
		`{"event":"pusher:pong"}`,
		`{"event":null,"data":[1,2,3]}`,
		`{"event":"x","channel":"` + strings.Repeat("a", 300) + `"}`,
		`{"event":"pusher:subscribe","data":{"channel":"\u2028\ud800"}}`,
		`[]`, `{`, `null`, `"\u0000"`, "\xff\xfe",
	} {
		f.Add([]byte(seed))
	}
	_, hs := newTestServer(f, func(c *Config) { c.Apps[0].EnableClientEvents = true })
	c := dial(f, hs)
	f.Fuzz(func(t *testing.T, msg []byte) {
		if len(msg) > 8*DefaultMaxMessageSize {
			t.Skip("beyond the hard limit the connection is closed (1009) by design")
		}
		c.t = t
		c.sendRaw(msg)
		c.send(map[string]any{"event": "pusher:ping", "data": map[string]any{}})
		deadline := time.After(5 * time.Second)
		for {
			select {
			case fr, ok := <-c.frames:
				if !ok {
					t.Fatalf("server closed the connection after %q: %v", msg, <-c.closed)
				}
				if fr.Event == "pusher:pong" {
					return
				}
			case <-deadline:
				t.Fatalf("no pong after %q", msg)
			}
		}
	})
}

// FuzzVerifyRequest checks the HTTP API signature check: a request signed
// as the server libraries sign it always passes, a changed body or an
// unsigned arbitrary query never does, and nothing panics.
func FuzzVerifyRequest(f *testing.F) {
	f.Add("POST", "/apps/123/events", "presence-", []byte(`{"name":"e","channel":"c","data":"d"}`), "auth_key=testkey&auth_signature=00")
	f.Add("GET", "/apps/123/channels", "", []byte(nil), "")
	f.Add("GET", "/apps/123/channels/a;b", "a=b&c", []byte(nil), "auth_key=testkey&auth_timestamp=1&auth_version=1.0&auth_signature=zz")
	f.Add("POST", "/", "%zz", []byte("x"), "%%%&&&==")
	app := &App{ID: testAppID, Key: testKey, Secret: testSecret}
	now := time.Unix(1_800_000_000, 0)
	f.Fuzz(func(t *testing.T, method, path, filter string, body []byte, rawQuery string) {
		// Arbitrary input cannot carry a valid HMAC.
		if _, err := verifyRequest(app, method, path, rawQuery, body, now); err == nil {
			t.Fatalf("unsigned query %q accepted", rawQuery)
		}
		params := map[string]string{"filter_by_prefix": filter}
		q := SignRequest(testKey, testSecret, method, path, params, body, now)
		got, err := verifyRequest(app, method, path, q, body, now)
		if err != nil {
			t.Fatalf("signed request refused: %v (query %q)", err, q)
		}
		if got["filter_by_prefix"] != filter {
			t.Fatalf("filter_by_prefix = %q, want %q", got["filter_by_prefix"], filter)
		}
		if len(body) > 0 {
			changed := append([]byte(nil), body...)
			changed[len(changed)/2] ^= 1
			if _, err := verifyRequest(app, method, path, q, changed, now); err == nil {
				t.Fatal("changed body accepted")
			}
		}
		if _, err := verifyRequest(app, method+"X", path, q, body, now); err == nil {
			t.Fatal("other method accepted")
		}
		if _, err := verifyRequest(app, method, path, q, body, now.Add(11*time.Minute)); err == nil {
			t.Fatal("stale request accepted")
		}
	})
}
