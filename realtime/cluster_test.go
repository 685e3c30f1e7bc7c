package realtime

import (
	"context"
	"testing"
	"time"
)

// Two Servers on one MemoryBroker behave as two nodes of a cluster.
func TestClusterOnSharedBroker(t *testing.T) {
	b := NewMemoryBroker()
	node := func() (*Server, *client, *client) {
		s, hs := newTestServer(t, func(c *Config) {
			c.Broker = b
			c.WriteTimeout = 200 * time.Millisecond // sweeps (and owner syncs) every 50ms
		})
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
	var added struct {
		UserID string `json:"user_id"`
	}
	b1.expect("pusher_internal:member_added").decode(t, &added)
	if added.UserID != "ay" {
		t.Fatalf("member_added %+v", added)
	}
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
