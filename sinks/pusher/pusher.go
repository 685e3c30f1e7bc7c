// Package pusher implements the pusher sink type: events published on
// Pusher channels, on buildbridge's own Pusher-protocol server (in
// process) or on any Pusher-compatible service through pusher-http-go.
package pusher

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	pusherhttp "github.com/pusher/pusher-http-go/v5"
	"golang.org/x/crypto/nacl/secretbox"

	"github.com/buildbridge/buildbridge/sinks"
)

// Publisher is the embedded realtime server, as the sink uses it.
type Publisher interface {
	Publish(ctx context.Context, appID string, channels []string, event, data, excludeSocketID string) error
}

type embeddedServer struct {
	pub       Publisher
	appID     string
	masterKey []byte
}

// embedded is the hub's own server. A sink without host or cluster looks
// it up at delivery time, so the rules can be loaded before (or without)
// a realtime server: such deliveries fail as temporary until one is set.
var embedded atomic.Pointer[embeddedServer]

// UseEmbedded makes sinks without host or cluster publish to pub, the
// hub's in-process server, as app appID. masterKey (32 bytes, or nil)
// encrypts the data sent to private-encrypted- channels, as Pusher's
// end-to-end encryption does.
func UseEmbedded(pub Publisher, appID string, masterKey []byte) {
	if pub == nil {
		embedded.Store(nil)
		return
	}
	embedded.Store(&embeddedServer{pub: pub, appID: appID, masterKey: masterKey})
}

func init() {
	t, ok := sinks.Lookup("pusher")
	if !ok {
		panic("pusher sink type not declared")
	}
	t.New = newSink
	sinks.Register(t)
}

// maxData is Pusher's limit on one event's data.
const maxData = 10 << 10

// ErrNoServer is returned while no embedded server is set.
var ErrNoServer = errors.New("the embedded realtime server is not running")

type sink struct {
	name     string
	external *pusherhttp.Client
}

func newSink(c *sinks.Config) (sinks.Sink, error) {
	s := &sink{name: c.Name}
	if c.IsSet("host") || c.IsSet("cluster") {
		s.external = &pusherhttp.Client{
			AppID: c.Text("app_id"), Key: c.Text("key"), Secret: c.Secret("secret").Reveal(),
			Host: c.Text("host"), Cluster: c.Text("cluster"), Secure: c.Bool("secure"),
			HTTPClient: &http.Client{Timeout: 10 * time.Second},
		}
	}
	return s, nil
}

// Deliver publishes the rendered body as the event's data.
func (s *sink) Deliver(ctx context.Context, d sinks.Delivery) error {
	channel, name := d.Params["channel"], d.Params["event"]
	if len(d.Body) > maxData {
		return fmt.Errorf("event data is %d bytes, over Pusher's %d-byte limit", len(d.Body), maxData)
	}
	if s.external != nil {
		return s.external.Trigger(channel, name, json.RawMessage(d.Body))
	}
	srv := embedded.Load()
	if srv == nil {
		return ErrNoServer
	}
	data := string(d.Body)
	if strings.HasPrefix(channel, "private-encrypted-") {
		if srv.masterKey == nil {
			return fmt.Errorf("channel %s is encrypted but no encryption master key is configured", channel)
		}
		var err error
		if data, err = Encrypt(channel, d.Body, srv.masterKey); err != nil {
			return err
		}
	}
	return srv.pub.Publish(ctx, srv.appID, []string{channel}, name, data, "")
}

func (s *sink) Close() error { return nil }

// SharedSecret is the key of one encrypted channel: SHA-256 of the channel
// name followed by the master key, as Pusher derives it; the auth endpoint
// hands it to subscribers.
func SharedSecret(channel string, masterKey []byte) [32]byte {
	return sha256.Sum256(append([]byte(channel), masterKey...))
}

// Encrypt seals data for a private-encrypted- channel the way Pusher's
// clients expect: {"nonce","ciphertext"} in base64, NaCl secretbox.
func Encrypt(channel string, data, masterKey []byte) (string, error) {
	key := SharedSecret(channel, masterKey)
	var nonce [24]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", fmt.Errorf("encrypt: %w", err)
	}
	sealed := secretbox.Seal(nil, data, &nonce, &key)
	out, err := json.Marshal(map[string]string{
		"nonce":      base64.StdEncoding.EncodeToString(nonce[:]),
		"ciphertext": base64.StdEncoding.EncodeToString(sealed),
	})
	return string(out), err
}
