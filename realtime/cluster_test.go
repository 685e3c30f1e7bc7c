package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Two Servers on one MemoryBroker behave as two nodes of a cluster.
func TestClusterOnSharedBroker(t *testing.T) {
	b := NewMemoryBroker()
	node := func() (*Server, *client, *client) {
		s, hs, _ := clusterNode(t, b, nil)
		return s, dial(t, hs), dial(t, hs)
	}
	sa, a1, a2 := node()
	sb, b1, b2 := node()

	// Events cross nodes; the excluded socket is skipped wherever it is.
	a1.subscribeOK("news", "")
	b1.subscribeOK("news", "")
	b2.subscribeOK("news", "")
	if err := sa.Publish(context.Background(), testAppID, []string{"news"}, "e", "d", b2.socketID); err != nil {
		t.Fatal(err)
	}
	a1.expect("e")
	b1.expect("e")
	b2.sync()

	// A presence member joining on A is announced once on B.
	b1.subscribeOK("presence-x", `{"user_id":"bee"}`)
	a1.subscribeOK("presence-x", `{"user_id":"ay"}`)
	expectMember(t, b1, "pusher_internal:member_added", "ay", "")
	b1.sync()

	// Subscriptions of one user's sockets on both nodes are counted on
	// both; the binding of a socket on B goes through A.
	if err := sa.BindSocket(testAppID, a2.socketID, "u1"); err != nil {
		t.Fatal(err)
	}
	if err := sa.BindSocket(testAppID, b2.socketID, "u1"); err != nil {
		t.Fatal(err)
	}
	a2.subscribeOK("private-u1-a", "")
	b2.subscribeOK("private-u1-b", "") // b2 also holds "news": 3 in all
	for _, s := range []*Server{sa, sb} {
		eventually(t, "3 subscriptions seen cluster-wide", func() bool { return s.UserSubscriptions(testAppID, "u1") == 3 })
	}
	b2.send(map[string]any{"event": "pusher:unsubscribe", "data": map[string]string{"channel": "news"}})
	b2.sync()
	eventually(t, "unsubscribe seen on A", func() bool { return sa.UserSubscriptions(testAppID, "u1") == 2 })

	// A node that shuts down stops counting at once.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sb.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "B's subscriptions forgotten", func() bool { return sa.UserSubscriptions(testAppID, "u1") == 1 })
}

// testCluster is quick enough for tests, and lenient enough for the race
// detector on a busy machine.
var testCluster = ClusterConfig{HeartbeatInterval: 50 * time.Millisecond, NodeTimeout: time.Second,
	FlushInterval: 10 * time.Millisecond}

// link is one node's connection to a shared broker. Cutting it stops the
// node's traffic both ways, as a killed node or a network cut would,
// without a goodbye; drop loses chosen incoming messages.
type link struct {
	Broker
	cut  atomic.Bool
	mu   sync.Mutex
	drop func(Message) bool
}

func (l *link) Publish(ctx context.Context, m Message) error {
	if l.cut.Load() {
		return errors.New("link cut")
	}
	return l.Broker.Publish(ctx, m)
}

func (l *link) Subscribe(h func(Message)) (func() error, error) {
	return l.Broker.Subscribe(func(m Message) {
		if l.cut.Load() {
			return
		}
		l.mu.Lock()
		drop := l.drop
		l.mu.Unlock()
		if drop != nil && drop(m) {
			return
		}
		h(m)
	})
}

// clusterNode starts a Server on its own link to b, with testCluster.
func clusterNode(t *testing.T, b Broker, mutate func(*Config)) (*Server, *httptest.Server, *link) {
	t.Helper()
	l := &link{Broker: b}
	s, hs := newTestServer(t, func(c *Config) {
		c.Broker = l
		c.Cluster = testCluster
		if mutate != nil {
			mutate(c)
		}
	})
	return s, hs, l
}

type memberData struct {
	UserID   string          `json:"user_id"`
	UserInfo json.RawMessage `json:"user_info"`
}

// expectMember waits for member_added or member_removed of user.
func expectMember(t *testing.T, c *client, event, user, info string) {
	t.Helper()
	var d memberData
	c.expect(event).decode(t, &d)
	if d.UserID != user || (info != "" && string(d.UserInfo) != info) {
		t.Fatalf("%s %s %s, want %s %s", event, d.UserID, d.UserInfo, user, info)
	}
}

// join subscribes and waits for the pong of a ping sent after: the
// subscription's changes are then published (on one in-process broker,
// applied by every node), since a connection handles its messages in turn.
func (c *client) join(channel, channelData string) frame {
	c.t.Helper()
	f := c.subscribeOK(channel, channelData)
	c.sync()
	return f
}

