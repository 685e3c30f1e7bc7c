package store

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// TestBackgroundCheckpoint checks where committed rows live after the
// checkpoint delay: with the background checkpointer they have reached
// the main database file (read with immutable=1, which ignores the WAL);
// with SQLite's own checkpoints (a few pages, far below its threshold)
// they are still only in the WAL.
func TestBackgroundCheckpoint(t *testing.T) {
	for _, tc := range []struct {
		name   string
		delay  time.Duration
		inMain bool
	}{
		{"background", 20 * time.Millisecond, true},
		{"sqlite's own", -1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			s, err := Open(ctx, Config{DataDir: dir, CheckpointDelay: tc.delay})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for i := range 5 {
				if _, err := s.CreateUser(ctx, fmt.Sprintf("user%d", i), false); err != nil {
					t.Fatal(err)
				}
			}
			mainFile := func() int {
				ro, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "buildbridge.db")+"?mode=ro&immutable=1")
				if err != nil {
					t.Fatal(err)
				}
				defer ro.Close()
				var n int
				if err := ro.QueryRow(`SELECT count(*) FROM users WHERE name LIKE 'user%'`).Scan(&n); err != nil {
					return -1 // the table itself is not in the main file yet
				}
				return n
			}
			deadline := time.Now().Add(5 * time.Second)
			n := mainFile()
			for tc.inMain && n != 5 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
				n = mainFile()
			}
			if !tc.inMain {
				time.Sleep(200 * time.Millisecond)
				n = mainFile()
			}
			if got := n == 5; got != tc.inMain {
				t.Fatalf("users in the main database file: %d, want all 5 there: %v", n, tc.inMain)
			}
		})
	}
}

// TestCheckpointerIdle checks that an idle store runs no checkpoint, and
// that the checkpoint after a commit is not counted in Queries.
func TestCheckpointerIdle(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, Config{DataDir: t.TempDir(), CheckpointDelay: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.CreateUser(ctx, "one", false); err != nil {
		t.Fatal(err)
	}
	before := s.Queries()
	deadline := time.Now().Add(5 * time.Second)
	for s.checkpoints.runs.Load() == 0 { // the one checkpoint after that commit
		if time.Now().After(deadline) {
			t.Fatal("no checkpoint after a commit")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	if n := s.checkpoints.runs.Load(); n != 1 {
		t.Fatalf("%d checkpoints, want the one after the commit", n)
	}
	if d := s.Queries() - before; d != 0 {
		t.Fatalf("the checkpoint and an idle store: %d statements counted, want 0", d)
	}
}
