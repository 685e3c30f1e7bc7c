package store

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestSlackMessages(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		if _, err := s.SlackMessage(ctx, "team", "#builds", 7); !errors.Is(err, ErrNotFound) {
			t.Fatalf("missing message: %v", err)
		}
		m := SlackMessage{Sink: "team", Target: "#builds", BuildID: 7, Channel: "C1", TS: "1700000000.000100", Seq: 3}
		if err := s.SaveSlackMessage(ctx, m); err != nil {
			t.Fatal(err)
		}
		m.Seq, m.ReplyTS = 5, "1700000001.000200"
		if err := s.SaveSlackMessage(ctx, m); err != nil {
			t.Fatal(err)
		}
		got, err := s.SlackMessage(ctx, "team", "#builds", 7)
		if err != nil {
			t.Fatal(err)
		}
		if got.Channel != "C1" || got.TS != m.TS || got.Seq != 5 || got.ReplyTS != m.ReplyTS || got.UpdatedAt.IsZero() {
			t.Fatalf("got %+v", got)
		}
		// Another target or sink is another message.
		if _, err := s.SlackMessage(ctx, "team", "#ops", 7); !errors.Is(err, ErrNotFound) {
			t.Fatalf("other target: %v", err)
		}
		if err := s.SaveSlackMessage(ctx, SlackMessage{Sink: "team"}); err == nil {
			t.Fatal("an incomplete message was saved")
		}
		n, err := s.PruneSlackMessages(ctx, time.Now().Add(time.Hour))
		if err != nil || n != 1 {
			t.Fatalf("prune: %d %v", n, err)
		}
		if _, err := s.SlackMessage(ctx, "team", "#builds", 7); !errors.Is(err, ErrNotFound) {
			t.Fatalf("after prune: %v", err)
		}
	})
}

func TestMailHolds(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		t0 := time.Now().UTC().Truncate(time.Millisecond)
		hold := func(group, ev string, release time.Time) MailHold {
			t.Helper()
			h, created, err := s.HoldMail(ctx, MailHold{Sink: "mail", Group: group, EventID: ev, ReleaseAt: release, Payload: []byte(`{"e":"` + ev + `"}`)})
			if err != nil || !created {
				t.Fatalf("hold %s: %v %v", ev, created, err)
			}
			return h
		}
		if _, ok, err := s.NextMailRelease(ctx, "mail"); ok || err != nil {
			t.Fatalf("next release of nothing: %v %v", ok, err)
		}
		// The first hold of a group opens its batch; the next join it.
		a := hold("team@x", "e1", t0.Add(-time.Second))
		b := hold("team@x", "e2", t0.Add(time.Hour))
		if !b.ReleaseAt.Equal(a.ReleaseAt) {
			t.Fatalf("second hold releases at %s, batch at %s", b.ReleaseAt, a.ReleaseAt)
		}
		later := hold("ann@x", "e3", t0.Add(time.Hour))
		// The same event again is stored once.
		if _, created, err := s.HoldMail(ctx, MailHold{Sink: "mail", Group: "team@x", EventID: "e1", ReleaseAt: t0, Payload: []byte("{}")}); created || err != nil {
			t.Fatalf("repeat: %v %v", created, err)
		}
		if next, ok, _ := s.NextMailRelease(ctx, "mail"); !ok || !next.Equal(a.ReleaseAt) {
			t.Fatalf("next release %s, want %s", next, a.ReleaseAt)
		}

		got, err := s.ClaimMailHolds(ctx, "mail", t0, time.Minute, 10)
		if err != nil || len(got) != 2 || got[0].EventID != "e1" || got[1].EventID != "e2" || string(got[0].Payload) != `{"e":"e1"}` {
			t.Fatalf("claim: %+v %v", got, err)
		}
		// Leased: nobody takes them again until the lease ends; a new
		// hold of the group opens a new batch.
		if again, _ := s.ClaimMailHolds(ctx, "mail", t0, time.Minute, 10); len(again) != 0 {
			t.Fatalf("claimed twice: %+v", again)
		}
		c := hold("team@x", "e4", t0.Add(30*time.Minute))
		if !c.ReleaseAt.Equal(t0.Add(30 * time.Minute)) {
			t.Fatalf("hold during a lease joined the leased batch: %s", c.ReleaseAt)
		}
		// A failed send releases them later with a try counted.
		if err := s.ReleaseMailHolds(ctx, []int64{got[0].ID, got[1].ID}, t0.Add(5*time.Minute), true); err != nil {
			t.Fatal(err)
		}
		got, _ = s.ClaimMailHolds(ctx, "mail", t0.Add(5*time.Minute), time.Minute, 10)
		if len(got) != 2 || got[0].Tries != 1 {
			t.Fatalf("after release: %+v", got)
		}
		if err := s.DeleteMailHolds(ctx, []int64{got[0].ID, got[1].ID}); err != nil {
			t.Fatal(err)
		}
		// Later: both groups, ordered by group.
		got, _ = s.ClaimMailHolds(ctx, "mail", t0.Add(2*time.Hour), time.Minute, 10)
		if len(got) != 2 || got[0].ID != later.ID || got[1].ID != c.ID {
			t.Fatalf("later claim: %+v", got)
		}
		// An expired lease makes them claimable again.
		if next, ok, _ := s.NextMailRelease(ctx, "mail"); !ok || !next.Equal(t0.Add(2*time.Hour+time.Minute)) {
			t.Fatalf("next release of leased holds: %s", next)
		}
		got, _ = s.ClaimMailHolds(ctx, "mail", t0.Add(2*time.Hour+2*time.Minute), time.Minute, 10)
		if len(got) != 2 {
			t.Fatalf("after the lease: %+v", got)
		}
		if _, _, err := s.HoldMail(ctx, MailHold{Sink: "mail"}); err == nil {
			t.Fatal("a hold without group was stored")
		}
	})
}

// TestMailHoldsClaimOnce has several flushers claim the same due holds
// at once: each hold is taken by exactly one.
func TestMailHoldsClaimOnce(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		now := time.Now().UTC()
		for i := range 40 {
			if _, _, err := s.HoldMail(ctx, MailHold{Sink: "mail", Group: "g", EventID: string(rune('a' + i)), ReleaseAt: now.Add(-time.Second), Payload: []byte("{}")}); err != nil {
				t.Fatal(err)
			}
		}
		var (
			mu   sync.Mutex
			seen = map[int64]int{}
			wg   sync.WaitGroup
		)
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 10 {
					got, err := s.ClaimMailHolds(ctx, "mail", now, time.Minute, 3)
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					for _, h := range got {
						seen[h.ID]++
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if len(seen) != 40 {
			t.Fatalf("%d holds claimed, want 40", len(seen))
		}
		for id, n := range seen {
			if n != 1 {
				t.Fatalf("hold %d claimed %d times", id, n)
			}
		}
	})
}
