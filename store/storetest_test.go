package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
)

// eachStore runs fn against SQLite, and against PostgreSQL when
// BUILDBRIDGE_TEST_POSTGRES names a server: the same suite for both.
func eachStore(t *testing.T, fn func(t *testing.T, s *DB)) {
	t.Helper()
	t.Run("sqlite", func(t *testing.T) {
		s, err := Open(context.Background(), Config{DataDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		fn(t, s)
	})
	t.Run("postgres", func(t *testing.T) {
		s := OpenTestPostgres(t)
		fn(t, s)
	})
}

// OpenTestPostgres opens a store in a fresh schema of the database named by
// BUILDBRIDGE_TEST_POSTGRES, dropped when the test ends; it skips the test
// when the variable is unset.
func OpenTestPostgres(t testing.TB) *DB {
	t.Helper()
	dsn := os.Getenv("BUILDBRIDGE_TEST_POSTGRES")
	if dsn == "" {
		t.Skip("BUILDBRIDGE_TEST_POSTGRES is not set; skipping the PostgreSQL store suite")
	}
	var raw [6]byte
	rand.Read(raw[:])
	schema := "bbtest_" + hex.EncodeToString(raw[:])
	admin, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.Exec(`CREATE SCHEMA ` + schema); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("BUILDBRIDGE_TEST_POSTGRES: %v", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	s, err := Open(context.Background(), Config{Postgres: u.String()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		if a, err := sql.Open("pgx", dsn); err == nil {
			a.Exec(`DROP SCHEMA ` + schema + ` CASCADE`)
			a.Close()
		}
	})
	return s
}
