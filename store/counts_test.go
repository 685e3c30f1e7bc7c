package store

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

// TestCountBuildsFollowsWrites checks the counts the triggers keep against
// a count of the builds after every kind of write: a build queued,
// claimed, finished, canceled, re-queued, updated without a change of
// state, a bulk insert and update, a project deleted with its builds,
// and (PostgreSQL) the deltas folded.
func TestCountBuildsFollowsWrites(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		check := func(what string) {
			t.Helper()
			got, err := s.CountBuilds(ctx)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			want := map[[2]string]int{}
			rows, err := s.db.QueryContext(ctx, `SELECT state, result, COUNT(*) FROM builds GROUP BY state, result`)
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var st, res string
				var n int
				if err := rows.Scan(&st, &res, &n); err != nil {
					t.Fatal(err)
				}
				want[[2]string{st, res}] = n
			}
			rows.Close()
			if !maps.Equal(got, want) {
				t.Fatalf("%s: CountBuilds = %v, builds hold %v", what, got, want)
			}
		}
		check("empty")
		_, p := mkProject(t, s, "counted")
		_, gone := mkProject(t, s, "gone")
		nb := func(pid int64) NewBuild {
			return NewBuild{ProjectID: pid, Ref: "refs/heads/main", Branch: "main", SHA: "abc"}
		}
		for range 3 {
			if _, err := s.CreateBuild(ctx, nb(p.ID)); err != nil {
				t.Fatal(err)
			}
		}
		g, err := s.CreateBuild(ctx, nb(gone.ID))
		if err != nil {
			t.Fatal(err)
		}
		check("queued")
		b, err := s.ClaimQueued(ctx)
		if err != nil {
			t.Fatal(err)
		}
		check("claimed")
		if _, err := s.Transition(ctx, b.ID, builds.Finished, func(b *builds.Build) error { b.Result = builds.Failed; return nil }); err != nil {
			t.Fatal(err)
		}
		if _, err := s.RequestCancel(ctx, g.ID, "test"); err != nil {
			t.Fatal(err)
		}
		check("finished and canceled")
		b, err = s.ClaimQueued(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.AppendLog(ctx, b.ID, []byte("a log line\n")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.RequestCancel(ctx, b.ID, "test"); err != nil {
			t.Fatal(err)
		}
		check("log and cancel request (no change of state)")
		if _, err := s.Transition(ctx, b.ID, builds.Queued, nil); err != nil {
			t.Fatal(err)
		}
		check("re-queued")
		// Writes that bypass the store's methods count too.
		if _, err := s.db.ExecContext(ctx, s.q(`INSERT INTO builds (project_id, number, state, result, ref, sha, created_at)
			SELECT ?, 100 + n, CASE WHEN n % 3 = 0 THEN 'QUEUED' ELSE 'FINISHED' END, CASE WHEN n % 3 = 0 THEN '' ELSE 'passed' END, 'r', 's', 0
			FROM (SELECT 1 AS n UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6) x`), p.ID); err != nil {
			t.Fatal(err)
		}
		check("bulk insert")
		if _, err := s.db.ExecContext(ctx, s.q(`UPDATE builds SET state = 'FINISHED', result = 'errored' WHERE state = ?`), builds.Queued); err != nil {
			t.Fatal(err)
		}
		check("bulk update")
		if err := s.DeleteProject(ctx, gone.ID); err != nil {
			t.Fatal(err)
		}
		check("project deleted with its builds")
		if _, err := s.db.ExecContext(ctx, `DELETE FROM builds WHERE result = 'errored'`); err != nil {
			t.Fatal(err)
		}
		check("builds deleted")
		if s.postgres {
			var before, after int
			s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM build_counts`).Scan(&before)
			if _, err := s.db.ExecContext(ctx, `SELECT build_counts_fold()`); err != nil {
				t.Fatal(err)
			}
			s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM build_counts`).Scan(&after)
			if after >= before {
				t.Fatalf("fold left %d delta rows of %d", after, before)
			}
			check("folded")
		}
	})
}

// TestBuildCountsFoldWhileWriting folds the deltas (PostgreSQL) while
// builds are created and moved concurrently: no delta is lost or counted
// twice, and no writer waits for a fold.
func TestBuildCountsFoldWhileWriting(t *testing.T) {
	s := OpenTestPostgres(t)
	ctx := context.Background()
	_, p := mkProject(t, s, "busy")
	done := make(chan error, 4)
	for w := range 4 {
		go func() {
			for i := range 25 {
				b, err := s.CreateBuild(ctx, NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: "abc"})
				if err != nil {
					done <- err
					return
				}
				if (w+i)%2 == 0 {
					if _, err := s.RequestCancel(ctx, b.ID, "test"); err != nil {
						done <- err
						return
					}
				}
				if _, err := s.db.ExecContext(ctx, `SELECT build_counts_fold()`); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	deadline := time.After(time.Minute)
	for range 4 {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-deadline:
			t.Fatal("writers and folds did not finish in a minute")
		}
	}
	got, err := s.CountBuilds(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[[2]string]int{{"QUEUED", ""}: 50, {"FINISHED", "canceled"}: 50}
	if !maps.Equal(got, want) {
		t.Fatalf("CountBuilds = %v, want %v", got, want)
	}
}
