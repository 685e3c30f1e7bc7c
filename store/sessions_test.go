package store

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestSessions(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		u, err := s.CreateUser(ctx, "sam", false)
		if err != nil {
			t.Fatal(err)
		}
		_, tok, err := s.CreateToken(ctx, u.ID, "web")
		if err != nil {
			t.Fatal(err)
		}
		plain, ss, err := s.CreateSession(ctx, u.ID, tok.ID, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if len(plain) != 43 || ss.UserID != u.ID || ss.TokenID != tok.ID || !ss.ExpiresAt.After(ss.CreatedAt) {
			t.Fatalf("session %q %+v", plain, ss)
		}
		var stored int
		s.db.QueryRow(s.q(`SELECT COUNT(*) FROM sessions WHERE hash = ?`), plain).Scan(&stored)
		if stored != 0 {
			t.Fatal("plain session secret stored")
		}
		got, gs, err := s.SessionUser(ctx, plain)
		if err != nil || got.ID != u.ID || got.Name != "sam" || gs.ID != ss.ID {
			t.Fatalf("session user: %+v %+v %v", got, gs, err)
		}
		for _, bad := range []string{"", plain + "x", strings.Repeat("a", 200)} {
			if _, _, err := s.SessionUser(ctx, bad); !errors.Is(err, ErrBadSession) {
				t.Errorf("session %q: %v, want ErrBadSession", bad, err)
			}
		}
		if _, _, err := s.CreateSession(ctx, u.ID, tok.ID, 0); err == nil {
			t.Error("a session without a lifetime was made")
		}

		// Revoking the token ends its sessions at once.
		if err := s.RevokeToken(ctx, u.ID, tok.ID); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.SessionUser(ctx, plain); !errors.Is(err, ErrBadSession) {
			t.Fatalf("session of a revoked token: %v", err)
		}

		// Sign-out deletes; twice is fine.
		_, tok2, _ := s.CreateToken(ctx, u.ID, "web2")
		p2, _, err := s.CreateSession(ctx, u.ID, tok2.ID, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if err := s.DeleteSession(ctx, p2); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := s.SessionUser(ctx, p2); !errors.Is(err, ErrBadSession) {
			t.Fatalf("deleted session: %v", err)
		}
	})
}

func TestSessionExpiry(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	s, err := Open(context.Background(), Config{DataDir: t.TempDir(), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	u, _ := s.CreateUser(ctx, "eve", false)
	_, tok, _ := s.CreateToken(ctx, u.ID, "")
	plain, _, err := s.CreateSession(ctx, u.ID, tok.ID, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(59 * time.Second)
	if _, _, err := s.SessionUser(ctx, plain); err != nil {
		t.Fatalf("before expiry: %v", err)
	}
	now = now.Add(time.Second)
	if _, _, err := s.SessionUser(ctx, plain); !errors.Is(err, ErrBadSession) {
		t.Fatalf("at expiry: %v", err)
	}
	// The next sign-in sweeps expired rows.
	if _, _, err := s.CreateSession(ctx, u.ID, tok.ID, time.Minute); err != nil {
		t.Fatal(err)
	}
	var n int
	s.db.QueryRow(`SELECT COUNT(*) FROM sessions`).Scan(&n)
	if n != 1 {
		t.Fatalf("%d sessions left, want 1 (the expired one swept)", n)
	}
}

// TestQueryCounter checks that every kind of statement is counted: plain
// queries, statements in a transaction, and each execution of a prepared
// statement.
func TestQueryCounter(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		count := func(what string, want uint64, fn func()) {
			t.Helper()
			before := s.Queries()
			fn()
			if got := s.Queries() - before; got != want {
				t.Errorf("%s: %d statements counted, want %d", what, got, want)
			}
		}
		count("CountUsers", 1, func() { s.CountUsers(ctx) })
		count("CreateUser", 1, func() { s.CreateUser(ctx, "qc", false) })
		count("ListUsers", 1, func() { s.ListUsers(ctx) })
		count("a failed query", 1, func() { s.db.ExecContext(ctx, "SELECT no_such_column FROM users") })
		count("two statements in a transaction", 2, func() {
			s.tx(ctx, func(tx *sql.Tx) error {
				tx.ExecContext(ctx, "SELECT 1")
				var n int
				return tx.QueryRowContext(ctx, "SELECT 2").Scan(&n)
			})
		})
		count("a prepared statement run three times", 3, func() {
			st, err := s.db.PrepareContext(ctx, s.q("SELECT ? + 1"))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			for i := range 3 {
				var n int
				if err := st.QueryRowContext(ctx, i).Scan(&n); err != nil || n != i+1 {
					t.Fatalf("prepared: %d %v", n, err)
				}
			}
		})
		if s.Queries() == 0 {
			t.Fatal("nothing counted")
		}
	})
}
