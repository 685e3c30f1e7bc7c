// Package store persists buildbridge's state: users and API tokens,
// projects, builds, build logs, artifact metadata and the outbox. SQLite
// (modernc.org/sqlite, WAL) is the default; PostgreSQL (pgx) is used when a
// DSN is given. Both run the same goose migrations and the same SQL, with
// placeholders rebound for PostgreSQL.
package store