func users(t *testing.T, s *Server, ch string) string {
	t.Helper()
	ids, err := s.PresenceUsers(testAppID, ch)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(ids, ",")
}

func TestClusterPresence(t *testing.T) {
	mb := NewMemoryBroker()
	sa, ha, _ := clusterNode(t, mb, nil)
	sb, hb, _ := clusterNode(t, mb, nil)
	const room = "presence-room"

	alice := dial(t, ha)
	alice.join(room, `{"user_id":"alice","user_info":{"name":"Alice"}}`)
	// Joining on B: B's list holds A's member with her info, and A's
	// subscriber learns of B's with his.
	bob := dial(t, hb)
	var pd presenceData
	bob.join(room, `{"user_id":"bob","user_info":{"name":"Bob"}}`).decode(t, &pd)
	if pd.Presence.Count != 2 || strings.Join(pd.Presence.IDs, ",") != "alice,bob" ||
		string(pd.Presence.Hash["alice"]) != `{"name":"Alice"}` {
		t.Fatalf("bob's presence data %+v", pd)
	}
	expectMember(t, alice, "pusher_internal:member_added", "bob", `{"name":"Bob"}`)
	bob.sync()

	// Bob's second socket, on A: bob is a member already, nobody is told.
	bob2 := dial(t, ha)
	pd = presenceData{}
	bob2.join(room, `{"user_id":"bob","user_info":{"name":"Bob"}}`).decode(t, &pd)
	if pd.Presence.Count != 2 {
		t.Fatalf("bob2's presence data %+v", pd)
	}
	alice.sync()
	bob.sync()
	for _, s := range []*Server{sa, sb} {
		if got := users(t, s, room); got != "alice,bob" {
			t.Fatalf("users %s", got)
		}
		if ci, _ := s.ChannelInfo(testAppID, room); ci.UserCount != 2 || !ci.Occupied {
			t.Fatalf("channel info %+v", ci)
		}
	}

	// Carol watches from B.
	carol := dial(t, hb)
	carol.join(room, `{"user_id":"carol"}`)
	expectMember(t, alice, "pusher_internal:member_added", "carol", "")
	expectMember(t, bob, "pusher_internal:member_added", "carol", "")
	expectMember(t, bob2, "pusher_internal:member_added", "carol", "")

	// Bob leaves B but is still on A: nobody is told. (On one broker the
	// change reaches A before bob's pong.)
	bob.send(map[string]any{"event": "pusher:unsubscribe", "data": map[string]string{"channel": room}})
	bob.sync()
	alice.sync()
	carol.sync()
	// His last socket goes: everyone is told, on both nodes.
	_ = bob2.ws.Close(websocket.StatusNormalClosure, "")
	expectMember(t, alice, "pusher_internal:member_removed", "bob", "")
	expectMember(t, carol, "pusher_internal:member_removed", "bob", "")

	// A node that shuts down says goodbye: its members leave at once,
	// without waiting for NodeTimeout.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sb.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	expectMember(t, alice, "pusher_internal:member_removed", "carol", "")
	if got := users(t, sa, room); got != "alice" {
		t.Fatalf("users after B left: %s", got)
	}
}

func TestClusterChannelInfoAndCounts(t *testing.T) {
	mb := NewMemoryBroker()
	counts := func(c *Config) { c.Apps[0].EnableSubscriptionCount = true }
	sa, ha, _ := clusterNode(t, mb, counts)
	_, hb, _ := clusterNode(t, mb, counts)

	a1 := dial(t, ha)
	a1.subscribeOK("news", "")
	b1, b2, b3 := dial(t, hb), dial(t, hb), dial(t, hb)
	b1.subscribeOK("news", "")
	b2.subscribeOK("news", "")
	// (Subscribers of public and private channels get counts from now on.)
	b3.subscribeOK("presence-p", `{"user_id":"bee"}`)
	b3.subscribeOK("private-only-on-b", "")

	// The subscription_count event on A counts B's subscribers.
	var d struct {
		N int `json:"subscription_count"`
	}
	for d.N != 3 {
		a1.expect("pusher_internal:subscription_count").decode(t, &d)
	}
	eventually(t, "A counts B's subscriptions", func() bool {
		ci, _ := sa.ChannelInfo(testAppID, "news")
		return ci.SubscriptionCount == 3 && ci.Occupied
	})
	channels := func() string {
		list, _ := sa.Channels(testAppID, "")
		var names []string
		for _, ci := range list {
			names = append(names, fmt.Sprintf("%s:%d:%d", ci.Name, ci.SubscriptionCount, ci.UserCount))
		}
		return strings.Join(names, " ")
	}
	eventually(t, "A lists B's channels", func() bool {
		return channels() == "news:3:0 presence-p:1:1 private-only-on-b:1:0"
	})
	if got := users(t, sa, "presence-p"); got != "bee" {
		t.Fatalf("users on A: %s", got)
	}

	// Leaving on B is counted on A.
	b1.send(map[string]any{"event": "pusher:unsubscribe", "data": map[string]string{"channel": "news"}})
	for d.N != 2 {
		a1.expect("pusher_internal:subscription_count").decode(t, &d)
	}
	_ = b3.ws.Close(websocket.StatusNormalClosure, "")
	eventually(t, "B's channels gone from A", func() bool {
		list, _ := sa.Channels(testAppID, "")
		return len(list) == 1 && list[0].Name == "news" && list[0].SubscriptionCount == 2
	})
}

