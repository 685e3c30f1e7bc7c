package store

import (
	"context"
	"sync/atomic"
	"time"
)

// walFallbackPages is SQLite's automatic checkpoint threshold while
// checkpoints run in the background: high enough that the background
// checkpointer always comes first, there only so that the WAL cannot grow
// without bound if it falls behind (4 KiB pages: 40 MB).
const walFallbackPages = 10000

// checkpointer runs SQLite's WAL checkpoints off the commit path.
//
// By default SQLite checkpoints inside whichever commit makes the WAL
// cross 1,000 pages: that commit, and every caller queued behind the
// single writer, waits for it (bench/ingest: the commit that checkpoints
// takes several milliseconds, the tail of the webhook ingest latency).
// Here each commit only signals; one goroutine checkpoints (PASSIVE: it
// never waits for readers or blocks the writer) Delay after the first
// commit since its last run. An idle store runs no checkpoint at all.
type checkpointer struct {
	db    *DB
	delay time.Duration
	kick  chan struct{}
	done  chan struct{}
	runs  atomic.Uint64 // checkpoints run, for tests
}

func newCheckpointer(db *DB, delay time.Duration) *checkpointer {
	return &checkpointer{db: db, delay: delay, kick: make(chan struct{}, 1), done: make(chan struct{})}
}

// committed is called after every commit; it never blocks.
func (c *checkpointer) committed() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// run checkpoints until ctx ends. The DB owns it: Close cancels ctx and
// waits for done.
func (c *checkpointer) run(ctx context.Context) {
	defer close(c.done)
	t := time.NewTimer(0)
	<-t.C
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		}
		t.Reset(c.delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		// Commits during the delay are in this checkpoint: drop their signal.
		select {
		case <-c.kick:
		default:
		}
		c.runs.Add(1)
		if _, err := c.db.db.ExecContext(uncounted(ctx), `PRAGMA wal_checkpoint(PASSIVE)`); err != nil && ctx.Err() == nil {
			c.db.cfg.Logger.Warn("store: background WAL checkpoint failed; SQLite's own checkpoints still bound the WAL", "err", err)
		}
	}
}
