package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestSinkSecrets(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		if _, err := s.SinkSecret(ctx, "deploy"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("missing secret: %v", err)
		}
		if _, _, err := s.CreateSinkSecret(ctx, "deploy", ""); err == nil {
			t.Fatal("an empty secret was stored")
		}

		// Nodes loading the same rules race to create it: one wins, all
		// get the winner's secret.
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			created int
			got     = map[string]bool{}
		)
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				w, c, err := s.CreateSinkSecret(ctx, "deploy", fmt.Sprintf("whsec_candidate%d", i))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if c {
					created++
				}
				got[w.Secret] = true
			}()
		}
		wg.Wait()
		if created != 1 || len(got) != 1 {
			t.Fatalf("%d creations, secrets %v", created, got)
		}
		w, err := s.SinkSecret(ctx, "deploy")
		if err != nil || !got[w.Secret] || w.Sink != "deploy" || w.CreatedAt.IsZero() || !w.ShownAt.IsZero() || w.Previous != "" {
			t.Fatalf("stored: %+v %v", w, err)
		}
		first := w.Secret
		if again, c, err := s.CreateSinkSecret(ctx, "deploy", "whsec_other"); err != nil || c || again.Secret != first {
			t.Fatalf("create over an existing secret: %+v %v %v", again, c, err)
		}
		if _, err := s.SinkSecret(ctx, "other"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("another sink: %v", err)
		}

		// Shown once: the generated secret itself, not replaced.
		shown, replaced, err := s.ShowSinkSecret(ctx, "deploy", "whsec_second", time.Hour)
		if err != nil || replaced || shown.Secret != first || shown.ShownAt.IsZero() || shown.Previous != "" {
			t.Fatalf("first show: %+v %v %v", shown, replaced, err)
		}
		// Then every show rotates, the shown secret signing for the grace.
		rot, replaced, err := s.ShowSinkSecret(ctx, "deploy", "whsec_second", time.Hour)
		if err != nil || !replaced || rot.Secret != "whsec_second" || rot.Previous != first {
			t.Fatalf("rotation: %+v %v %v", rot, replaced, err)
		}
		w, err = s.SinkSecret(ctx, "deploy")
		if err != nil || w.Secret != "whsec_second" || w.Previous != first || !w.PreviousExpiresAt.Equal(rot.PreviousExpiresAt) ||
			w.ShownAt.IsZero() || !w.CreatedAt.Equal(rot.CreatedAt) {
			t.Fatalf("after rotation: %+v %v (rotation said %+v)", w, err, rot)
		}
		if v := w.Valid(w.CreatedAt.Add(time.Minute)); len(v) != 2 || v[0] != "whsec_second" || v[1] != first {
			t.Fatalf("valid during the grace: %v", v)
		}
		if v := w.Valid(w.PreviousExpiresAt); len(v) != 1 || v[0] != "whsec_second" {
			t.Fatalf("valid after the grace: %v", v)
		}
		// A rotation without grace drops the previous secret at once, and
		// one during a grace drops the older secret.
		if w, _, err = s.ShowSinkSecret(ctx, "deploy", "whsec_third", time.Hour); err != nil || w.Previous != "whsec_second" {
			t.Fatalf("rotation during a grace: %+v %v", w, err)
		}
		if w, _, err = s.ShowSinkSecret(ctx, "deploy", "whsec_fourth", 0); err != nil || w.Previous != "" {
			t.Fatalf("rotation without grace: %+v %v", w, err)
		}
		if w, err = s.SinkSecret(ctx, "deploy"); err != nil || w.Secret != "whsec_fourth" || w.Previous != "" || len(w.Valid(time.Now())) != 1 {
			t.Fatalf("stored after a rotation without grace: %+v %v", w, err)
		}
		if _, _, err := s.ShowSinkSecret(ctx, "deploy", "whsec_x", -time.Second); err == nil {
			t.Fatal("negative grace accepted")
		}
		// A sink never loaded gets the new secret, shown.
		if w, replaced, err = s.ShowSinkSecret(ctx, "fresh", "whsec_fresh", time.Hour); err != nil || replaced || w.Secret != "whsec_fresh" || w.ShownAt.IsZero() {
			t.Fatalf("show of a sink without a secret: %+v %v %v", w, replaced, err)
		}
		if w, c, err := s.CreateSinkSecret(ctx, "fresh", "whsec_late"); err != nil || c || w.Secret != "whsec_fresh" || w.ShownAt.IsZero() {
			t.Fatalf("create after show: %+v %v %v", w, c, err)
		}
	})
}

// TestSinkSecretSurvivesReopen: a generated secret is the same after a
// restart.
func TestSinkSecretSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(ctx, Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	w, created, err := s.CreateSinkSecret(ctx, "deploy", "whsec_kept")
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	s.Close()
	s, err = Open(ctx, Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	again, created, err := s.CreateSinkSecret(ctx, "deploy", "whsec_new")
	if err != nil || created || again.Secret != w.Secret || !again.CreatedAt.Equal(w.CreatedAt) {
		t.Fatalf("after reopen: %+v %v %v", again, created, err)
	}
}