func TestClusterPresenceMemberCap(t *testing.T) {
	mb := NewMemoryBroker()
	capped := func(c *Config) { c.Apps[0].MaxPresenceMembers = 2 }
	_, ha, _ := clusterNode(t, mb, capped)
	_, hb, _ := clusterNode(t, mb, capped)
	const room = "presence-capped"

	dial(t, ha).join(room, `{"user_id":"u1"}`)
	dial(t, hb).join(room, `{"user_id":"u2"}`)
	// Full on both nodes, as each counts the other's member.
	for _, hs := range []*httptest.Server{ha, hb} {
		c := dial(t, hs)
		cd := `{"user_id":"u3"}`
		c.subscribe(room, ChannelAuth(testKey, testSecret, c.socketID, room, cd), cd)
		var e struct {
			Type   string
			Status int
			Error  string
		}
		c.expect("pusher:subscription_error").decode(t, &e)
		if e.Type != "LimitReached" || e.Status != 403 || !strings.Contains(e.Error, "at most 2") {
			t.Fatalf("error %+v", e)
		}
	}
	// A member of another node may still open a socket here.
	var pd presenceData
	dial(t, ha).subscribeOK(room, `{"user_id":"u2"}`).decode(t, &pd)
	if pd.Presence.Count != 2 {
		t.Fatalf("presence data %+v", pd)
	}
}

// A node that goes silent (killed, or cut off) is dropped after
// NodeTimeout; when it comes back, the nodes exchange snapshots.
func TestClusterSilentNodeDroppedAndBack(t *testing.T) {
	mb := NewMemoryBroker()
	sa, ha, _ := clusterNode(t, mb, nil)
	sb, hb, lb := clusterNode(t, mb, nil)
	const room = "presence-room"

	alice := dial(t, ha)
	alice.join(room, `{"user_id":"alice"}`)
	bob := dial(t, hb)
	bob.join(room, `{"user_id":"bob","user_info":{"n":1}}`)
	expectMember(t, alice, "pusher_internal:member_added", "bob", `{"n":1}`)
	if err := sa.BindSocket(testAppID, bob.socketID, "owner"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "A counts bob's subscription", func() bool { return sa.UserSubscriptions(testAppID, "owner") == 1 })

	lb.cut.Store(true)
	start := time.Now()
	expectMember(t, alice, "pusher_internal:member_removed", "bob", "")
	// Counted from the last heartbeat A handled, which under load can be
	// well before the cut: the bound only shows bob was not dropped at once.
	if took := time.Since(start); took < testCluster.NodeTimeout/2 {
		t.Fatalf("bob removed after %v, long before NodeTimeout %v", took, testCluster.NodeTimeout)
	}
	// B, which hears nothing either, drops A too.
	expectMember(t, bob, "pusher_internal:member_removed", "alice", "")
	if n := sa.UserSubscriptions(testAppID, "owner"); n != 0 {
		t.Fatalf("A still counts %d subscriptions of B", n)
	}
	if ci, _ := sa.ChannelInfo(testAppID, room); ci.UserCount != 1 || ci.SubscriptionCount != 1 {
		t.Fatalf("channel info on A %+v", ci)
	}

	// Back: each hears the other's heartbeat, asks for its state, and
	// its subscribers learn of the members again.
	lb.cut.Store(false)
	expectMember(t, alice, "pusher_internal:member_added", "bob", `{"n":1}`)
	expectMember(t, bob, "pusher_internal:member_added", "alice", "")
	eventually(t, "A counts bob's subscription again", func() bool { return sa.UserSubscriptions(testAppID, "owner") == 1 })
	if got := users(t, sb, room); got != "alice,bob" {
		t.Fatalf("users on B: %s", got)
	}
}

