package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

// NewNodeID names a hub node in the store's leases (builds its runner
// claims, deliveries it holds): the host name and a random suffix, so that
// two processes on one host never share it. A node that should be the
// same after a restart keeps the id it was given (serve keeps it in its
// data directory).
func NewNodeID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "node"
	}
	var raw [4]byte
	rand.Read(raw[:])
	return host + "-" + hex.EncodeToString(raw[:])
}

// ErrNodeAlive is returned by RecoverBuild for a build that a live node
// (or a remote runner) holds, or that is no longer STARTED.
var ErrNodeAlive = errors.New("build is held by a live node")

// RenewNode records that node lives until now+ttl, creating its row on
// the first call. Builds the node claims (ClaimQueuedOn) are left alone by
// recovery elsewhere until the row expires.
func (s *DB) RenewNode(ctx context.Context, node string, ttl time.Duration) error {
	if node == "" || ttl <= 0 {
		return fmt.Errorf("renew node: need a node id and a positive ttl, got %q and %s", node, ttl)
	}
	now := s.now()
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO nodes (id, started_at, expires_at) VALUES (?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at`), node, ms(now), ms(now.Add(ttl)))
	if err != nil {
		return fmt.Errorf("renew node %s: %w", node, err)
	}
	return nil
}

// RemoveNode deletes node's row: what it still holds is anybody's to
// recover at once. A node calls it when it stops.
func (s *DB) RemoveNode(ctx context.Context, node string) error {
	if _, err := s.db.ExecContext(ctx, s.q(`DELETE FROM nodes WHERE id = ?`), node); err != nil {
		return fmt.Errorf("remove node %s: %w", node, err)
	}
	return nil
}

// PruneNodes deletes the rows of nodes expired before t that no STARTED
// build names.
func (s *DB) PruneNodes(ctx context.Context, t time.Time) error {
	_, err := s.db.ExecContext(ctx, s.q(`DELETE FROM nodes WHERE expires_at < ?
		AND NOT EXISTS (SELECT 1 FROM builds b WHERE b.`+startedCond+` AND b.node = nodes.id)`), ms(t))
	if err != nil {
		return fmt.Errorf("prune nodes: %w", err)
	}
	return nil
}

// OrphanBuild is a STARTED build whose runner is gone as far as the store
// can tell.
type OrphanBuild struct {
	ID int64
	// Node is the node that claimed it; "" for a build claimed without one.
	Node string
	// Expired is when Node's lease ended; nil when the node has no row.
	Expired *time.Time
}

// OrphanedBuilds lists, oldest first, STARTED builds that no remote runner
// holds and no live node claimed: builds claimed without a node, and
// builds whose node's lease has expired or whose node has no row.
//
// The builds of self are listed only at startup: then they are what this
// node's previous run left (a node id stays with its data directory);
// afterwards they are builds it runs. everyOther counts every other node
// as dead, live lease or not: right only where one node uses the store
// (SQLite).
func (s *DB) OrphanedBuilds(ctx context.Context, self string, startup, everyOther bool, limit int) ([]OrphanBuild, error) {
	// The state is in the text, not bound: see queuedCond.
	query := `SELECT b.id, COALESCE(b.node, ''), n.expires_at FROM builds b LEFT JOIN nodes n ON n.id = b.node
		WHERE b.` + startedCond + ` AND NOT EXISTS (SELECT 1 FROM build_leases l WHERE l.build_id = b.id)`
	var args []any
	switch now := ms(s.now()); {
	case startup && everyOther:
	case everyOther:
		query += ` AND (b.node IS NULL OR b.node <> ?)`
		args = append(args, self)
	case startup:
		query += ` AND (b.node IS NULL OR b.node = ? OR n.id IS NULL OR n.expires_at <= ?)`
		args = append(args, self, now)
	default:
		query += ` AND (b.node IS NULL OR (b.node <> ? AND (n.id IS NULL OR n.expires_at <= ?)))`
		args = append(args, self, now)
	}
	query += ` ORDER BY b.id LIMIT ?`
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, fmt.Errorf("orphaned builds: %w", err)
	}
	defer rows.Close()
	var out []OrphanBuild
	for rows.Next() {
		var o OrphanBuild
		var exp sql.NullInt64
		if err := rows.Scan(&o.ID, &o.Node, &exp); err != nil {
			return nil, fmt.Errorf("orphaned builds: %w", err)
		}
		o.Expired = fromNullMS(exp)
		out = append(out, o)
	}
	return out, rows.Err()
}

// RecoverBuild takes an orphaned build back: re-queued when requeue is
// set, otherwise finished as errored, with reason either way. Inside the
// transaction it checks again that the build is STARTED, still names
// o.Node, holds no remote lease and, unless ignoreLease, that o.Node's
// lease has still expired; otherwise it returns ErrNodeAlive. A node
// interrupting its own build passes its own node and ignoreLease.
func (s *DB) RecoverBuild(ctx context.Context, o OrphanBuild, ignoreLease, requeue bool, reason string) (builds.Build, error) {
	var b builds.Build
	err := s.groupTx(ctx, func(tx *sql.Tx) error {
		lock := ""
		if s.postgres {
			lock = ` FOR UPDATE`
		}
		var (
			state  builds.State
			node   string
			leases int
		)
		err := s.prepared(tx, ctx).QueryRow(`SELECT state, COALESCE(node, ''), (SELECT COUNT(*) FROM build_leases WHERE build_id = ?) FROM builds WHERE id = ?`+lock,
			o.ID, o.ID).Scan(&state, &node, &leases)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("build %d: %w", o.ID, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("build %d: %w", o.ID, err)
		}
		if state != builds.Started || node != o.Node || leases > 0 {
			return fmt.Errorf("build %d: %w", o.ID, ErrNodeAlive)
		}
		if node != "" && !ignoreLease {
			var exp int64
			err := s.prepared(tx, ctx).QueryRow(`SELECT expires_at FROM nodes WHERE id = ?`, node).Scan(&exp)
			switch {
			case errors.Is(err, sql.ErrNoRows): // the node removed its row: gone
			case err != nil:
				return fmt.Errorf("node %s: %w", node, err)
			case exp > ms(s.now()):
				return fmt.Errorf("build %d: node %s renewed its lease: %w", o.ID, node, ErrNodeAlive)
			}
		}
		if requeue {
			b, err = s.transitionTx(ctx, tx, o.ID, builds.Queued, func(qb *builds.Build) error {
				qb.Reason = reason
				return nil
			})
		} else {
			b, err = s.transitionTx(ctx, tx, o.ID, builds.Finished, func(fb *builds.Build) error {
				fb.Result, fb.Reason = builds.Errored, reason
				return nil
			})
		}
		return err
	})
	if err != nil {
		return builds.Build{}, fmt.Errorf("recover build: %w", err)
	}
	s.notifyOutbox()
	return b, nil
}
