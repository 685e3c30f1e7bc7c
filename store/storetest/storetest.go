// Package storetest gives tests of any package a private PostgreSQL schema
// on the server named by BUILDBRIDGE_TEST_POSTGRES.
package storetest

import (
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver
)

// PostgresDSN creates a fresh schema and returns a DSN whose search_path
// points at it; the schema is dropped when the test ends. The test is
// skipped, with a message, when BUILDBRIDGE_TEST_POSTGRES is unset.
func PostgresDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv("BUILDBRIDGE_TEST_POSTGRES")
	if dsn == "" {
		t.Skip("BUILDBRIDGE_TEST_POSTGRES is not set; skipping the PostgreSQL variant")
	}
	var raw [6]byte
	rand.Read(raw[:])
	schema := "bbtest_" + hex.EncodeToString(raw[:])
	admin, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatalf("BUILDBRIDGE_TEST_POSTGRES: %v", err)
	}
	defer admin.Close()
	if _, err := admin.Exec(`CREATE SCHEMA ` + schema); err != nil {
		t.Fatalf("create schema on BUILDBRIDGE_TEST_POSTGRES: %v", err)
	}
	t.Cleanup(func() {
		if a, err := sql.Open("pgx", dsn); err == nil {
			a.Exec(`DROP SCHEMA ` + schema + ` CASCADE`)
			a.Close()
		}
	})
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("BUILDBRIDGE_TEST_POSTGRES: %v", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}
