package bus

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

type batchSubscriberT interface {
	SubscribeBatches(ctx context.Context, topic string, max int) (<-chan []*message.Message, error)
}

func subscribeBatches(t *testing.T, b *Bus, ctx context.Context, durable, topic string, max int) (message.Subscriber, <-chan []*message.Message) {
	t.Helper()
	sub, err := b.Subscriber(durable)
	if err != nil {
		t.Fatalf("Subscriber(%s): %v", durable, err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	ch, err := sub.(batchSubscriberT).SubscribeBatches(ctx, topic, max)
	if err != nil {
		t.Fatalf("SubscribeBatches(%s): %v", topic, err)
	}
	return sub, ch
}

func uuids(ms []*message.Message) string {
	var ids []string
	for _, m := range ms {
		ids = append(ids, m.UUID)
	}
	return strings.Join(ids, " ")
}

func numbered(prefix string, from, to int) []*message.Message {
	var ms []*message.Message
	for i := from; i < to; i++ {
		ms = append(ms, message.NewMessage(fmt.Sprintf("%s%d", prefix, i), []byte(fmt.Sprint(i))))
	}
	return ms
}

func ackAll(ms []*message.Message) {
	for _, m := range ms {
		m.Ack()
	}
}

// A lone message is handed over at once; what arrives while a batch is
// in hand forms the next batch, in order and up to max.
func TestBatchesTakeWhatArrived(t *testing.T) {
	b := openEmbedded(t, t.TempDir(), nil)
	testBatches(t, b)
}

func TestBatchesExternal(t *testing.T) {
	ns := fmt.Sprintf("bbtest-%d", time.Now().UnixNano())
	b := openExternal(t, ns)
	t.Cleanup(func() { deleteNamespace(t, os.Getenv("BUILDBRIDGE_TEST_NATS"), ns) })
	testBatches(t, b)
}

func testBatches(t *testing.T, b *Bus) {
	const topic = "build-state-changed"
	_, ch := subscribeBatches(t, b, t.Context(), "batches", topic, 4)

	published := time.Now()
	publish(t, b, topic, message.NewMessage("m0", []byte("0")))
	first := receive(t, ch, 5*time.Second)
	if got := uuids(first); got != "m0" {
		t.Fatalf("first batch %q, want m0 alone", got)
	}
	if d := time.Since(published); d > time.Second {
		t.Errorf("a lone message took %s to be handed over", d)
	}
	if string(first[0].Payload) != "0" || first[0].Context() == nil {
		t.Errorf("message %q, context %v", first[0].Payload, first[0].Context())
	}
	// While m0 is in hand, ten more arrive.
	publish(t, b, topic, numbered("m", 1, 11)...)
	time.Sleep(300 * time.Millisecond)
	select {
	case ms := <-ch:
		t.Fatalf("batch %q handed over before the previous one was acknowledged", uuids(ms))
	default:
	}
	first[0].Ack()
	var sizes []int
	var all []string
	for n := 0; n < 10; {
		ms := receive(t, ch, 5*time.Second)
		sizes = append(sizes, len(ms))
		all = append(all, uuids(ms))
		n += len(ms)
		ackAll(ms)
	}
	if got, want := strings.Join(all, " "), uuids(numbered("m", 1, 11)); got != want {
		t.Fatalf("messages %q, want %q", got, want)
	}
	if fmt.Sprint(sizes) != "[4 4 2]" {
		t.Errorf("batch sizes %v, want [4 4 2] (max 4, everything already delivered)", sizes)
	}
	select {
	case ms := <-ch:
		t.Fatalf("unexpected batch %q", uuids(ms))
	case <-time.After(300 * time.Millisecond):
	}
}

// A nacked batch comes back after the backoff, each message in a batch of
// its own; the messages published after it are not held back with it.
func TestBatchesNackRedeliversAlone(t *testing.T) {
	b := openEmbedded(t, t.TempDir(), nil)
	const topic = "build-state-changed"
	_, ch := subscribeBatches(t, b, t.Context(), "nack", topic, 100)
	publish(t, b, topic, message.NewMessage("x", nil))
	held := receive(t, ch, 5*time.Second)
	publish(t, b, topic, numbered("r", 0, 3)...)
	time.Sleep(200 * time.Millisecond)
	held[0].Ack()
	refused := receive(t, ch, 5*time.Second)
	if got := uuids(refused); got != "r0 r1 r2" {
		t.Fatalf("batch %q, want r0 r1 r2", got)
	}
	nacked := time.Now()
	for _, m := range refused {
		m.Nack()
	}
	publish(t, b, topic, numbered("n", 0, 2)...)
	var got []string
	for n := 0; n < 5; {
		ms := receive(t, ch, 5*time.Second)
		n += len(ms)
		if ms[0].UUID[0] == 'r' {
			if len(ms) != 1 {
				t.Fatalf("redelivered batch %q, want one message alone", uuids(ms))
			}
			if d := time.Since(nacked); d < 40*time.Millisecond {
				t.Errorf("redelivered after %s, want the RetryMin delay (50ms)", d)
			}
		}
		got = append(got, uuids(ms))
		ackAll(ms)
	}
	all := strings.Join(got, " ")
	for _, id := range []string{"r0", "r1", "r2", "n0", "n1"} {
		if strings.Count(all, id) != 1 {
			t.Fatalf("got %q, want each of r0 r1 r2 n0 n1 once", all)
		}
	}
	if !strings.HasPrefix(all, "n0 n1") {
		t.Errorf("got %q, want n0 n1 first (the refused ones come back after a delay)", all)
	}
}

// Stopping a batch subscription gives back at once what it held and had
// not handed over: another subscription of the durable (here a plain
// Subscribe) gets it without waiting for AckWait.
func TestBatchesStopGivesBack(t *testing.T) {
	b := openEmbedded(t, t.TempDir(), func(c *Config) { c.AckWait = 10 * time.Second })
	const topic = "build-state-changed"
	ctx, cancel := context.WithCancel(t.Context())
	_, ch := subscribeBatches(t, b, ctx, "shared", topic, 100)
	publish(t, b, topic, message.NewMessage("a", nil))
	held := receive(t, ch, 5*time.Second)
	publish(t, b, topic, numbered("q", 0, 5)...)
	time.Sleep(200 * time.Millisecond) // delivered to the batch subscription, waiting
	held[0].Ack()
	cancel()
	// The batch subscription may have handed over the next batch before
	// it saw the cancellation; what it hands over after is not read here.
	for ms := range ch {
		for _, m := range ms {
			m.Nack()
		}
	}
	_, plain := subscribe(t, b, "shared", topic)
	seen := map[string]bool{}
	for len(seen) < 5 {
		m := receive(t, plain, 5*time.Second) // AckWait is 10s
		seen[m.UUID] = true
		m.Ack()
	}
	for i := range 5 {
		if !seen[fmt.Sprintf("q%d", i)] {
			t.Fatalf("q%d not given back: %v", i, seen)
		}
	}
}

// Subscriptions of one durable, batch and plain, share its messages:
// each is delivered to one of them.
func TestBatchesShareTheDurable(t *testing.T) {
	b := openEmbedded(t, t.TempDir(), nil)
	const topic = "build-state-changed"
	_, bch := subscribeBatches(t, b, t.Context(), "mixed", topic, 16)
	_, pch := subscribe(t, b, "mixed", topic)
	_, bch2 := subscribeBatches(t, b, t.Context(), "mixed", topic, 16)
	const n = 60
	publish(t, b, topic, numbered("s", 0, n)...)
	seen := map[string]int{}
	byWhom := map[string]int{}
	deadline := time.After(10 * time.Second)
	for len(seen) < n {
		select {
		case ms := <-bch:
			for _, m := range ms {
				seen[m.UUID]++
			}
			byWhom["batch"] += len(ms)
			ackAll(ms)
		case ms := <-bch2:
			for _, m := range ms {
				seen[m.UUID]++
			}
			byWhom["batch2"] += len(ms)
			ackAll(ms)
		case m := <-pch:
			seen[m.UUID]++
			byWhom["plain"]++
			m.Ack()
		case <-deadline:
			t.Fatalf("%d of %d messages: %v", len(seen), n, byWhom)
		}
	}
	for id, c := range seen {
		if c != 1 {
			t.Errorf("%s delivered %d times", id, c)
		}
	}
	t.Logf("shared: %v", byWhom)
	if byWhom["plain"] == 0 || byWhom["batch"]+byWhom["batch2"] == 0 {
		t.Errorf("one kind of subscription got nothing: %v", byWhom)
	}
}

func TestBatchesRefusesBadMax(t *testing.T) {
	b := openEmbedded(t, t.TempDir(), nil)
	sub, err := b.Subscriber("bad")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if _, err := sub.(batchSubscriberT).SubscribeBatches(t.Context(), "build-state-changed", 0); err == nil {
		t.Fatal("SubscribeBatches with max 0 succeeded")
	}
	_ = sub.Close()
	if _, err := sub.(batchSubscriberT).SubscribeBatches(t.Context(), "build-state-changed", 1); err == nil {
		t.Fatal("SubscribeBatches on a closed subscriber succeeded")
	}
}

// A batch subscription on an external server outlives the server's
// restart: the client subscribes again on reconnection and the durable
// consumer, kept in the server's store, goes on.
func TestBatchesSurviveServerRestart(t *testing.T) {
	const bin = "/usr/sbin/nats-server"
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("%s is absent: %v", bin, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	start := func() (stop func()) {
		_, port, _ := net.SplitHostPort(addr)
		cmd := exec.Command(bin, "-a", "127.0.0.1", "-p", port, "-js", "-sd", dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		stop = func() {
			cmd.Process.Kill()
			<-done
		}
		t.Cleanup(stop)
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
				c.Close()
				return stop
			}
			if time.Now().After(deadline) {
				t.Fatalf("nats-server on %s not up", addr)
			}
		}
	}
	stop := start()
	b, err := Open(t.Context(), Config{URL: "nats://" + addr, Logger: testLogger(t), ReconnectWait: 100 * time.Millisecond,
		AckWait: 2 * time.Second, RetryMin: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond, CloseTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	const topic = "build-state-changed"
	_, ch := subscribeBatches(t, b, t.Context(), "restart", topic, 16)
	publish(t, b, topic, message.NewMessage("before", nil))
	ms := receive(t, ch, 5*time.Second)
	if uuids(ms) != "before" {
		t.Fatalf("got %q", uuids(ms))
	}
	ackAll(ms)

	stop()
	start()
	for deadline := time.Now().Add(10 * time.Second); b.Ping(t.Context()) != nil; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("bus not reconnected within 10s")
		}
	}
	publish(t, b, topic, message.NewMessage("after", nil))
	// A killed server may not have stored the last ack: "before" may come
	// again (at least once), but "after" must come.
	for {
		ms = receive(t, ch, 10*time.Second)
		ackAll(ms)
		got := uuids(ms)
		if strings.Contains(got, "after") {
			break
		}
		if got != "before" {
			t.Fatalf("after the restart got %q, want after (or before again)", got)
		}
		t.Logf("before delivered again after the kill")
	}
}
