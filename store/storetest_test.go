package store

import (
	"context"
	"testing"

	"github.com/buildbridge/buildbridge/store/storetest"
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
// BUILDBRIDGE_TEST_POSTGRES; it skips the test when the variable is unset.
func OpenTestPostgres(t testing.TB) *DB {
	t.Helper()
	s, err := Open(context.Background(), Config{Postgres: storetest.PostgresDSN(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
