package store

import (
	"context"
	"database/sql"
	"fmt"
	"runtime"
	"time"
)

// maxGroup bounds how many callers share one transaction.
const maxGroup = 64

// groupCommitTimeout bounds one shared transaction, whatever the callers'
// contexts say: a caller that gives up must not leave the others hanging.
const groupCommitTimeout = 30 * time.Second

// pendingTx is one caller's work waiting for a shared transaction.
type pendingTx struct {
	fn      func(tx *sql.Tx) error
	err     error
	done    chan struct{} // closed when err is set
	promote chan struct{} // closed when this caller is to lead next
}

// groupTx runs fn in a transaction that it may share with concurrent
// callers (group commit): with SQLite's single writer, one commit for a
// burst of transitions beats a line of transactions each waiting for the
// write lock and each paying for its own commit. Each caller's work runs
// inside its own savepoint, so one caller's error undoes only its own
// writes. There is no background goroutine: the first caller to find no
// commit under way leads, then hands over to the oldest waiting caller.
func (s *DB) groupTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	p := &pendingTx{fn: fn, done: make(chan struct{}), promote: make(chan struct{})}
	s.groupMu.Lock()
	s.groupQueue = append(s.groupQueue, p)
	lead := !s.groupLeading
	s.groupLeading = true
	s.groupMu.Unlock()
	if !lead {
		select {
		case <-p.done:
			return p.err
		case <-p.promote:
		}
	}
	s.leadGroup(ctx)
	<-p.done
	return p.err
}

func (s *DB) leadGroup(ctx context.Context) {
	// Let callers that are about to queue join this commit; with nothing
	// else runnable this returns at once.
	runtime.Gosched()
	s.groupMu.Lock()
	n := min(len(s.groupQueue), maxGroup)
	batch := append([]*pendingTx(nil), s.groupQueue[:n]...)
	s.groupQueue = append(s.groupQueue[:0], s.groupQueue[n:]...)
	s.groupMu.Unlock()

	s.commitGroup(ctx, batch)
	for _, p := range batch {
		close(p.done)
	}
	s.groupMu.Lock()
	if len(s.groupQueue) > 0 {
		close(s.groupQueue[0].promote)
	} else {
		s.groupLeading = false
	}
	s.groupMu.Unlock()
}

// commitGroup runs the batch in one transaction and sets every caller's
// error.
func (s *DB) commitGroup(ctx context.Context, batch []*pendingTx) {
	fail := func(err error) {
		for _, p := range batch {
			if p.err == nil {
				p.err = err
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), groupCommitTimeout)
	defer cancel()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		fail(fmt.Errorf("begin: %w", err))
		return
	}
	if len(batch) == 1 {
		if batch[0].err = batch[0].fn(tx); batch[0].err != nil {
			tx.Rollback()
			return
		}
	} else {
		for _, p := range batch {
			if _, err := tx.ExecContext(ctx, `SAVEPOINT grp`); err != nil {
				tx.Rollback()
				fail(fmt.Errorf("savepoint: %w", err))
				return
			}
			if p.err = p.fn(tx); p.err != nil {
				if _, err := tx.ExecContext(ctx, `ROLLBACK TO SAVEPOINT grp`); err != nil {
					tx.Rollback()
					fail(fmt.Errorf("rollback to savepoint: %w", err))
					return
				}
			}
			if _, err := tx.ExecContext(ctx, `RELEASE SAVEPOINT grp`); err != nil {
				tx.Rollback()
				fail(fmt.Errorf("release savepoint: %w", err))
				return
			}
		}
	}
	if err := tx.Commit(); err != nil {
		for _, p := range batch {
			p.err = fmt.Errorf("commit: %w", err) // nothing of the batch was written
		}
	}
}
