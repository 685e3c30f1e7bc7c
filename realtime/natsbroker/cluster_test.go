package natsbroker_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	pusher "github.com/pusher/pusher-http-go/v5"

	"github.com/buildbridge/buildbridge/realtime"
)

// testCluster is quick enough for tests and lenient enough for the race
// detector on a busy machine; presence channels hold three members.
func testCluster(c *realtime.Config) {
	c.Cluster = realtime.ClusterConfig{HeartbeatInterval: 50 * time.Millisecond, NodeTimeout: time.Second,
		FlushInterval: 20 * time.Millisecond}
	c.Apps[0].MaxPresenceMembers = 3
}

func ptr[T any](v T) *T { return &v }

// waitFor polls cond until it holds or 5s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type member struct {
	UserID   string          `json:"user_id"`
	UserInfo json.RawMessage `json:"user_info"`
}

// expectMember waits for event about user, with info unless info is "".
func (c *wsClient) expectMember(event, user, info string) {
	c.t.Helper()
	var m member
	if err := json.Unmarshal([]byte(c.expect(event).str()), &m); err != nil {
		c.t.Fatal(err)
	}
	if m.UserID != user || (info != "" && string(m.UserInfo) != info) {
		c.t.Fatalf("%s %s %s, want %s %s", event, m.UserID, m.UserInfo, user, info)
	}
}

