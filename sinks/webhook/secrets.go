package webhook

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/buildbridge/buildbridge/store"
)

// SecretStore keeps the secrets the hub generates for webhook sinks whose
// rules give none, by sink name; *store.DB implements it.
type SecretStore interface {
	SinkSecret(ctx context.Context, sink string) (store.SinkSecret, error)
	CreateSinkSecret(ctx context.Context, sink, secret string) (store.SinkSecret, bool, error)
	ShowSinkSecret(ctx context.Context, sink, next string, grace time.Duration) (store.SinkSecret, bool, error)
}

// SecretsConfig configures Secrets.
type SecretsConfig struct {
	Store  SecretStore
	Logger *slog.Logger
	// TTL is how long a secret read from the store is used before it is
	// read again: the longest another node's rotation takes to reach
	// this node (default 10s). The node that rotates uses the new secret
	// at once.
	TTL time.Duration
	// Now is the clock of the grace periods (default time.Now).
	Now func() time.Time
}

func (c *SecretsConfig) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.TTL == 0 {
		c.TTL = 10 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate reports a missing store or an impossible TTL.
func (c *SecretsConfig) Validate() error {
	if c.Store == nil {
		return errors.New("webhook: SecretsConfig.Store is required")
	}
	if c.TTL < 0 {
		return errors.New("webhook: SecretsConfig.TTL must not be negative")
	}
	return nil
}

// Secrets gives the webhook sinks configured without a secret the one
// the hub generated for them: generated (crypto/rand, 32 bytes) and
// stored the first time a sink of that name is loaded, the same after
// every restart and on every node, shown once and rotated through Show.
// A secret written in the rules always wins: such a sink never asks.
type Secrets struct {
	cfg SecretsConfig

	mu    sync.Mutex
	cache map[string]*cachedSecret
}

// cachedSecret is a sink's stored secret, parsed.
type cachedSecret struct {
	current, previous []byte
	previousUntil     time.Time
	fetched           time.Time
}

// keys returns the keys that sign at now: the current one first.
func (c *cachedSecret) keys(now time.Time) [][]byte {
	if c.previous != nil && now.Before(c.previousUntil) {
		return [][]byte{c.current, c.previous}
	}
	return [][]byte{c.current}
}

// NewSecrets makes the keeper of generated sink secrets.
func NewSecrets(cfg SecretsConfig) (*Secrets, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Secrets{cfg: cfg, cache: map[string]*cachedSecret{}}, nil
}

// Fingerprint names a secret without revealing it: the start of its
// SHA-256, enough to tell which secret a receiver holds
// (printf %s "$SECRET" | sha256sum).
func Fingerprint(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return "sha256:" + hex.EncodeToString(sum[:8])
}

// Load makes sure the sink has a secret, generating and storing one when
// it has none, and caches it (a cached one younger than the TTL is
// kept). Sinks call it when they are made, so the
// secret exists (and the operator is told) before the first event.
func (s *Secrets) Load(ctx context.Context, sink string) error {
	_, err := s.Keys(ctx, sink)
	return err
}

// Keys returns the keys that sign the sink's messages now: the current
// secret's, then the previous one's while its grace period lasts. A
// cached answer older than the TTL is read again; when that read fails
// the cached one is used (a secret rarely changes; a store that cannot
// be read holds the deliveries back anyway).
func (s *Secrets) Keys(ctx context.Context, sink string) ([][]byte, error) {
	now := s.cfg.Now()
	s.mu.Lock()
	c := s.cache[sink]
	s.mu.Unlock()
	if c != nil && now.Sub(c.fetched) < s.cfg.TTL {
		return c.keys(now), nil
	}
	fresh, err := s.fetch(ctx, sink)
	if err != nil {
		if c == nil {
			return nil, err
		}
		s.cfg.Logger.Warn("webhook sink: cannot read its generated secret again; signing with the one read before",
			"sink", sink, "err", err)
		s.mu.Lock()
		c.fetched = now // try again after a TTL, not on every message
		s.mu.Unlock()
		return c.keys(now), nil
	}
	return fresh.keys(now), nil
}

// fetch reads the sink's secret from the store, creating it when there
// is none, and caches it.
func (s *Secrets) fetch(ctx context.Context, sink string) (*cachedSecret, error) {
	w, err := s.cfg.Store.SinkSecret(ctx, sink)
	if errors.Is(err, store.ErrNotFound) {
		var created bool
		w, created, err = s.cfg.Store.CreateSinkSecret(ctx, sink, NewSecret())
		if err == nil && created {
			// Shown once, and not here: a log line is kept, shipped and
			// read by more people than the admins, for longer than anyone
			// controls, and a secret printed in it could never be taken
			// back. The line says that a secret exists, which one (its
			// fingerprint) and how an admin gets it: the API answers that
			// call once with the secret itself, to an authenticated admin,
			// uncached; after that it rotates instead.
			s.cfg.Logger.Info("webhook sink: no secret in the rules, so one was generated; an admin fetches it once with POST /api/v1/sinks/"+sink+"/secret",
				"sink", sink, "fingerprint", Fingerprint(w.Secret))
		}
	}
	if err != nil {
		return nil, fmt.Errorf("generated secret of webhook sink %q: %w", sink, err)
	}
	return s.put(w)
}

// put parses and caches a stored secret.
func (s *Secrets) put(w store.SinkSecret) (*cachedSecret, error) {
	c := &cachedSecret{fetched: s.cfg.Now()}
	var err error
	if c.current, err = ParseSecret(w.Secret); err != nil {
		return nil, fmt.Errorf("stored secret of webhook sink %q: %w", w.Sink, err)
	}
	if w.Previous != "" {
		if c.previous, err = ParseSecret(w.Previous); err != nil {
			return nil, fmt.Errorf("stored previous secret of webhook sink %q: %w", w.Sink, err)
		}
		c.previousUntil = w.PreviousExpiresAt
	}
	s.mu.Lock()
	s.cache[w.Sink] = c
	s.mu.Unlock()
	return c, nil
}

// Show hands out the sink's generated secret: the first time, the secret
// generated when the sink was loaded; after that, a new secret, the
// previous one signing alongside it for grace. replaced reports the
// latter. This node signs with the answer at once, the others within the
// TTL.
func (s *Secrets) Show(ctx context.Context, sink string, grace time.Duration) (w store.SinkSecret, replaced bool, err error) {
	w, replaced, err = s.cfg.Store.ShowSinkSecret(ctx, sink, NewSecret(), grace)
	if err != nil {
		return w, false, err
	}
	if _, err := s.put(w); err != nil {
		return store.SinkSecret{}, false, err
	}
	return w, replaced, nil
}
