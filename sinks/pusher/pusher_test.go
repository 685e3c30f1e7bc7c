package pusher

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/nacl/secretbox"

	"github.com/buildbridge/buildbridge/sinks"
)

type published struct {
	app, event, data string
	channels         []string
}

type recorder struct{ got []published }

func (r *recorder) Publish(_ context.Context, app string, chs []string, ev, data, _ string) error {
	r.got = append(r.got, published{app, ev, data, chs})
	return nil
}

func TestEncryptMatchesPusherScheme(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	out, err := Encrypt("private-encrypted-user-1", []byte(`{"a":1}`), key)
	if err != nil {
		t.Fatal(err)
	}
	var msg struct{ Nonce, Ciphertext string }
	if err := json.Unmarshal([]byte(out), &msg); err != nil {
		t.Fatal(err)
	}
	nonce, _ := base64.StdEncoding.DecodeString(msg.Nonce)
	box, _ := base64.StdEncoding.DecodeString(msg.Ciphertext)
	var n [24]byte
	copy(n[:], nonce)
	shared := SharedSecret("private-encrypted-user-1", key)
	plain, ok := secretbox.Open(nil, box, &n, &shared)
	if !ok || string(plain) != `{"a":1}` {
		t.Fatalf("decrypt: %q %v", plain, ok)
	}
	other := SharedSecret("private-encrypted-user-2", key)
	if _, ok := secretbox.Open(nil, box, &n, &other); ok {
		t.Fatal("another channel's secret opened the message")
	}
}

func TestDeliverEmbedded(t *testing.T) {
	s, err := newSink(&sinks.Config{Name: "realtime", Type: "pusher"})
	if err != nil {
		t.Fatal(err)
	}
	UseEmbedded(nil, "", nil)
	d := sinks.Delivery{Body: []byte(`{"x":1}`), Params: map[string]string{"channel": "private-user-1", "event": "build-state-changed"}}
	if err := s.Deliver(context.Background(), d); !errors.Is(err, ErrNoServer) {
		t.Fatalf("without a server: %v", err)
	}
	rec := &recorder{}
	UseEmbedded(rec, "app1", bytes.Repeat([]byte{1}, 32))
	t.Cleanup(func() { UseEmbedded(nil, "", nil) })
	if err := s.Deliver(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	d.Params["channel"] = "private-encrypted-user-1"
	if err := s.Deliver(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if len(rec.got) != 2 || rec.got[0].app != "app1" || rec.got[0].data != `{"x":1}` || rec.got[0].channels[0] != "private-user-1" {
		t.Fatalf("published %+v", rec.got)
	}
	if !strings.Contains(rec.got[1].data, "ciphertext") || strings.Contains(rec.got[1].data, `"x"`) {
		t.Fatalf("encrypted channel got plain data: %s", rec.got[1].data)
	}
	d.Body = bytes.Repeat([]byte("a"), maxData+1)
	if err := s.Deliver(context.Background(), d); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("oversized: %v", err)
	}
}
