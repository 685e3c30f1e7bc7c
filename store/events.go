package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

// BuildEvent is the record of one committed transition.
type BuildEvent struct {
	Seq     int64        `json:"seq"`
	EventID string       `json:"event_id"`
	BuildID int64        `json:"build_id"`
	State   builds.State `json:"state"`
	Time    time.Time    `json:"time"`
}

// PendingOutbox returns up to limit outbox rows, oldest first.
func (s *DB) PendingOutbox(ctx context.Context, limit int) ([]OutboxRow, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT id, event_id, topic, payload, created_at FROM outbox ORDER BY id LIMIT ?`), limit)
	if err != nil {
		return nil, fmt.Errorf("pending outbox: %w", err)
	}
	defer rows.Close()
	var out []OutboxRow
	for rows.Next() {
		var r OutboxRow
		var c int64
		if err := rows.Scan(&r.ID, &r.EventID, &r.Topic, &r.Payload, &c); err != nil {
			return nil, fmt.Errorf("pending outbox: %w", err)
		}
		r.CreatedAt = fromMS(c)
		out = append(out, r)
	}
	return out, rows.Err()
}

// DeleteOutbox removes published outbox rows.
func (s *DB) DeleteOutbox(ctx context.Context, ids []int64) error {
	for len(ids) > 0 {
		n := min(len(ids), 500)
		args := make([]any, n)
		for i, id := range ids[:n] {
			args[i] = id
		}
		q := `DELETE FROM outbox WHERE id IN (?` + strings.Repeat(", ?", n-1) + `)`
		if _, err := s.db.ExecContext(ctx, s.q(q), args...); err != nil {
			return fmt.Errorf("delete outbox: %w", err)
		}
		ids = ids[n:]
	}
	return nil
}

// OutboxBacklog counts unpublished outbox rows and the age of the oldest.
func (s *DB) OutboxBacklog(ctx context.Context) (int, time.Duration, error) {
	var n int
	var oldest *int64
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*), MIN(created_at) FROM outbox`).Scan(&n, &oldest); err != nil {
		return 0, 0, fmt.Errorf("outbox backlog: %w", err)
	}
	if oldest == nil {
		return n, 0, nil
	}
	return n, s.cfg.Now().Sub(fromMS(*oldest)), nil
}
