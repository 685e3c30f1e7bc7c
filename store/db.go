package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	"github.com/pressly/goose/v3"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

//go:embed migrations
var migrations embed.FS

// Errors callers test for with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("already exists")
)

// Config selects and tunes the database.
type Config struct {
	// Postgres is a PostgreSQL DSN; when empty, SQLite in DataDir is used.
	Postgres string
	// DataDir holds buildbridge.db when SQLite is used.
	DataDir string
	// MaxOpenConns bounds the pool (default 16 for PostgreSQL, 8 for SQLite).
	MaxOpenConns int
	// OnOutbox is called after every commit that wrote outbox rows, so the
	// relay can publish them at once instead of at its next poll.
	OnOutbox func()
	Logger   *slog.Logger
	// Now is the clock; tests replace it.
	Now func() time.Time
	// CheckpointDelay (SQLite) moves WAL checkpoints off the commit path:
	// a background goroutine checkpoints this long after the first commit
	// since its last run, instead of the commit that crosses SQLite's
	// threshold doing it while other writers wait. Default 25ms; negative
	// leaves checkpoints to SQLite. Short is better under load: the
	// commits that stall for milliseconds come with the checkpoints'
	// fsyncs (none without them), and fewer of them the fewer pages a
	// checkpoint carries. bench/ingest at 3,000 pushes/s: commits over
	// 5 ms per 30,000 pushes 29-35 at 100ms, 3-9 at 25ms; p99 10-13 ms
	// against 4.6-7 ms; the same CPU per push.
	CheckpointDelay time.Duration
	// WebhookCacheTTL is how long a project and its webhook secret, as
	// forge deliveries look them up, are reused (default 1s; negative:
	// never). This store's own writes apply at once; writes made by
	// another node or process apply within this time.
	WebhookCacheTTL time.Duration
}

func (c *Config) setDefaults() {
	if c.MaxOpenConns == 0 {
		c.MaxOpenConns = 8
		if c.Postgres != "" {
			c.MaxOpenConns = 16
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.CheckpointDelay == 0 {
		c.CheckpointDelay = 25 * time.Millisecond
	}
	if c.WebhookCacheTTL == 0 {
		c.WebhookCacheTTL = time.Second
	}
}

// Validate reports the first setting that cannot work.
func (c *Config) Validate() error {
	if c.Postgres == "" && c.DataDir == "" {
		return errors.New("store: data directory (data) is required for SQLite")
	}
	if c.MaxOpenConns < 1 {
		return fmt.Errorf("store: max open connections must be ≥ 1, got %d", c.MaxOpenConns)
	}
	return nil
}

// DB is the store. It is safe for concurrent use.
type DB struct {
	db       *sql.DB
	postgres bool
	cfg      Config

	mu       sync.Mutex
	rebinds  map[string]string
	onOutbox func()
	queries  atomic.Uint64 // statements sent, for Queries
	stmts    sync.Map      // query → *sql.Stmt, see prepared
	// closing ends background prepares at Close; preparing waits for them.
	closing   context.Context
	stopPrep  context.CancelFunc
	preparing sync.WaitGroup
	// checkpoints is the background WAL checkpointer (SQLite), or nil.
	checkpoints *checkpointer
	// webhooks caches ProjectWebhook.
	webhooks webhookCache

	// group commit of transitions, see groupTx.
	groupMu      sync.Mutex
	groupQueue   []*pendingTx
	groupLeading bool
}

// Open connects to the database, applies pending migrations and returns
// the store.
func Open(ctx context.Context, cfg Config) (*DB, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &DB{cfg: cfg, postgres: cfg.Postgres != "", rebinds: map[string]string{}, onOutbox: cfg.OnOutbox,
		webhooks: webhookCache{ttl: cfg.WebhookCacheTTL}}
	s.closing, s.stopPrep = context.WithCancel(context.Background())
	var err error
	if s.postgres {
		s.db, err = openCounted("pgx", cfg.Postgres, &s.queries, nil)
	} else {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("store: create data directory: %w", err)
		}
		// WAL with synchronous=NORMAL survives a killed process (not a power
		// cut) without an fsync per commit; immediate transactions take the
		// write lock up front so concurrent writers wait instead of failing.
		dsn := "file:" + filepath.Join(cfg.DataDir, "buildbridge.db") +
			"?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(10000)" +
			"&_pragma=foreign_keys(ON)&_txlock=immediate"
		var onCommit func()
		if cfg.CheckpointDelay > 0 {
			s.checkpoints = newCheckpointer(s, cfg.CheckpointDelay)
			onCommit = s.checkpoints.committed
			dsn += "&_pragma=wal_autocheckpoint(" + strconv.Itoa(walFallbackPages) + ")"
		}
		s.db, err = openCounted("sqlite", dsn, &s.queries, onCommit)
	}
	if err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	s.db.SetMaxOpenConns(cfg.MaxOpenConns)
	s.db.SetMaxIdleConns(cfg.MaxOpenConns)
	if err := s.db.PingContext(ctx); err != nil {
		s.db.Close()
		return nil, fmt.Errorf("store: connect: %w", err)
	}
	if err := s.migrate(ctx); err != nil {
		s.db.Close()
		return nil, err
	}
	if s.checkpoints != nil {
		go s.checkpoints.run(s.closing)
	}
	return s, nil
}

func (s *DB) migrate(ctx context.Context) error {
	p, err := s.migrations()
	if err != nil {
		return err
	}
	res, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("store: apply migrations: %w", err)
	}
	for _, r := range res {
		s.cfg.Logger.Debug("migration applied", "version", r.Source.Version, "duration", r.Duration)
	}
	return nil
}