// A node that starts gets the others' state.
func TestClusterSnapshotForNewNode(t *testing.T) {
	mb := NewMemoryBroker()
	sa, ha, _ := clusterNode(t, mb, nil)
	const room = "presence-room"
	alice := dial(t, ha)
	alice.join(room, `{"user_id":"alice","user_info":"A"}`)
	alice.join("news", "")
	dial(t, ha).join("news", "")

	// Enough state for several snapshot parts: big members, many channels.
	big := json.RawMessage(`"` + strings.Repeat("x", 8<<10) + `"`)
	a := sa.byID[testAppID]
	a.mu.Lock()
	for i := range 60 {
		ch := &channel{name: fmt.Sprintf("presence-big-%d", i), kind: kindPresence,
			subs: map[*conn]string{{}: "x"}, members: make(map[string]*member)}
		ch.members[fmt.Sprintf("user-%d", i)] = &member{info: big, n: 1}
		a.channels[ch.name] = ch
	}
	a.mu.Unlock()

	var parts atomic.Int32
	l := &link{Broker: mb, drop: func(m Message) bool {
		if m.Kind == KindSnapshot && m.Parts > 1 {
			parts.Add(1)
		}
		return false
	}}
	sb, hb := newTestServer(t, func(c *Config) { c.Broker = l; c.Cluster = testCluster })
	eventually(t, "B knows A's channels", func() bool {
		list, _ := sb.Channels(testAppID, "")
		return len(list) == 62
	})
	if parts.Load() < 2 {
		t.Fatalf("snapshot in %d parts, want several", parts.Load())
	}
	if ci, _ := sb.ChannelInfo(testAppID, "news"); ci.SubscriptionCount != 2 {
		t.Fatalf("news on B %+v", ci)
	}
	if ci, _ := sb.ChannelInfo(testAppID, "presence-big-7"); ci.UserCount != 1 {
		t.Fatalf("presence-big-7 on B %+v", ci)
	}
	var pd presenceData
	dial(t, hb).subscribeOK(room, `{"user_id":"bob"}`).decode(t, &pd)
	if pd.Presence.Count != 2 || string(pd.Presence.Hash["alice"]) != `"A"` {
		t.Fatalf("presence data on B %+v", pd)
	}
	expectMember(t, alice, "pusher_internal:member_added", "bob", "")
}

// A change lost on the way (NATS core delivers at most once) is noticed at
// the next heartbeat and repaired with a snapshot.
func TestClusterRecoversLostChange(t *testing.T) {
	mb := NewMemoryBroker()
	_, ha, _ := clusterNode(t, mb, nil)
	sb, hb, lb := clusterNode(t, mb, nil)
	const room = "presence-room"
	bob := dial(t, hb)
	bob.join(room, `{"user_id":"bob"}`)

	var dropped atomic.Bool
	lb.mu.Lock()
	lb.drop = func(m Message) bool { return m.Kind == KindMemberAdded && dropped.CompareAndSwap(false, true) }
	lb.mu.Unlock()
	dial(t, ha).subscribeOK(room, `{"user_id":"alice","user_info":"A"}`)
	expectMember(t, bob, "pusher_internal:member_added", "alice", `"A"`)
	if !dropped.Load() {
		t.Fatal("nothing was dropped")
	}
	if got := users(t, sb, room); got != "alice,bob" {
		t.Fatalf("users on B: %s", got)
	}
}

// A single node keeps no cluster state and publishes nothing for it.
func TestSingleNodeKeepsNoClusterState(t *testing.T) {
	s, hs := newTestServer(t, nil)
	c := dial(t, hs)
	c.subscribeOK("presence-room", `{"user_id":"solo"}`)
	c.subscribeOK("news", "")
	if err := s.BindSocket(testAppID, c.socketID, "me"); err != nil {
		t.Fatal(err)
	}
	c.send(map[string]any{"event": "pusher:unsubscribe", "data": map[string]string{"channel": "news"}})
	c.sync()
	a := s.byID[testAppID]
	a.mu.RLock()
	defer a.mu.RUnlock()
	if s.clustered || a.seq != 0 || len(a.out) != 0 || len(a.subsDirty) != 0 || len(a.ownersDirty) != 0 || len(a.view.peers) != 0 {
		t.Fatalf("cluster state on a single node: seq %d, out %d, dirty %d/%d", a.seq, len(a.out), len(a.subsDirty), len(a.ownersDirty))
	}
}
