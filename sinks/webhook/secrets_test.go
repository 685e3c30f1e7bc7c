package webhook

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/sinks/delivery"
	"github.com/buildbridge/buildbridge/store"
)

// syncBuffer is a log destination safe for the sinks' goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// testClock is a settable clock.
type testClock struct{ ns atomic.Int64 }

func newTestClock() *testClock {
	c := &testClock{}
	c.ns.Store(time.Now().UnixNano())
	return c
}
func (c *testClock) Now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *testClock) Add(d time.Duration) { c.ns.Add(int64(d)) }
func (c *testClock) Set(t time.Time)     { c.ns.Store(t.UnixNano()) }

func mustConfig(t *testing.T, src string) *sinks.Config {
	t.Helper()
	c, errs := decode(t, src)
	if len(errs) > 0 {
		t.Fatalf("config: %v", errs)
	}
	return c
}

// receiver records the requests it gets.
type receiver struct {
	srv  *httptest.Server
	reqs chan got
}

type got struct {
	header http.Header
	body   []byte
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{reqs: make(chan got, 16)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.reqs <- got{req.Header.Clone(), b}
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// send posts one message through s and returns the request received.
func (r *receiver) send(t *testing.T, s *Sink, id string) got {
	t.Helper()
	if _, err := s.Send(context.Background(), delivery.Attempt{Delivery: testDelivery(`{"id":"` + id + `"}`), ID: id}); err != nil {
		t.Fatalf("send %s: %v", id, err)
	}
	select {
	case g := <-r.reqs:
		return g
	case <-time.After(10 * time.Second):
		t.Fatalf("send %s: nothing received", id)
	}
	return got{}
}

// verifies reports whether the standard-webhooks library accepts the
// request with secret.
func verifies(t *testing.T, secret string, g got) bool {
	t.Helper()
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	return wh.Verify(g.body, g.header) == nil
}

func openStore(t *testing.T, dir string) *store.DB {
	t.Helper()
	db, err := store.Open(context.Background(), store.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// TestGeneratedSecret: a sink without a secret signs with one the hub
// generates, stores and logs once (without its value); the same secret
// after a restart; shown once, then rotated with both signatures during
// the grace; another node follows a rotation within the TTL.
func TestGeneratedSecret(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db := openStore(t, dir)
	var logs syncBuffer
	clock := newTestClock()
	secrets, err := NewSecrets(SecretsConfig{Store: db, Logger: slog.New(slog.NewTextHandler(&logs, nil)), Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	recv := newReceiver(t)
	cfg := "url: " + recv.srv.URL + "\n"
	if _, err := NewSink(mustConfig(t, cfg), Options{Allow: loopback}); err == nil || !strings.Contains(err.Error(), "no store") {
		t.Fatalf("a sink without a secret and without Secrets: %v", err)
	}

	s := mustSink(t, cfg, Options{Allow: loopback, Secrets: secrets})
	stored, err := db.SinkSecret(ctx, "hook")
	if err != nil {
		t.Fatalf("the secret was not generated when the sink was made: %v", err)
	}
	if key, err := ParseSecret(stored.Secret); err != nil || len(key) < 24 {
		t.Fatalf("generated secret: %d bytes, %v", len(key), err)
	}
	if n := strings.Count(logs.String(), "generated"); n != 1 || !strings.Contains(logs.String(), "POST /api/v1/sinks/hook/secret") ||
		!strings.Contains(logs.String(), Fingerprint(stored.Secret)) {
		t.Fatalf("%d creation lines, want one with the API call and the fingerprint:\n%s", n, logs.String())
	}
	g := recv.send(t, s, "msg_1")
	if !verifies(t, stored.Secret, g) || len(strings.Fields(g.header.Get(HeaderSignature))) != 1 {
		t.Fatalf("signed with the generated secret? %v", g.header)
	}

	// Made again (a reload) and after a restart: the same secret, no
	// second line.
	s2 := mustSink(t, cfg, Options{Allow: loopback, Secrets: secrets})
	if g := recv.send(t, s2, "msg_2"); !verifies(t, stored.Secret, g) {
		t.Fatal("a remade sink does not sign with the stored secret")
	}
	db.Close()
	db = openStore(t, dir)
	restarted, err := NewSecrets(SecretsConfig{Store: db, Logger: slog.New(slog.NewTextHandler(&logs, nil)), Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	s3 := mustSink(t, cfg, Options{Allow: loopback, Secrets: restarted})
	if g := recv.send(t, s3, "msg_3"); !verifies(t, stored.Secret, g) {
		t.Fatal("after a restart the sink signs with another secret")
	}
	if n := strings.Count(logs.String(), "generated"); n != 1 {
		t.Fatalf("%d creation lines after a reload and a restart:\n%s", n, logs.String())
	}

	// Shown once: the generated secret; then a rotation.
	shown, replaced, err := restarted.Show(ctx, "hook", time.Hour)
	if err != nil || replaced || shown.Secret != stored.Secret {
		t.Fatalf("first show: replaced %v, same %v, %v", replaced, shown.Secret == stored.Secret, err)
	}
	rot, replaced, err := restarted.Show(ctx, "hook", time.Hour)
	if err != nil || !replaced || rot.Secret == stored.Secret || rot.Previous != stored.Secret {
		t.Fatalf("rotation: replaced %v, %v", replaced, err)
	}
	g = recv.send(t, s3, "msg_4") // this node: at once
	if n := len(strings.Fields(g.header.Get(HeaderSignature))); n != 2 || !verifies(t, rot.Secret, g) || !verifies(t, stored.Secret, g) {
		t.Fatalf("during the grace: %d signatures, new %v, old %v", n, verifies(t, rot.Secret, g), verifies(t, stored.Secret, g))
	}
	if verifies(t, NewSecret(), g) {
		t.Fatal("a third secret verifies")
	}

	// Another node (its own cache) signs with the old secret until its
	// TTL runs out, then with both.
	other, _ := NewSecrets(SecretsConfig{Store: db, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: clock.Now})
	other.put(stored)
	s4 := mustSink(t, cfg, Options{Allow: loopback, Secrets: other})
	if g := recv.send(t, s4, "msg_5"); verifies(t, rot.Secret, g) || !verifies(t, stored.Secret, g) {
		t.Fatal("another node followed the rotation before its TTL")
	}
	clock.Add(11 * time.Second)
	if g := recv.send(t, s4, "msg_6"); !verifies(t, rot.Secret, g) || !verifies(t, stored.Secret, g) {
		t.Fatal("another node did not follow the rotation after its TTL")
	}

	// After the grace: the new secret only.
	clock.Set(rot.PreviousExpiresAt.Add(time.Second))
	for _, sk := range []*Sink{s3, s4} {
		g := recv.send(t, sk, "msg_7")
		if n := len(strings.Fields(g.header.Get(HeaderSignature))); n != 1 || !verifies(t, rot.Secret, g) || verifies(t, stored.Secret, g) {
			t.Fatalf("after the grace: %d signatures", n)
		}
	}
	for _, sec := range []string{stored.Secret, rot.Secret} {
		if strings.Contains(logs.String(), strings.TrimPrefix(sec, SecretPrefix)) {
			t.Fatalf("a secret is in the log:\n%s", logs.String())
		}
	}
}

// A secret in the rules wins: the store is not asked.
func TestRulesSecretWins(t *testing.T) {
	db := openStore(t, t.TempDir())
	secrets, _ := NewSecrets(SecretsConfig{Store: db, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if _, _, err := db.CreateSinkSecret(context.Background(), "hook", NewSecret()); err != nil {
		t.Fatal(err)
	}
	recv := newReceiver(t)
	s := mustSink(t, "url: "+recv.srv.URL+"\nsecret: "+secretA+"\n", Options{Allow: loopback, Secrets: secrets})
	stored, _ := db.SinkSecret(context.Background(), "hook")
	g := recv.send(t, s, "msg_1")
	if !verifies(t, secretA, g) || verifies(t, stored.Secret, g) || len(strings.Fields(g.header.Get(HeaderSignature))) != 1 {
		t.Fatal("the rules' secret does not win over the stored one")
	}
}

// failingStore fails every call, as a store that is down does.
type failingStore struct{ SecretStore }

var errDown = errors.New("store down")

func (failingStore) SinkSecret(context.Context, string) (store.SinkSecret, error) {
	return store.SinkSecret{}, errDown
}

// A store that cannot be read when the sink is made: the sink is made,
// its messages fail as temporary until the store answers.
func TestGeneratedSecretStoreDown(t *testing.T) {
	var logs syncBuffer
	secrets, _ := NewSecrets(SecretsConfig{Store: failingStore{}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	s := mustSink(t, "url: http://127.0.0.1:1/\n", Options{Allow: loopback, Secrets: secrets})
	if !strings.Contains(logs.String(), "not available yet") {
		t.Fatalf("log: %s", logs.String())
	}
	_, err := s.Send(context.Background(), delivery.Attempt{Delivery: testDelivery("{}"), ID: "msg_1"})
	var de *delivery.Error
	if !errors.Is(err, errDown) || (errors.As(err, &de) && de.Permanent) {
		t.Fatalf("send without a readable secret: %v", err)
	}
}

func TestConfigWithoutSecret(t *testing.T) {
	if _, errs := decode(t, "url: https://x.example/h\n"); len(errs) > 0 {
		t.Fatalf("a webhook without a secret is refused: %v", errs)
	}
	if _, errs := decode(t, "url: https://x.example/h\nprevious_secret: "+secretB+"\n"); len(errs) == 0 ||
		!strings.Contains(errs[0].Error(), "previous_secret: needs secret") {
		t.Fatalf("previous_secret without secret: %v", errs)
	}
}