// migrations returns the schema migrations of the store's database.
func (s *DB) migrations() (*goose.Provider, error) {
	dialect, dir := goose.DialectSQLite3, "migrations/sqlite"
	if s.postgres {
		dialect, dir = goose.DialectPostgres, "migrations/postgres"
	}
	sub, err := fs.Sub(migrations, dir)
	if err != nil {
		return nil, fmt.Errorf("store: migrations: %w", err)
	}
	// Migrations are written on parallel branches; a database that has a
	// later one applied still takes an earlier one that arrives after it.
	p, err := goose.NewProvider(dialect, s.db, sub, goose.WithAllowOutofOrder(true))
	if err != nil {
		return nil, fmt.Errorf("store: migrations: %w", err)
	}
	return p, nil
}

// SetOnOutbox sets the function called after commits that wrote outbox
// rows. The relay is built after the store, so it is set late.
func (s *DB) SetOnOutbox(fn func()) {
	s.mu.Lock()
	s.onOutbox = fn
	s.mu.Unlock()
}

func (s *DB) notifyOutbox() {
	s.mu.Lock()
	fn := s.onOutbox
	s.mu.Unlock()
	if fn != nil {
		fn()
	}
}

// Dialect names the database in use: "sqlite" or "postgres".
func (s *DB) Dialect() string {
	if s.postgres {
		return "postgres"
	}
	return "sqlite"
}

// Ping checks the database answers.
func (s *DB) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// Close closes the database.
func (s *DB) Close() error {
	s.stopPrep()
	s.preparing.Wait()
	if s.checkpoints != nil {
		<-s.checkpoints.done
	}
	s.stmts.Range(func(_, v any) bool {
		if st := v.(*sql.Stmt); st != nil {
			st.Close()
		}
		return true
	})
	return s.db.Close()
}

// SQL exposes the pool for benchmarks and diagnostics.
func (s *DB) SQL() *sql.DB { return s.db }

// q rewrites ? placeholders to $n for PostgreSQL, caching the result.
func (s *DB) q(query string) string {
	if !s.postgres {
		return query
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.rebinds[query]; ok {
		return r
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	s.rebinds[query] = b.String()
	return s.rebinds[query]
}

// querier is what both *sql.DB and *sql.Tx offer.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// tx runs fn in a transaction, committing when it returns nil.
func (s *DB) tx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

func (s *DB) now() time.Time { return s.cfg.Now().UTC().Truncate(time.Millisecond) }

func ms(t time.Time) int64 { return t.UnixMilli() }

func fromMS(v int64) time.Time { return time.UnixMilli(v).UTC() }

func fromNullMS(v sql.NullInt64) *time.Time {
	if !v.Valid {
		return nil
	}
	t := fromMS(v.Int64)
	return &t
}

func nullMS(t *time.Time) sql.NullInt64 {
	if t == nil {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: ms(*t), Valid: true}
}

// isUnique reports whether err is a unique-constraint violation in either
// database.
func isUnique(err error) bool {
	if err == nil {
		return false
	}
	m := err.Error()
	return strings.Contains(m, "UNIQUE constraint failed") || strings.Contains(m, "SQLSTATE 23505")
}
