package store

import (
	"context"
	"testing"

	"github.com/buildbridge/buildbridge/builds"
)

// TestMigration15KeepsSequences takes a store down to the schema before
// migration 15 and up again: the tables it rebuilds keep their rows, a
// delivery id recorded before is still a duplicate after, and event
// sequence numbers and outbox ids go on from where they were, not from
// the largest left in the table (an event's seq is public; it must never
// be handed out twice).
func TestMigration15KeepsSequences(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		_, p := mkProject(t, s, "app")
		var (
			last builds.Build
			err  error
		)
		for range 3 {
			if last, err = s.CreateBuild(ctx, NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: "abc"}); err != nil {
				t.Fatal(err)
			}
		}
		d := Delivery{ProjectID: p.ID, Source: "github", ID: "0b7a9c2e-delivery"}
		push := []PushBuild{{NewBuild: NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: "def"}}}
		if out, err := s.IngestPush(ctx, d, push, false); err != nil || out.Duplicate {
			t.Fatalf("first push: %+v %v", out, err)
		}
		// The newest event and every outbox row gone: the largest values
		// left are below the counters.
		if _, err := s.db.ExecContext(ctx, s.q(`DELETE FROM build_events WHERE seq = (SELECT MAX(seq) FROM build_events)`)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.db.ExecContext(ctx, `DELETE FROM outbox`); err != nil {
			t.Fatal(err)
		}

		m, err := s.migrations()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.DownTo(ctx, 14); err != nil {
			t.Fatalf("down to 14: %v", err)
		}
		if _, err := m.Up(ctx); err != nil {
			t.Fatalf("up again: %v", err)
		}

		if out, err := s.IngestPush(ctx, d, push, false); err != nil || !out.Duplicate {
			t.Fatalf("the same delivery after the migrations: %+v %v, want a duplicate", out, err)
		}
		evs, err := s.BuildEvents(ctx, last.ID)
		if err != nil || len(evs) != 1 {
			t.Fatalf("events of build %d: %v %v", last.ID, evs, err)
		}
		b, err := s.CreateBuild(ctx, NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: "fed"})
		if err != nil {
			t.Fatal(err)
		}
		evs, err = s.BuildEvents(ctx, b.ID)
		if err != nil || len(evs) != 1 {
			t.Fatalf("events of the new build: %v %v", evs, err)
		}
		if evs[0].Seq != 5 {
			t.Errorf("the first event after the migrations has seq %d, want 5 (4 were handed out before)", evs[0].Seq)
		}
		rows, err := s.PendingOutbox(ctx, 10)
		if err != nil || len(rows) != 1 {
			t.Fatalf("outbox: %v %v", rows, err)
		}
		if rows[0].ID != 5 {
			t.Errorf("the first outbox row after the migrations has id %d, want 5", rows[0].ID)
		}
	})
}
