package store

import (
	"context"
	"sync"
	"testing"
	"time"
)

func TestUsage(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		row := func(day string, user, token int64, route string, req, errs, lat, max int64) UsageRow {
			return UsageRow{Day: day, UserID: user, TokenID: token, Route: route, Requests: req, Errors: errs, LatencyUS: lat, MaxLatencyUS: max}
		}
		// Two flushes of the same keys add up; the maximum is kept.
		if err := s.AddUsage(ctx, []UsageRow{
			row("2030-01-01", 1, 10, "GET /api/v1/user", 3, 1, 300, 200),
			row("2030-01-01", 1, 11, "GET /api/v1/user", 2, 0, 100, 60),
			row("2030-01-02", 1, 10, "GET /api/v1/projects", 5, 0, 500, 120),
			row("2030-01-02", 2, 20, "GET /api/v1/user", 7, 7, 700, 100),
		}); err != nil {
			t.Fatal(err)
		}
		if err := s.AddUsage(ctx, []UsageRow{
			row("2030-01-01", 1, 10, "GET /api/v1/user", 4, 2, 400, 900),
			row("2030-01-01", 1, 10, "GET /api/v1/user", 1, 0, 10, 10), // same key twice in one batch
		}); err != nil {
			t.Fatal(err)
		}
		got, err := s.Usage(ctx, UsageQuery{UserID: 1, From: "2030-01-01", To: "2030-01-02", ByToken: true})
		if err != nil {
			t.Fatal(err)
		}
		want := []UsageRow{
			row("2030-01-01", 1, 10, "GET /api/v1/user", 8, 3, 710, 900),
			row("2030-01-01", 1, 11, "GET /api/v1/user", 2, 0, 100, 60),
			row("2030-01-02", 1, 10, "GET /api/v1/projects", 5, 0, 500, 120),
		}
		if len(got) != len(want) {
			t.Fatalf("by token: %+v", got)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("row %d: %+v, want %+v", i, got[i], want[i])
			}
		}
		// Summed over tokens, every user, one day.
		got, err = s.Usage(ctx, UsageQuery{From: "2030-01-01", To: "2030-01-01"})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0] != row("2030-01-01", 1, 0, "GET /api/v1/user", 10, 3, 810, 900) {
			t.Fatalf("summed: %+v", got)
		}
		got, _ = s.Usage(ctx, UsageQuery{From: "2030-01-02", To: "2030-12-31"})
		if len(got) != 2 || got[0].UserID != 1 || got[1].UserID != 2 || got[1].Errors != 7 {
			t.Fatalf("all users: %+v", got)
		}
		if got, _ := s.Usage(ctx, UsageQuery{From: "2031-01-01", To: "2031-01-02"}); len(got) != 0 {
			t.Fatalf("empty range: %+v", got)
		}

		// Bad input is refused, and a refused batch adds nothing.
		for _, q := range []UsageQuery{{From: "2030-1-1", To: "2030-01-02"}, {From: "2030-01-01", To: "x"}, {From: "2030-02-30", To: "2030-03-01"}} {
			if _, err := s.Usage(ctx, q); err == nil {
				t.Errorf("query %+v accepted", q)
			}
		}
		if err := s.AddUsage(ctx, []UsageRow{row("2030-01-01", 1, 10, "GET /api/v1/user", 1, 0, 1, 1), row("bad", 1, 10, "x", 1, 0, 1, 1)}); err == nil {
			t.Error("a bad day was accepted")
		}
		if err := s.AddUsage(ctx, []UsageRow{row("2030-01-01", 1, 10, "", 1, 0, 1, 1)}); err == nil {
			t.Error("an empty route was accepted")
		}
		got, _ = s.Usage(ctx, UsageQuery{UserID: 1, From: "2030-01-01", To: "2030-01-01"})
		if got[0].Requests != 10 {
			t.Fatalf("a refused batch changed the counts: %+v", got)
		}
		if err := s.AddUsage(ctx, nil); err != nil {
			t.Fatal(err)
		}
	})
}

// TestUsageConcurrentFlushes adds the same keys from several writers at
// once (several serve nodes flushing); nothing is lost.
func TestUsageConcurrentFlushes(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 10 {
					err := s.AddUsage(ctx, []UsageRow{
						{Day: "2030-05-05", UserID: 1, TokenID: 1, Route: "GET /a", Requests: 1, LatencyUS: int64(w*10 + i)},
						{Day: "2030-05-05", UserID: 1, TokenID: 2, Route: "GET /b", Requests: 2, Errors: 1, LatencyUS: 1},
					})
					if err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		got, err := s.Usage(ctx, UsageQuery{From: "2030-05-05", To: "2030-05-05", ByToken: true})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0].Requests != 80 || got[0].MaxLatencyUS != 0 || got[0].LatencyUS != 80*79/2 ||
			got[1].Requests != 160 || got[1].Errors != 80 {
			t.Fatalf("%+v", got)
		}
	})
}

func TestUsageDay(t *testing.T) {
	loc := time.FixedZone("x", -5*3600)
	if d := UsageDay(time.Date(2030, 1, 1, 22, 0, 0, 0, loc)); d != "2030-01-02" {
		t.Fatalf("UsageDay: %s", d)
	}
}