// Two nodes on one NATS: presence, channel queries and the member cap hold
// across them, and a node that dies without a goodbye leaves the view.
func TestClusterViewOverNATS(t *testing.T) {
	url := natsURL(t)
	prefix := testPrefix()
	a := newNode(t, url, prefix, testCluster)
	b := newNode(t, url, prefix, testCluster)
	const room = "presence-room"
	api := &pusher.Client{AppID: appID, Key: key, Secret: secret, Host: strings.TrimPrefix(a.hs.URL, "http://")}

	// Bob joins on B; A learns of him.
	bob := b.dial(t)
	bob.subscribe(room, `{"user_id":"bob","user_info":{"name":"Bob"}}`)
	waitFor(t, "A to know bob", func() bool {
		u, _ := a.srv.PresenceUsers(appID, room)
		return slices.Equal(u, []string{"bob"})
	})

	// subscription_succeeded on A lists B's member, with his user_info.
	alice := a.dial(t)
	var pd struct {
		Presence struct {
			IDs   []string                   `json:"ids"`
			Hash  map[string]json.RawMessage `json:"hash"`
			Count int                        `json:"count"`
		} `json:"presence"`
	}
	if err := json.Unmarshal([]byte(alice.subscribe(room, `{"user_id":"alice","user_info":{"name":"Alice"}}`).str()), &pd); err != nil {
		t.Fatal(err)
	}
	if pd.Presence.Count != 2 || !slices.Equal(pd.Presence.IDs, []string{"alice", "bob"}) ||
		string(pd.Presence.Hash["bob"]) != `{"name":"Bob"}` {
		t.Fatalf("alice's presence data %+v", pd.Presence)
	}
	bob.expectMember("pusher_internal:member_added", "alice", `{"name":"Alice"}`)

	// A member added on B reaches the presence subscriber on A, with its
	// user_info.
	carol := b.dial(t)
	carol.subscribe(room, `{"user_id":"carol","user_info":{"name":"Carol"}}`)
	alice.expectMember("pusher_internal:member_added", "carol", `{"name":"Carol"}`)

	// A's HTTP API counts B's subscribers.
	b.dial(t).subscribe("news", "")
	b.dial(t).subscribe("news", "")
	a.dial(t).subscribe("news", "")
	waitFor(t, "A's API to count 3 subscribers of news", func() bool {
		ch, err := api.Channel("news", pusher.ChannelParams{Info: ptr("subscription_count")})
		return err == nil && ch.Occupied && ch.SubscriptionCount == 3
	})
	ch, err := api.Channel(room, pusher.ChannelParams{Info: ptr("user_count,subscription_count")})
	if err != nil || ch.UserCount != 3 || ch.SubscriptionCount != 3 {
		t.Fatalf("channel %s on A: %+v, %v", room, ch, err)
	}
	list, err := api.Channels(pusher.ChannelsParams{FilterByPrefix: ptr("presence-"), Info: ptr("user_count")})
	if err != nil || len(list.Channels) != 1 || list.Channels[room].UserCount != 3 {
		t.Fatalf("channels on A: %+v, %v", list, err)
	}
	users, err := api.GetChannelUsers(room)
	if err != nil || len(users.List) != 3 {
		t.Fatalf("users on A: %+v, %v", users, err)
	}

	// The member cap (3) counts B's members: a fourth user is refused on A.
	dave := a.dial(t)
	cd := `{"user_id":"dave"}`
	dave.send(map[string]any{"event": "pusher:subscribe", "data": map[string]string{"channel": room,
		"auth": realtime.ChannelAuth(key, secret, dave.socketID, room, cd), "channel_data": cd}})
	var refusal struct {
		Type  string `json:"type"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(dave.expect("pusher:subscription_error").str()), &refusal); err != nil ||
		refusal.Type != "LimitReached" || !strings.Contains(refusal.Error, "at most 3") {
		t.Fatalf("refusal %+v, %v", refusal, err)
	}

	// B dies without a goodbye: its NATS connection closes, its server
	// is not shut down. After NodeTimeout, A drops B's members (telling
	// alice) and subscriptions.
	b.nc.Close()
	start := time.Now()
	gone := map[string]bool{}
	for range 2 {
		var m member
		if err := json.Unmarshal([]byte(alice.expect("pusher_internal:member_removed").str()), &m); err != nil {
			t.Fatal(err)
		}
		gone[m.UserID] = true
	}
	took := time.Since(start)
	if !gone["bob"] || !gone["carol"] {
		t.Fatalf("removed %v, want bob and carol", gone)
	}
	// A times B out from the last heartbeat it handled, which on a loaded
	// machine can be well before the cut: the bound only shows that B was
	// not dropped at once.
	if took < 500*time.Millisecond {
		t.Fatalf("B's members removed after %v, long before NodeTimeout (1s)", took)
	}
	t.Logf("B's members removed %v after its connection closed (NodeTimeout 1s, heartbeat 50ms)", took.Round(time.Millisecond))
	ch, err = api.Channel("news", pusher.ChannelParams{Info: ptr("subscription_count")})
	if err != nil || ch.SubscriptionCount != 1 {
		t.Fatalf("news on A after B died: %+v, %v", ch, err)
	}
	// Room for dave now.
	dave.subscribe(room, cd)
}

// At idle a node sends its heartbeats and nothing else, however much it
// holds.
func TestClusterIdleTraffic(t *testing.T) {
	url := natsURL(t)
	prefix := testPrefix()
	const beat = 100 * time.Millisecond
	cfg := func(c *realtime.Config) {
		c.Cluster = realtime.ClusterConfig{HeartbeatInterval: beat, NodeTimeout: time.Second}
	}
	a := newNode(t, url, prefix, cfg)
	b := newNode(t, url, prefix, cfg)
	for i := range 30 {
		for j, n := range []*node{a, b} {
			c := n.dial(t)
			c.subscribe(fmt.Sprintf("private-user-%d", i), "")
			c.subscribe("presence-all", fmt.Sprintf(`{"user_id":"%d-%d"}`, j, i))
			if err := n.srv.BindSocket(appID, c.socketID, fmt.Sprint(i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, "A to see B's members", func() bool {
		u, _ := a.srv.PresenceUsers(appID, "presence-all")
		return len(u) == 60
	})
	time.Sleep(300 * time.Millisecond) // the last counts are flushed

	const idle = 3 * time.Second
	before := a.nc.Stats()
	time.Sleep(idle)
	after := a.nc.Stats()
	out, outBytes := after.OutMsgs-before.OutMsgs, after.OutBytes-before.OutBytes
	in := after.InMsgs - before.InMsgs
	// Heartbeats only: a loaded machine may skip some, never add any.
	beats := uint64(idle / beat)
	if out < beats/2 || out > beats+2 {
		t.Fatalf("idle node sent %d messages in %v, want its %d heartbeats", out, idle, beats)
	}
	per := float64(outBytes) / float64(out)
	t.Logf("idle node holding 30 connections, 31 channels, 30 bound users: sent %d messages (%d payload bytes, %.0f per heartbeat), "+
		"received %d (its own and the other node's heartbeats) in %v; at the default %v heartbeat that is %.1f messages/s and %.0f payload bytes/s sent, "+
		"and %.1f messages/s received per other node",
		out, outBytes, per, in, idle, realtime.DefaultHeartbeatInterval,
		1/realtime.DefaultHeartbeatInterval.Seconds(), per/realtime.DefaultHeartbeatInterval.Seconds(),
		1/realtime.DefaultHeartbeatInterval.Seconds())
}
