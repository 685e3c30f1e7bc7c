package store

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/buildbridge/buildbridge/builds"
)

// TestGroupCommit queues builds from many goroutines while others try
// transitions the state machine refuses: every build is committed once
// with its own number and transition, and the refused work leaves nothing.
func TestGroupCommit(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		_, p := mkProject(t, s, "app")
		done, _ := s.CreateBuild(ctx, NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: "a"})
		if _, err := s.RequestCancel(ctx, done.ID, "x"); err != nil {
			t.Fatal(err)
		}
		const n = 40
		var wg sync.WaitGroup
		errs := make(chan error, 2*n)
		for i := 0; i < n; i++ {
			wg.Add(2)
			go func() {
				defer wg.Done()
				_, err := s.CreateBuild(ctx, NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: "b"})
				errs <- err
			}()
			go func() {
				defer wg.Done()
				// FINISHED → STARTED is refused; it must not undo a neighbour.
				_, err := s.Transition(ctx, done.ID, builds.Started, nil)
				if !errors.Is(err, builds.ErrTransition) {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		list, _ := s.ListBuilds(ctx, BuildFilter{ProjectID: p.ID, State: builds.Queued, Limit: 500})
		if len(list) != n {
			t.Fatalf("%d queued builds, want %d", len(list), n)
		}
		seen := map[int64]bool{}
		for _, b := range list {
			if seen[b.Number] || b.Number < 2 || b.Number > n+1 {
				t.Fatalf("build number %d repeated or out of range", b.Number)
			}
			seen[b.Number] = true
			if evs, _ := s.BuildEvents(ctx, b.ID); len(evs) != 1 {
				t.Fatalf("build %d has %d transitions", b.ID, len(evs))
			}
		}
		if rows, _ := s.PendingOutbox(ctx, 1000); len(rows) != n+2 {
			t.Fatalf("%d outbox rows, want %d", len(rows), n+2)
		}
	})
}
