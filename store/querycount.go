package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
)

// Queries returns how many statements the store has sent to the database
// since it was opened: every query and every execution of a prepared
// statement, whichever method made it (migrations included). It is what
// benchmarks compare, and costs one atomic add per statement. The
// store's own background WAL checkpoints are not counted: they follow
// the writes at their own pace, and counted they made every figure
// depend on when one happened to run.
func (s *DB) Queries() uint64 { return s.queries.Load() }

// uncountedKey marks a context whose statements Queries leaves out.
type uncountedKey struct{}

// uncounted returns ctx with its statements left out of Queries.
func uncounted(ctx context.Context) context.Context {
	return context.WithValue(ctx, uncountedKey{}, true)
}

func counted(ctx context.Context) bool { return ctx.Value(uncountedKey{}) == nil }

// openCounted opens a pool whose connections count every statement in n.
// Counting in the driver, under database/sql, means no store method can
// bypass it: plain queries, transactions and prepared statements all end
// up here.
//
// onCommit, when not nil, is called after every committed transaction.
func openCounted(driverName, dsn string, n *atomic.Uint64, onCommit func()) (*sql.DB, error) {
	db, err := sql.Open(driverName, dsn) // connects to nothing yet
	if err != nil {
		return nil, err
	}
	drv := db.Driver()
	db.Close()
	var c driver.Connector = dsnConnector{dsn: dsn, drv: drv}
	if dc, ok := drv.(driver.DriverContext); ok {
		if c, err = dc.OpenConnector(dsn); err != nil {
			return nil, err
		}
	}
	return sql.OpenDB(countingConnector{Connector: c, n: n, onCommit: onCommit}), nil
}

// dsnConnector is the connector of a driver without one of its own.
type dsnConnector struct {
	dsn string
	drv driver.Driver
}

func (c dsnConnector) Connect(context.Context) (driver.Conn, error) { return c.drv.Open(c.dsn) }
func (c dsnConnector) Driver() driver.Driver                        { return c.drv }

type countingConnector struct {
	driver.Connector
	n        *atomic.Uint64
	onCommit func()
}

func (c countingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &countingConn{c: conn, n: c.n, onCommit: c.onCommit}, nil
}

// Close closes the wrapped connector when it holds resources.
func (c countingConnector) Close() error {
	if cl, ok := c.Connector.(io.Closer); ok {
		return cl.Close()
	}
	return nil
}

// countingConn passes everything through to the driver's connection and
// offers each optional interface database/sql looks for, answering as
// database/sql itself would when the driver lacks it.
type countingConn struct {
	c        driver.Conn
	n        *atomic.Uint64
	onCommit func()
}

func (c *countingConn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

func (c *countingConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	var (
		st  driver.Stmt
		err error
	)
	if p, ok := c.c.(driver.ConnPrepareContext); ok {
		st, err = p.PrepareContext(ctx, query)
	} else {
		st, err = c.c.Prepare(query)
	}
	if err != nil {
		return nil, err
	}
	return &countingStmt{s: st, conn: c}, nil
}

func (c *countingConn) Close() error { return c.c.Close() }

func (c *countingConn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *countingConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	var (
		tx  driver.Tx
		err error
	)
	if b, ok := c.c.(driver.ConnBeginTx); ok {
		tx, err = b.BeginTx(ctx, opts)
	} else if opts.ReadOnly || opts.Isolation != 0 {
		return nil, errors.New("store: driver supports no transaction options")
	} else {
		tx, err = c.c.Begin()
	}
	if err != nil || c.onCommit == nil || opts.ReadOnly {
		return tx, err
	}
	return committedTx{Tx: tx, onCommit: c.onCommit}, nil
}

// committedTx tells onCommit about each successful commit.
type committedTx struct {
	driver.Tx
	onCommit func()
}

func (t committedTx) Commit() error {
	if err := t.Tx.Commit(); err != nil {
		return err
	}
	t.onCommit()
	return nil
}

func (c *countingConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	e, ok := c.c.(driver.ExecerContext)
	if !ok {
		return nil, driver.ErrSkip // database/sql prepares, and the statement counts
	}
	res, err := e.ExecContext(ctx, query, args)
	if !errors.Is(err, driver.ErrSkip) && counted(ctx) {
		c.n.Add(1)
	}
	return res, err
}

func (c *countingConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	q, ok := c.c.(driver.QueryerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	rows, err := q.QueryContext(ctx, query, args)
	if !errors.Is(err, driver.ErrSkip) && counted(ctx) {
		c.n.Add(1)
	}
	return rows, err
}

func (c *countingConn) Ping(ctx context.Context) error {
	if p, ok := c.c.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

func (c *countingConn) CheckNamedValue(v *driver.NamedValue) error {
	if nc, ok := c.c.(driver.NamedValueChecker); ok {
		return nc.CheckNamedValue(v)
	}
	return driver.ErrSkip // database/sql's default conversion
}

func (c *countingConn) ResetSession(ctx context.Context) error {
	if r, ok := c.c.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *countingConn) IsValid() bool {
	if v, ok := c.c.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

type countingStmt struct {
	s    driver.Stmt
	conn *countingConn
}

func (s *countingStmt) Close() error  { return s.s.Close() }
func (s *countingStmt) NumInput() int { return s.s.NumInput() }

func (s *countingStmt) Exec(args []driver.Value) (driver.Result, error) {
	s.conn.n.Add(1)
	return s.s.Exec(args)
}

func (s *countingStmt) Query(args []driver.Value) (driver.Rows, error) {
	s.conn.n.Add(1)
	return s.s.Query(args)
}

func (s *countingStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	if e, ok := s.s.(driver.StmtExecContext); ok {
		s.conn.n.Add(1)
		return e.ExecContext(ctx, args)
	}
	vals, err := plainValues(args)
	if err != nil {
		return nil, err
	}
	return s.Exec(vals)
}

func (s *countingStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	if q, ok := s.s.(driver.StmtQueryContext); ok {
		s.conn.n.Add(1)
		return q.QueryContext(ctx, args)
	}
	vals, err := plainValues(args)
	if err != nil {
		return nil, err
	}
	return s.Query(vals)
}

// CheckNamedValue is the statement's checker, else its connection's, as
// database/sql would pick them.
func (s *countingStmt) CheckNamedValue(v *driver.NamedValue) error {
	if nc, ok := s.s.(driver.NamedValueChecker); ok {
		return nc.CheckNamedValue(v)
	}
	return s.conn.CheckNamedValue(v)
}

func plainValues(args []driver.NamedValue) ([]driver.Value, error) {
	out := make([]driver.Value, len(args))
	for i, a := range args {
		if a.Name != "" {
			return nil, fmt.Errorf("store: driver does not support the named parameter %q", a.Name)
		}
		out[i] = a.Value
	}
	return out, nil
}
