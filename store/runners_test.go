package store

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

func TestRunnerTokens(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		plain, r, err := s.CreateRunner(ctx, "r1", []string{"Linux", "go", "linux"})
		if err != nil {
			t.Fatal(err)
		}
		if got := joinLabels(r.Labels); got != "go,linux" {
			t.Fatalf("labels = %q, want go,linux", got)
		}
		if _, _, err := s.CreateRunner(ctx, "r1", nil); !errors.Is(err, ErrConflict) {
			t.Fatalf("duplicate name: err = %v, want ErrConflict", err)
		}
		if _, _, err := s.CreateRunner(ctx, "bad", []string{"a,b"}); err == nil {
			t.Fatal("label with a comma accepted")
		}
		var n int
		if err := s.db.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM runners WHERE hash = ?`), plain).Scan(&n); err != nil || n != 0 {
			t.Fatalf("plain token stored: n=%d err=%v", n, err)
		}
		got, err := s.RunnerByToken(ctx, plain)
		if err != nil || got.ID != r.ID || got.LastSeenAt == nil {
			t.Fatalf("RunnerByToken = %+v, %v", got, err)
		}
		if _, err := s.RunnerByToken(ctx, plain+"x"); !errors.Is(err, ErrBadRunnerToken) {
			t.Fatalf("wrong token: err = %v", err)
		}
		if _, err := s.RevokeRunner(ctx, "r1"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.RunnerByToken(ctx, plain); !errors.Is(err, ErrRunnerRevoked) {
			t.Fatalf("revoked token: err = %v, want ErrRunnerRevoked", err)
		}
		if _, err := s.RevokeRunner(ctx, "nope"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("revoke unknown: err = %v", err)
		}
		list, err := s.Runners(ctx)
		if err != nil || len(list) != 1 || list[0].RevokedAt == nil {
			t.Fatalf("Runners = %+v, %v", list, err)
		}
	})
}

func TestRunnerLeases(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		_, plain := mkProject(t, s, "plain")
		_, gpu := mkProject(t, s, "gpu")
		if err := s.SetProjectLabels(ctx, gpu.ID, []string{"gpu"}); err != nil {
			t.Fatal(err)
		}
		_, r, err := s.CreateRunner(ctx, "r", []string{"linux"})
		if err != nil {
			t.Fatal(err)
		}
		gb, err := s.CreateBuild(ctx, NewBuild{ProjectID: gpu.ID, Ref: "refs/heads/main", Branch: "main", SHA: "abc"})
		if err != nil {
			t.Fatal(err)
		}
		pb, err := s.CreateBuild(ctx, NewBuild{ProjectID: plain.ID, Ref: "refs/heads/main", Branch: "main", SHA: "abc"})
		if err != nil {
			t.Fatal(err)
		}
		w, err := s.WaitingForLabels(ctx)
		if err != nil || w["gpu"] != 1 {
			t.Fatalf("WaitingForLabels = %v, %v", w, err)
		}
		// The runner lacks "gpu": it gets the later, label-free build.
		b, lease, err := s.ClaimForRunner(ctx, r.ID, []string{"linux"}, 80*time.Millisecond)
		if err != nil || b.ID != pb.ID || b.State != builds.Started {
			t.Fatalf("claim = %+v, %v; want build %d", b, err, pb.ID)
		}
		if _, _, err := s.ClaimForRunner(ctx, r.ID, []string{"linux"}, time.Second); !errors.Is(err, ErrNotFound) {
			t.Fatalf("second claim: err = %v, want ErrNotFound", err)
		}
		// The embedded queue never takes a build that needs labels.
		if _, err := s.ClaimQueued(ctx); !errors.Is(err, ErrNotFound) {
			t.Fatalf("ClaimQueued took a labelled build: err = %v", err)
		}
		if l, name, err := s.LeaseOf(ctx, b.ID); err != nil || name != "r" || l.Token != "" || l.RunnerID != r.ID {
			t.Fatalf("LeaseOf = %+v %q, %v", l, name, err)
		}
		if _, _, err := s.LeaseOf(ctx, gb.ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("LeaseOf unleased build: err = %v", err)
		}
		if cancel, err := s.RenewLease(ctx, b.ID, lease.Token, 80*time.Millisecond); err != nil || cancel {
			t.Fatalf("renew = %v, %v", cancel, err)
		}
		if _, err := s.RenewLease(ctx, b.ID, "forged", time.Second); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("forged renew: err = %v", err)
		}
		if _, err := s.RequestCancel(ctx, b.ID, "stop"); err != nil {
			t.Fatal(err)
		}
		if cancel, err := s.RenewLease(ctx, b.ID, lease.Token, 80*time.Millisecond); err != nil || !cancel {
			t.Fatalf("renew after cancel = %v, %v", cancel, err)
		}
		time.Sleep(120 * time.Millisecond)
		// Late: the lease expired, the runner cannot renew or finish.
		if _, err := s.RenewLease(ctx, b.ID, lease.Token, time.Second); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("late renew: err = %v", err)
		}
		exp, err := s.ExpiredLeases(ctx, 10)
		if err != nil || len(exp) != 1 || exp[0].BuildID != b.ID {
			t.Fatalf("ExpiredLeases = %+v, %v", exp, err)
		}
		rb, err := s.ReclaimLease(ctx, exp[0], true, "runner r stopped heartbeating")
		if err != nil || rb.State != builds.Queued {
			t.Fatalf("reclaim = %+v, %v", rb, err)
		}
		if _, err := s.ReclaimLease(ctx, exp[0], true, "again"); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("second reclaim: err = %v", err)
		}
		if _, err := s.FinishLeased(ctx, b.ID, lease.Token, builds.Passed, "", nil); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("late finish: err = %v, want ErrLeaseLost", err)
		}
		// Claimed again, by a runner with both labels this time the gpu
		// build comes first.
		b2, lease2, err := s.ClaimForRunner(ctx, r.ID, []string{"gpu", "linux"}, time.Second)
		if err != nil || b2.ID != gb.ID {
			t.Fatalf("claim gpu = %+v, %v", b2, err)
		}
		fb, err := s.FinishLeased(ctx, b2.ID, lease2.Token, builds.Passed, "", []Artifact{{Path: "out.txt", Size: 3, SHA256: "x"}})
		if err != nil || fb.State != builds.Finished || fb.Result != builds.Passed {
			t.Fatalf("finish = %+v, %v", fb, err)
		}
		if a, err := s.Artifacts(ctx, b2.ID); err != nil || len(a) != 1 {
			t.Fatalf("artifacts = %+v, %v", a, err)
		}
		// Errored per setting.
		b3, lease3, err := s.ClaimForRunner(ctx, r.ID, nil, 10*time.Millisecond)
		if err != nil || b3.ID != pb.ID {
			t.Fatalf("reclaim of requeued build = %+v, %v", b3, err)
		}
		time.Sleep(30 * time.Millisecond)
		eb, err := s.ReclaimLease(ctx, lease3, false, "runner lost")
		if err != nil || eb.Result != builds.Errored || eb.Reason != "runner lost" {
			t.Fatalf("errored reclaim = %+v, %v", eb, err)
		}
		// Revoking a runner ends its leases.
		b4, err := s.CreateBuild(ctx, NewBuild{ProjectID: plain.ID, Ref: "refs/heads/main", Branch: "main", SHA: "abc"})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.ClaimForRunner(ctx, r.ID, nil, time.Hour); err != nil {
			t.Fatal(err)
		}
		if _, err := s.RevokeRunner(ctx, "r"); err != nil {
			t.Fatal(err)
		}
		if exp, err := s.ExpiredLeases(ctx, 10); err != nil || len(exp) != 1 || exp[0].BuildID != b4.ID {
			t.Fatalf("leases after revoke = %+v, %v", exp, err)
		}
	})
}

// TestClaimForRunnerConcurrent has several runners claim at once: every
// build is claimed exactly once.
func TestClaimForRunnerConcurrent(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		_, p := mkProject(t, s, "many")
		const n = 40
		for range n {
			if _, err := s.CreateBuild(ctx, NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: "abc"}); err != nil {
				t.Fatal(err)
			}
		}
		var runners []Runner
		for i := range 4 {
			_, r, err := s.CreateRunner(ctx, "r"+string(rune('a'+i)), nil)
			if err != nil {
				t.Fatal(err)
			}
			runners = append(runners, r)
		}
		var mu sync.Mutex
		got := map[int64]int{}
		var wg sync.WaitGroup
		for _, r := range runners {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					b, l, err := s.ClaimForRunner(ctx, r.ID, nil, time.Minute)
					if errors.Is(err, ErrNotFound) {
						return
					}
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					got[b.ID]++
					mu.Unlock()
					if _, err := s.FinishLeased(ctx, b.ID, l.Token, builds.Passed, "", nil); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		if len(got) != n {
			t.Fatalf("%d builds claimed, want %d", len(got), n)
		}
		for id, c := range got {
			if c != 1 {
				t.Fatalf("build %d claimed %d times", id, c)
			}
		}
	})
}

// TestIdleClaimIsOneRead checks that a claim with nothing to claim (an
// idle runner or embedded worker, polling every second) costs one read:
// one statement, and none that locks, so it answers at once while
// another session holds a write lock on the builds (SQLite: the database
// write lock; PostgreSQL: an EXCLUSIVE lock on builds, which lets plain
// reads through but not a claim's SELECT … FOR UPDATE). It holds while
// builds that need labels the claimer lacks are queued.
func TestIdleClaimIsOneRead(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		_, gpu := mkProject(t, s, "gpu")
		if err := s.SetProjectLabels(ctx, gpu.ID, []string{"gpu"}); err != nil {
			t.Fatal(err)
		}
		_, r, err := s.CreateRunner(ctx, "r", nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.RenewNode(ctx, "node-a", time.Minute); err != nil {
			t.Fatal(err)
		}
		idle := func(what string) {
			t.Helper()
			conn, err := s.db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			lock := []string{`BEGIN IMMEDIATE`}
			if s.postgres {
				lock = []string{`BEGIN`, `LOCK TABLE builds IN EXCLUSIVE MODE`}
			}
			for _, q := range lock {
				if _, err := conn.ExecContext(ctx, q); err != nil {
					t.Fatal(err)
				}
			}
			defer conn.ExecContext(ctx, `ROLLBACK`)
			for name, claim := range map[string]func(context.Context) error{
				"ClaimForRunner": func(ctx context.Context) error {
					_, _, err := s.ClaimForRunner(ctx, r.ID, nil, time.Minute)
					return err
				},
				"ClaimQueuedOn": func(ctx context.Context) error { _, err := s.ClaimQueuedOn(ctx, "node-a"); return err },
			} {
				before := s.Queries()
				cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				err := claim(cctx)
				cancel()
				if !errors.Is(err, ErrNotFound) {
					t.Fatalf("%s, %s, builds write-locked: err = %v, want ErrNotFound at once", name, what, err)
				}
				if n := s.Queries() - before; n != 1 {
					t.Errorf("%s, %s: %d statements, want 1", name, what, n)
				}
			}
		}
		idle("nothing queued")
		gb, err := s.CreateBuild(ctx, NewBuild{ProjectID: gpu.ID, Ref: "refs/heads/main", Branch: "main", SHA: "abc"})
		if err != nil {
			t.Fatal(err)
		}
		idle("a build for gpu runners queued")
		// A runner with the label still finds it.
		b, _, err := s.ClaimForRunner(ctx, r.ID, []string{"gpu"}, time.Minute)
		if err != nil || b.ID != gb.ID {
			t.Fatalf("gpu runner's claim = %+v, %v", b, err)
		}
		_, _, err = s.ClaimForRunner(ctx, r.ID, []string{"gpu"}, time.Minute)
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("second gpu claim: err = %v, want ErrNotFound", err)
		}
	})
}
