package api

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// countingSubscriptions records bindings and serves a settable count; the
// realtime server's own counting is tested in realtime/ and end to end.
type countingSubscriptions struct {
	mu    sync.Mutex
	bound map[string]string
	count int
}

func (s *countingSubscriptions) BindSocket(_, socketID, userID string) {
	s.mu.Lock()
	s.bound[socketID] = userID
	s.mu.Unlock()
}
func (s *countingSubscriptions) UserSubscriptions(_, _ string) int { return s.count }

func TestChannelAuth(t *testing.T) {
	f := newFixture(t)
	subs := &countingSubscriptions{bound: map[string]string{}}
	// Re-create the API with channels enabled on the same store.
	a, err := New(Config{Store: f.store, Scheduler: f.sched, Resolve: func(context.Context, string, string) (Commit, error) { return Commit{}, nil }, ArtifactsDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.EnableChannels(ChannelConfig{AppID: "1", Key: "k", Secret: "s3cret", Cluster: "local", WSHost: "127.0.0.1", WSPort: 8080,
		MaxChannels: 2, Subscriptions: subs, EncryptionMasterKey: make([]byte, 32)}); err != nil {
		t.Fatal(err)
	}
	f.srv.Config.Handler = a
	f.do(t, f.ann, "POST", "/api/v1/projects", appBody)
	_, info, _ := f.do(t, f.ann, "GET", "/api/v1/user/channel", "")
	ch, _ := info["channel"].(string)
	if !strings.HasPrefix(ch, "private-user-") || info["key"] != "k" || info["auth_endpoint"] != "/user/channel/auth" || info["max_channels"] != 2.0 || info["ws_port"] != 8080.0 {
		t.Fatalf("channel info: %v", info)
	}
	post := func(token, ctype, body string) (int, map[string]any, string) {
		req, _ := http.NewRequest("POST", f.srv.URL+"/user/channel/auth", strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		req.Header.Set("Content-Type", ctype)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		raw, _ := io.ReadAll(resp.Body)
		json.Unmarshal(raw, &m)
		return resp.StatusCode, m, string(raw)
	}
	form := url.Values{"socket_id": {"123.456"}, "channel_name": {ch}}.Encode()
	code, m, raw := post(f.ann, "application/x-www-form-urlencoded", form)
	mac := hmac.New(sha256.New, []byte("s3cret"))
	mac.Write([]byte("123.456:" + ch))
	if code != 200 || m["auth"] != "k:"+hex.EncodeToString(mac.Sum(nil)) {
		t.Fatalf("own channel: %d %s", code, raw)
	}
	if subs.bound["123.456"] == "" {
		t.Fatal("socket not bound to the user")
	}
	code, m, raw = post(f.ann, "application/json", `{"socket_id":"1.2","channel_name":"private-encrypted-`+strings.TrimPrefix(ch, "private-")+`"}`)
	if code != 200 || m["shared_secret"] == nil {
		t.Fatalf("encrypted channel: %d %s", code, raw)
	}
	code, m, raw = post(f.ann, "application/json", `{"socket_id":"1.2","channel_name":"presence-project-app"}`)
	if code != 200 || !strings.Contains(fmt.Sprint(m["channel_data"]), `"user_id"`) {
		t.Fatalf("presence of own project: %d %s", code, raw)
	}
	cases := []struct {
		name, token, body string
		status            int
		mention           string
	}{
		{"no token", "", form, 401, "Authorization"},
		{"another user's channel", f.bob, form, 403, "your own channels"},
		{"public-looking channel", f.ann, url.Values{"socket_id": {"1.2"}, "channel_name": {"private-system"}}.Encode(), 403, "private-system"},
		{"another user's project presence", f.bob, url.Values{"socket_id": {"1.2"}, "channel_name": {"presence-project-app"}}.Encode(), 403, "presence-project-app"},
		{"bad socket id", f.ann, url.Values{"socket_id": {"abc"}, "channel_name": {ch}}.Encode(), 400, "socket_id"},
		{"missing channel", f.ann, url.Values{"socket_id": {"1.2"}}.Encode(), 400, "channel_name"},
	}
	for _, c := range cases {
		code, _, raw := post(c.token, "application/x-www-form-urlencoded", c.body)
		if code != c.status || !strings.Contains(raw, c.mention) {
			t.Errorf("%s: %d %s, want %d mentioning %q", c.name, code, raw, c.status, c.mention)
		}
	}
	subs.count = 2
	code, _, raw = post(f.ann, "application/x-www-form-urlencoded", form)
	if code != 403 || !strings.Contains(raw, "limit") || !strings.Contains(raw, "2 of 2") {
		t.Fatalf("over the limit: %d %s", code, raw)
	}
}
