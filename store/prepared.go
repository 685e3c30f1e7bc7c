package store

import (
	"context"
	"database/sql"
)

// ptx runs the statements of one transaction through prepared statements
// cached on the DB: the hot transactions (a build queued, a transition, a
// log chunk) are then parsed once per connection instead of every time.
type ptx struct {
	s   *DB
	ctx context.Context
	tx  *sql.Tx
}

// prepared returns the statements of tx. On SQLite they run without
// ctx's cancellation: the driver starts a goroutine per statement to
// watch a context that can end, and a statement inside a transaction
// never waits (the transaction began IMMEDIATE, holding the write lock),
// so there is nothing to cut short. A transaction whose context ends is
// still rolled back by database/sql.
func (s *DB) prepared(tx *sql.Tx, ctx context.Context) ptx {
	if !s.postgres {
		ctx = context.WithoutCancel(ctx)
	}
	return ptx{s: s, ctx: ctx, tx: tx}
}

// stmt returns the cached prepared statement of query, or nil while it is
// not prepared yet (the caller then runs the query plain). Preparing takes
// a connection from the pool, so it happens in the background: a caller
// holding a transaction must never wait for a second connection, or a
// full pool of such callers would wait on each other forever.
func (s *DB) stmt(query string) *sql.Stmt {
	v, loaded := s.stmts.LoadOrStore(query, (*sql.Stmt)(nil))
	if loaded {
		return v.(*sql.Stmt)
	}
	s.preparing.Add(1)
	go func() {
		defer s.preparing.Done()
		st, err := s.db.PrepareContext(s.closing, s.q(query))
		if err != nil {
			return // stays nil: the query keeps running plain
		}
		s.stmts.Store(query, st)
	}()
	return nil
}

func (p ptx) QueryRow(query string, args ...any) *sql.Row {
	if st := p.s.stmt(query); st != nil {
		return p.tx.StmtContext(p.ctx, st).QueryRowContext(p.ctx, args...)
	}
	return p.tx.QueryRowContext(p.ctx, p.s.q(query), args...)
}

func (p ptx) Exec(query string, args ...any) (sql.Result, error) {
	if st := p.s.stmt(query); st != nil {
		return p.tx.StmtContext(p.ctx, st).ExecContext(p.ctx, args...)
	}
	return p.tx.ExecContext(p.ctx, p.s.q(query), args...)
}

func (p ptx) Query(query string, args ...any) (*sql.Rows, error) {
	if st := p.s.stmt(query); st != nil {
		return p.tx.StmtContext(p.ctx, st).QueryContext(p.ctx, args...)
	}
	return p.tx.QueryContext(p.ctx, p.s.q(query), args...)
}
