package store

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

func TestProjectWebhookCache(t *testing.T) {
	ctx := context.Background()
	var (
		mu  sync.Mutex
		now = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	open := func(t *testing.T, ttl time.Duration) (*DB, builds.Project) {
		s, err := Open(ctx, Config{DataDir: t.TempDir(), Now: clock, WebhookCacheTTL: ttl, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		_, p := mkProject(t, s, "app")
		return s, p
	}
	secretOf := func(t *testing.T, s *DB) string {
		t.Helper()
		_, w, err := s.ProjectWebhook(ctx, "app")
		if err != nil {
			t.Fatal(err)
		}
		return w.Secret
	}
	// elsewhere changes the secret as another node would: not through
	// this store's methods.
	elsewhere := func(t *testing.T, s *DB, secret string) {
		t.Helper()
		if _, err := s.db.ExecContext(ctx, `UPDATE webhook_secrets SET secret = ?`, secret); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("own writes apply at once", func(t *testing.T) {
		s, p := open(t, time.Second)
		if _, err := s.RotateWebhookSecret(ctx, p.ID, "first", 0); err != nil {
			t.Fatal(err)
		}
		if got := secretOf(t, s); got != "first" {
			t.Fatalf("secret %q, want first", got)
		}
		if _, err := s.RotateWebhookSecret(ctx, p.ID, "second", 0); err != nil {
			t.Fatal(err)
		}
		if got := secretOf(t, s); got != "second" {
			t.Fatalf("after a rotation: secret %q, want second", got)
		}
		p.Settings.SupersedeQueued = true
		if _, err := s.UpdateProject(ctx, p); err != nil {
			t.Fatal(err)
		}
		got, _, err := s.ProjectWebhook(ctx, "app")
		if err != nil || !got.Settings.SupersedeQueued {
			t.Fatalf("after a settings change: %+v %v", got.Settings, err)
		}
		if err := s.DeleteProject(ctx, p.ID); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.ProjectWebhook(ctx, "app"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("after the project was deleted: %v, want not found", err)
		}
	})

	t.Run("writes made elsewhere apply within the time to live", func(t *testing.T) {
		s, p := open(t, time.Second)
		if _, err := s.RotateWebhookSecret(ctx, p.ID, "first", 0); err != nil {
			t.Fatal(err)
		}
		secretOf(t, s)
		elsewhere(t, s, "changed")
		advance(999 * time.Millisecond)
		if got := secretOf(t, s); got != "first" {
			t.Fatalf("within the time to live: secret %q, want the cached first", got)
		}
		advance(time.Millisecond)
		if got := secretOf(t, s); got != "changed" {
			t.Fatalf("after the time to live: secret %q, want changed", got)
		}
	})

	t.Run("negative time to live: no cache", func(t *testing.T) {
		s, p := open(t, -1)
		if _, err := s.RotateWebhookSecret(ctx, p.ID, "first", 0); err != nil {
			t.Fatal(err)
		}
		secretOf(t, s)
		elsewhere(t, s, "changed")
		if got := secretOf(t, s); got != "changed" {
			t.Fatalf("secret %q, want changed", got)
		}
	})
}

// TestWebhookCacheDropsLookupsRacingAWrite: a lookup that read the
// database before a write and stores its answer after it must not keep
// the old answer.
func TestWebhookCacheDropsLookupsRacingAWrite(t *testing.T) {
	c := webhookCache{ttl: time.Minute}
	now := time.Now()
	_, gen, ok := c.get("app", now)
	if ok {
		t.Fatal("an empty cache answered")
	}
	c.clear() // the write commits while the lookup's query runs
	c.put("app", gen, webhookEntry{secret: WebhookSecret{Secret: "old"}, at: now})
	if e, _, ok := c.get("app", now); ok {
		t.Fatalf("the racing lookup was kept: %+v", e.secret)
	}
	_, gen, _ = c.get("app", now)
	c.put("app", gen, webhookEntry{secret: WebhookSecret{Secret: "new"}, at: now})
	if e, _, ok := c.get("app", now); !ok || e.secret.Secret != "new" {
		t.Fatalf("a lookup after the write: %+v %v", e.secret, ok)
	}
}
