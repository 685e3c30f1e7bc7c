package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// OutboxRow is one message waiting in the outbox: written in the same
// transaction as the state change it announces, published by the relay,
// and deleted only after the bus acknowledged it.
type OutboxRow struct {
	ID int64
	// EventID is the message id on the bus; the bus de-duplicates on it.
	EventID   string
	Topic     string
	Payload   []byte
	CreatedAt time.Time
}

// ErrOutboxNotHeld is returned by an OutboxLock's reads and deletes when
// the lock is not held (never taken, released, or its session ended).
var ErrOutboxNotHeld = errors.New("outbox lock not held")

// OutboxLock elects the one relay, among the hub nodes sharing a
// PostgreSQL store, that publishes the outbox: the others stand by and take
// over when its holder dies. The lock is a session-level advisory lock held
// by a connection of its own, outside the pool, so PostgreSQL releases it
// the moment that session ends (process killed, connection cut, backend
// terminated). Reads and deletes go through the same session: a read that
// succeeds proves the lock was still held when it ran, so a relay whose
// session died cannot go on reading rows that another relay now publishes.
// One relay reading in id order keeps the order of each build's
// transitions, which row claims (SKIP LOCKED) split across nodes would not.
//
// Nodes announce new rows with NOTIFY on a channel the holder LISTENs to,
// so rows committed on any node go out at once, not at the holder's next
// poll.
//
// On SQLite (one node) the lock is always granted and reads the pool.
//
// An OutboxLock is used by one goroutine at a time (the relay's).
type OutboxLock struct {
	s      *DB
	holder string

	mu      sync.Mutex
	conn    *pgx.Conn // the session (PostgreSQL); nil until needed
	name    string    // lock name, from the schema: one lock per deployment
	channel string    // NOTIFY channel, from the schema too
	held    bool
}

// OutboxLock returns the outbox lock of this store; holder names the node
// in pg_stat_activity (application_name) and in Holder's answer. It does
// no I/O: TryLock connects.
func (s *DB) OutboxLock(holder string) *OutboxLock {
	return &OutboxLock{s: s, holder: holder}
}

// appName is the session's application_name (PostgreSQL keeps 63 bytes).
func (l *OutboxLock) appName() string {
	n := "buildbridge relay " + l.holder
	if len(n) > 63 {
		n = n[:63]
	}
	return n
}

// connect opens the lock's session. The keepalive settings make the
// server notice within about 15s that a holder's host vanished without
// closing its connection, instead of the kernel's two hours.
func (l *OutboxLock) connect(ctx context.Context) error {
	cfg, err := pgx.ParseConfig(l.s.cfg.Postgres)
	if err != nil {
		return fmt.Errorf("outbox lock: %w", err)
	}
	cfg.RuntimeParams["application_name"] = l.appName()
	cfg.RuntimeParams["tcp_keepalives_idle"] = "5"
	cfg.RuntimeParams["tcp_keepalives_interval"] = "2"
	cfg.RuntimeParams["tcp_keepalives_count"] = "3"
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cfg)
	if err != nil {
		return fmt.Errorf("outbox lock: connect: %w", err)
	}
	var schema string
	if err := conn.QueryRow(cctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		conn.Close(context.Background())
		return fmt.Errorf("outbox lock: %w", err)
	}
	l.conn = conn
	l.name = "buildbridge.outbox:" + schema
	l.channel = outboxChannel(schema)
	return nil
}

// outboxChannel is the NOTIFY channel of a schema's outbox; channel names
// are identifiers of at most 63 bytes.
func outboxChannel(schema string) string {
	c := "buildbridge_outbox_" + schema
	if len(c) > 63 {
		c = c[:63]
	}
	return c
}

// drop ends the session, and with it the lock.
func (l *OutboxLock) drop() {
	if l.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		l.conn.Close(ctx)
		cancel()
		l.conn = nil
	}
	l.held = false
}

