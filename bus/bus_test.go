package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// openEmbedded opens an embedded bus on dir, closed at the end of the test.
func openEmbedded(t *testing.T, dir string, mod func(*Config)) *Bus {
	t.Helper()
	cfg := Config{DataDir: dir, Logger: testLogger(t), AckWait: 2 * time.Second,
		RetryMin: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond, CloseTimeout: 5 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	b, err := Open(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

// openExternal opens a bus on BUILDBRIDGE_TEST_NATS in a namespace of its
// own, and deletes that namespace's streams at the end.
func openExternal(t *testing.T, ns string) *Bus {
	t.Helper()
	url := os.Getenv("BUILDBRIDGE_TEST_NATS")
	if url == "" {
		t.Skip("BUILDBRIDGE_TEST_NATS not set (e.g. nats://127.0.0.1:4222): external NATS test skipped")
	}
	b, err := Open(t.Context(), Config{URL: url, Namespace: ns, Logger: testLogger(t),
		AckWait: 2 * time.Second, RetryMin: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("Open %s: %v", url, err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func deleteNamespace(t *testing.T, url, ns string) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Errorf("cleanup connect: %v", err)
		return
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	names := js.StreamNames(ctx)
	var del []string
	for n := range names.Name() {
		if strings.HasPrefix(n, ns+"_") {
			del = append(del, n)
		}
	}
	for _, n := range del {
		if err := js.DeleteStream(ctx, n); err != nil {
			t.Errorf("cleanup delete stream %s: %v", n, err)
		}
	}
}

func subscribe(t *testing.T, b *Bus, durable, topic string) (message.Subscriber, <-chan *message.Message) {
	t.Helper()
	sub, err := b.Subscriber(durable)
	if err != nil {
		t.Fatalf("Subscriber(%s): %v", durable, err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	ch, err := sub.Subscribe(t.Context(), topic)
	if err != nil {
		t.Fatalf("Subscribe(%s): %v", topic, err)
	}
	return sub, ch
}

// receive takes the next message (or batch) from a subscription.
func receive[T any](t *testing.T, ch <-chan T, within time.Duration) T {
	t.Helper()
	select {
	case m, ok := <-ch:
		if !ok {
			t.Fatal("subscription closed")
		}
		return m
	case <-time.After(within):
		t.Fatalf("nothing received within %s", within)
	}
	var none T
	return none
}

func expectNothing(t *testing.T, ch <-chan *message.Message, during time.Duration) {
	t.Helper()
	select {
	case m := <-ch:
		t.Fatalf("unexpected message %s %q", m.UUID, m.Payload)
	case <-time.After(during):
	}
}

func publish(t *testing.T, b *Bus, topic string, msgs ...*message.Message) {
	t.Helper()
	if err := b.Publisher().Publish(topic, msgs...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		cfg  Config
		want string
	}{
		{Config{}, "DataDir"},
		{Config{DataDir: "x", Namespace: "a.b"}, "Namespace"},
		{Config{DataDir: "x", Namespace: "_x"}, "Namespace"},
		{Config{DataDir: "x", Topics: []string{"a.*"}}, "Topics"},
		{Config{DataDir: "x", Topics: []string{"a..b"}}, "Topics"},
		{Config{DataDir: "x", MaxAckPending: -1}, "MaxAckPending"},
		{Config{DataDir: "x", RetryMin: time.Hour, RetryMax: time.Minute}, "RetryMin"},
		{Config{DataDir: "x", AckWait: -time.Second}, "AckWait"},
	}
	for _, c := range cases {
		c.cfg.setDefaults()
		err := c.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate(%+v) = %v, want error naming %s", c.cfg, err, c.want)
		}
	}
	ok := Config{URL: "nats://127.0.0.1:4222"}
	ok.setDefaults()
	if err := ok.Validate(); err != nil {
		t.Errorf("external config without DataDir: %v", err)
	}
}

func TestEmbeddedPublishSubscribe(t *testing.T) {
	start := time.Now()
	b := openEmbedded(t, t.TempDir(), nil)
	t.Logf("embedded bus open in %s", time.Since(start))
	if err := b.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	_, ch := subscribe(t, b, "test", "build.transition")

	var msgs []*message.Message
	for i := range 5 {
		m := message.NewMessage(fmt.Sprintf("id-%d", i), []byte(fmt.Sprintf("payload %d", i)))
		m.Metadata.Set("k", "v")
		msgs = append(msgs, m)
	}
	publish(t, b, "build.transition", msgs[0])     // one: synchronous path
	publish(t, b, "build.transition", msgs[1:]...) // several: async batch
	for i := range 5 {
		m := receive(t, ch, 5*time.Second)
		if want := fmt.Sprintf("id-%d", i); m.UUID != want || string(m.Payload) != fmt.Sprintf("payload %d", i) {
			t.Fatalf("message %d = %s %q, want %s", i, m.UUID, m.Payload, want)
		}
		if m.Metadata.Get("k") != "v" {
			t.Errorf("metadata lost: %v", m.Metadata)
		}
		m.Ack()
	}
}

func TestEmbeddedDeduplicates(t *testing.T) {
	b := openEmbedded(t, t.TempDir(), nil)
	_, ch := subscribe(t, b, "dedup", "build-state-changed")
	publish(t, b, "build-state-changed", message.NewMessage("same", []byte("first")))
	publish(t, b, "build-state-changed", message.NewMessage("same", []byte("second")))
	publish(t, b, "build-state-changed",
		message.NewMessage("same", []byte("third")), message.NewMessage("other", []byte("x")),
		message.NewMessage("other", []byte("y")))
	m := receive(t, ch, 5*time.Second)
	if m.UUID != "same" || string(m.Payload) != "first" {
		t.Fatalf("got %s %q, want same/first", m.UUID, m.Payload)
	}
	m.Ack()
	m = receive(t, ch, 5*time.Second)
	if m.UUID != "other" || string(m.Payload) != "x" {
		t.Fatalf("got %s %q, want other/x", m.UUID, m.Payload)
	}
	m.Ack()
	expectNothing(t, ch, 300*time.Millisecond)
}

func TestPublishRefusesMissingUUID(t *testing.T) {
	b := openEmbedded(t, t.TempDir(), nil)
	err := b.Publisher().Publish("build.transition", message.NewMessage("ok", nil), message.NewMessage(" ", nil))
	var pe *PublishError
	if !errors.As(err, &pe) || !pe.MessageFailed(" ") || pe.MessageFailed("ok") {
		t.Fatalf("Publish = %v, want a PublishError for the blank UUID only", err)
	}
	if err := b.Publisher().Publish("bad topic", message.NewMessage("x", nil)); err == nil {
		t.Fatal("Publish to an invalid topic succeeded")
	}
}

func TestEmbeddedNackRedelivers(t *testing.T) {
	b := openEmbedded(t, t.TempDir(), nil)
	_, ch := subscribe(t, b, "nack", "build.transition")
	publish(t, b, "build.transition", message.NewMessage("n1", []byte("x")))
	m := receive(t, ch, 5*time.Second)
	nacked := time.Now()
	m.Nack()
	m = receive(t, ch, 5*time.Second)
	if m.UUID != "n1" {
		t.Fatalf("redelivered %s, want n1", m.UUID)
	}
	if d := time.Since(nacked); d < 40*time.Millisecond {
		t.Errorf("redelivered after %s, want the RetryMin delay (50ms)", d)
	}
	m.Ack()
	expectNothing(t, ch, 300*time.Millisecond)
}

// A consumer that stops without acking gets the message again after the
// whole bus restarts on the same data directory, and a clean shutdown
// keeps the durable consumer and its position.
func TestEmbeddedRedeliveryAfterRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{DataDir: dir, Logger: testLogger(t), AckWait: time.Second, CloseTimeout: 5 * time.Second}

	b, err := Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := b.Subscriber("restart")
	if err != nil {
		t.Fatal(err)
	}
	ch, err := sub.Subscribe(t.Context(), "build.transition")
	if err != nil {
		t.Fatal(err)
	}
	publish(t, b, "build.transition", message.NewMessage("acked", []byte("1")), message.NewMessage("unacked", []byte("2")))
	m := receive(t, ch, 5*time.Second)
	if m.UUID != "acked" {
		t.Fatalf("got %s, want acked", m.UUID)
	}
	m.Ack()
	m = receive(t, ch, 5*time.Second)
	if m.UUID != "unacked" {
		t.Fatalf("got %s, want unacked", m.UUID)
	}
	// Stop without acking: close the subscriber and the bus.
	if err := sub.Close(); err != nil {
		t.Fatalf("subscriber Close: %v", err)
	}
	info, err := b.js.PushConsumer(t.Context(), b.Stream("build.transition"), "restart")
	if err != nil {
		t.Fatalf("durable consumer gone after subscriber Close: %v", err)
	}
	if got := info.CachedInfo().NumAckPending; got != 1 {
		t.Errorf("consumer ack pending = %d, want 1 (the unacked message)", got)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("bus Close: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := b.Ping(t.Context()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ping after Close = %v, want ErrClosed", err)
	}

	b2 := openEmbedded(t, dir, func(c *Config) { c.AckWait = time.Second })
	_, ch2 := subscribe(t, b2, "restart", "build.transition")
	m = receive(t, ch2, 5*time.Second)
	if m.UUID != "unacked" || string(m.Payload) != "2" {
		t.Fatalf("after restart got %s %q, want unacked", m.UUID, m.Payload)
	}
	m.Ack()
	expectNothing(t, ch2, 1500*time.Millisecond)

	// A message published while no subscriber runs waits for the durable.
	publish(t, b2, "build.transition", message.NewMessage("later", []byte("3")))
	if m = receive(t, ch2, 5*time.Second); m.UUID != "later" {
		t.Fatalf("got %s, want later", m.UUID)
	}
	m.Ack()
}

func TestEmbeddedAddedTopicAndSharedDurable(t *testing.T) {
	b := openEmbedded(t, t.TempDir(), func(c *Config) { c.Topics = []string{"usage.api"} })
	if err := b.EnsureTopic(t.Context(), "usage.api"); err != nil {
		t.Fatal(err)
	}
	// Two subscribers of one durable share its messages.
	_, ch1 := subscribe(t, b, "shared", "usage.api")
	_, ch2 := subscribe(t, b, "shared", "usage.api")
	const n = 20
	var msgs []*message.Message
	for i := range n {
		msgs = append(msgs, message.NewMessage(fmt.Sprintf("u%d", i), nil))
	}
	publish(t, b, "usage.api", msgs...)
	seen := map[string]int{}
	for range n {
		var m *message.Message
		select {
		case m = <-ch1:
		case m = <-ch2:
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d of %d messages", len(seen), n)
		}
		seen[m.UUID]++
		m.Ack()
	}
	if len(seen) != n {
		t.Fatalf("saw %d distinct messages, want %d", len(seen), n)
	}
	// "a.b" and "a_b" map to one stream name: the second is refused.
	if err := b.EnsureTopic(t.Context(), "usage_api"); err == nil {
		t.Fatal("EnsureTopic(usage_api) succeeded over usage.api's stream")
	}
	if _, err := b.Subscriber("bad.name"); err == nil {
		t.Fatal("Subscriber with a dotted durable name succeeded")
	}
}

func TestBackoff(t *testing.T) {
	d := backoff{min: time.Second, max: 10 * time.Second}
	for n, want := range map[uint64]time.Duration{0: time.Second, 1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 5: 10 * time.Second, 1 << 40: 10 * time.Second} {
		if got := d.WaitTime(n); got != want {
			t.Errorf("WaitTime(%d) = %s, want %s", n, got, want)
		}
	}
}

func TestExternal(t *testing.T) {
	ns := fmt.Sprintf("bbtest-%d", time.Now().UnixNano())
	b := openExternal(t, ns)
	t.Cleanup(func() { deleteNamespace(t, os.Getenv("BUILDBRIDGE_TEST_NATS"), ns) })
	if err := b.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	sub, ch := subscribe(t, b, "ext", "build-state-changed")
	publish(t, b, "build-state-changed", message.NewMessage("e1", []byte("a")), message.NewMessage("e1", []byte("dup")),
		message.NewMessage("e2", []byte("b")))
	m := receive(t, ch, 5*time.Second)
	if m.UUID != "e1" || string(m.Payload) != "a" {
		t.Fatalf("got %s %q", m.UUID, m.Payload)
	}
	m.Ack()
	m = receive(t, ch, 5*time.Second)
	if m.UUID != "e2" {
		t.Fatalf("got %s, want e2 (e1 de-duplicated)", m.UUID)
	}
	// Stop without acking e2 and reconnect: the durable gives it back.
	_ = sub.Close()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b2 := openExternal(t, ns)
	_, ch2 := subscribe(t, b2, "ext", "build-state-changed")
	if m = receive(t, ch2, 5*time.Second); m.UUID != "e2" {
		t.Fatalf("after reconnect got %s, want e2", m.UUID)
	}
	m.Ack()
	expectNothing(t, ch2, 300*time.Millisecond)
}

// A stream deleted behind the bus's back is provisioned again by the next
// Publish after the failed one.
func TestPublishRecreatesDeletedStream(t *testing.T) {
	b := openEmbedded(t, t.TempDir(), nil)
	publish(t, b, "usage.deleted", message.NewMessage("a", nil))
	if err := b.js.DeleteStream(t.Context(), b.Stream("usage.deleted")); err != nil {
		t.Fatal(err)
	}
	if err := b.Publisher().Publish("usage.deleted", message.NewMessage("b", nil)); err == nil {
		t.Fatal("Publish to a deleted stream succeeded")
	}
	publish(t, b, "usage.deleted", message.NewMessage("c", nil), message.NewMessage("d", nil))
}
