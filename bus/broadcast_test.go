package bus

import (
	"fmt"
	"testing"
	"time"
)

// TestBroadcastReachesEveryNode: two buses on one external NATS and one
// namespace are two nodes; a broadcast from either reaches both
// listeners, and a bus of another namespace hears nothing.
func TestBroadcastReachesEveryNode(t *testing.T) {
	ns := fmt.Sprintf("bcast%d", time.Now().UnixNano())
	a, b := openExternal(t, ns), openExternal(t, ns)
	other := openExternal(t, ns+"x")
	listen := func(bus *Bus) chan string {
		ch := make(chan string, 8)
		stop, err := bus.Listen("rules.reload", func(d []byte) { ch <- string(d) })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
		return ch
	}
	atA, atB, atOther := listen(a), listen(b), listen(other)
	if err := b.Broadcast("rules.reload", []byte("from b")); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]chan string{"a": atA, "b": atB} {
		select {
		case got := <-ch:
			if got != "from b" {
				t.Fatalf("%s got %q", name, got)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("broadcast did not reach %s", name)
		}
	}
	select {
	case got := <-atOther:
		t.Fatalf("another namespace heard %q", got)
	case <-time.After(200 * time.Millisecond):
	}
}

// TestBroadcastEmbedded: on the embedded bus the one node hears itself;
// after stop it hears nothing; bad topics are refused.
func TestBroadcastEmbedded(t *testing.T) {
	b := openEmbedded(t, t.TempDir(), nil)
	ch := make(chan string, 2)
	stop, err := b.Listen("rules.reload", func(d []byte) { ch <- string(d) })
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Broadcast("rules.reload", []byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("no broadcast heard")
	}
	stop()
	if err := b.Broadcast("rules.reload", []byte("y")); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-ch:
		t.Fatalf("heard %q after stop", got)
	case <-time.After(200 * time.Millisecond):
	}
	if err := b.Broadcast("bad topic", nil); err == nil {
		t.Fatal("a topic with a space was accepted")
	}
}