// TryLock takes the lock unless another session holds it, and reports
// whether this one holds it now. An error leaves the lock not held.
func (l *OutboxLock) TryLock(ctx context.Context) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.s.postgres {
		l.held = true
		return true, nil
	}
	if l.held {
		return true, nil
	}
	if l.conn == nil {
		if err := l.connect(ctx); err != nil {
			return false, err
		}
	}
	var ok bool
	if err := l.conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended($1, 0))`, l.name).Scan(&ok); err != nil {
		l.drop()
		return false, fmt.Errorf("outbox lock: %w", err)
	}
	if !ok {
		return false, nil
	}
	if _, err := l.conn.Exec(ctx, `LISTEN `+pgx.Identifier{l.channel}.Sanitize()); err != nil {
		l.drop()
		return false, fmt.Errorf("outbox lock: listen: %w", err)
	}
	l.held = true
	return true, nil
}

// Release gives the lock up by ending its session. TryLock connects again.
func (l *OutboxLock) Release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.drop()
}

// Held reports whether the lock is held, as far as this side knows: a
// session killed by the server shows at the next read.
func (l *OutboxLock) Held() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held
}

// PendingOutbox returns up to limit outbox rows, oldest first, read
// through the session holding the lock.
func (l *OutboxLock) PendingOutbox(ctx context.Context, limit int) ([]OutboxRow, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.held {
		return nil, ErrOutboxNotHeld
	}
	if !l.s.postgres {
		return l.s.PendingOutbox(ctx, limit)
	}
	rows, err := l.conn.Query(ctx, `SELECT id, event_id, topic, payload, created_at FROM outbox ORDER BY id LIMIT $1`, limit)
	if err != nil {
		l.drop()
		return nil, fmt.Errorf("pending outbox: %w", err)
	}
	defer rows.Close()
	var out []OutboxRow
	for rows.Next() {
		var r OutboxRow
		var c int64
		if err := rows.Scan(&r.ID, &r.EventID, &r.Topic, &r.Payload, &c); err != nil {
			l.drop()
			return nil, fmt.Errorf("pending outbox: %w", err)
		}
		r.CreatedAt = fromMS(c)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		l.drop()
		return nil, fmt.Errorf("pending outbox: %w", err)
	}
	return out, nil
}

// DeleteOutbox deletes published rows through the session holding the
// lock; ids already gone are not an error.
func (l *OutboxLock) DeleteOutbox(ctx context.Context, ids []int64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.held {
		return ErrOutboxNotHeld
	}
	if !l.s.postgres {
		return l.s.DeleteOutbox(ctx, ids)
	}
	if _, err := l.conn.Exec(ctx, `DELETE FROM outbox WHERE id = ANY($1)`, ids); err != nil {
		l.drop()
		return fmt.Errorf("delete outbox: %w", err)
	}
	return nil
}

// Wait blocks until another node announces committed rows (Announce), or
// ctx ends (then it returns ctx's error and the session stays usable).
// Announcements that arrived meanwhile are all consumed by one Wait.
func (l *OutboxLock) Wait(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.held {
		return ErrOutboxNotHeld
	}
	if !l.s.postgres {
		<-ctx.Done()
		return ctx.Err()
	}
	if _, err := l.conn.WaitForNotification(ctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		l.drop()
		return fmt.Errorf("outbox lock: wait: %w", err)
	}
	// With a done context pgx only hands out notifications it holds.
	done, cancel := context.WithCancel(ctx)
	cancel()
	for {
		if n, _ := l.conn.WaitForNotification(done); n == nil {
			return nil
		}
	}
}

// Announce tells the holder, through this lock's session, that rows were
// committed on this node. The holder itself need not announce.
func (l *OutboxLock) Announce(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.s.postgres || l.held {
		return nil
	}
	if l.conn == nil {
		if err := l.connect(ctx); err != nil {
			return err
		}
	}
	if _, err := l.conn.Exec(ctx, `SELECT pg_notify($1, '')`, l.channel); err != nil {
		l.drop()
		return fmt.Errorf("outbox lock: announce: %w", err)
	}
	return nil
}

// OutboxHolder is the session holding the outbox lock.
type OutboxHolder struct {
	// Name is the holder given to OutboxLock.
	Name string
	// PID is the PostgreSQL backend of the session.
	PID int
}

// OutboxHolder returns the session holding the outbox lock, or ErrNotFound
// when none does. On SQLite it is always ErrNotFound.
func (s *DB) OutboxHolder(ctx context.Context) (OutboxHolder, error) {
	if !s.postgres {
		return OutboxHolder{}, fmt.Errorf("outbox holder: %w", ErrNotFound)
	}
	// A bigint advisory lock shows in pg_locks as classid (high 32 bits)
	// and objid (low 32 bits), with objsubid 1.
	var h OutboxHolder
	var app string
	err := s.db.QueryRowContext(ctx, `WITH k AS (SELECT hashtextextended('buildbridge.outbox:' || current_schema(), 0) AS key)
		SELECT a.application_name, l.pid FROM pg_locks l CROSS JOIN k JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
		  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		  AND l.classid = ((k.key >> 32) & 4294967295)::oid AND l.objid = (k.key & 4294967295)::oid`).Scan(&app, &h.PID)
	if err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return h, fmt.Errorf("outbox holder: %w", ErrNotFound)
		}
		return h, fmt.Errorf("outbox holder: %w", err)
	}
	h.Name = strings.TrimPrefix(app, "buildbridge relay ")
	return h, nil
}
