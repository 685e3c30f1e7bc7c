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

func (s *DB) prepared(tx *sql.Tx, ctx context.Context) ptx { return ptx{s: s, ctx: ctx, tx: tx} }

// stmt returns the cached prepared statement of query, preparing it on
// first use; nil when the driver refuses (the caller then runs it plain).
func (s *DB) stmt(query string) *sql.Stmt {
	if v, ok := s.stmts.Load(query); ok {
		return v.(*sql.Stmt)
	}
	st, err := s.db.PrepareContext(context.Background(), s.q(query))
	if err != nil {
		return nil
	}
	if v, loaded := s.stmts.LoadOrStore(query, st); loaded {
		st.Close()
		return v.(*sql.Stmt)
	}
	return st
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
