package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// SlackMessage is the Slack message that shows one build in one channel
// of one slack sink: posted on the build's first event and edited in
// place on the next ones.
type SlackMessage struct {
	Sink, Target string
	BuildID      int64
	// Channel is the channel id Slack answered with (chat.update needs
	// an id, not a name); TS the message's timestamp, its id.
	Channel, TS string
	// Seq is the seq of the last event the message shows.
	Seq int64
	// ReplyTS is the thread reply posted when the build failed, if any.
	ReplyTS   string
	UpdatedAt time.Time
}

// SlackMessage returns the message of a build in a sink's target, or an
// error wrapping ErrNotFound.
func (s *DB) SlackMessage(ctx context.Context, sink, target string, buildID int64) (SlackMessage, error) {
	m := SlackMessage{Sink: sink, Target: target, BuildID: buildID}
	var updated int64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT channel, ts, seq, reply_ts, updated_at FROM slack_messages
		WHERE sink = ? AND target = ? AND build_id = ?`), sink, target, buildID).
		Scan(&m.Channel, &m.TS, &m.Seq, &m.ReplyTS, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return m, fmt.Errorf("slack message of build %d in %s/%s: %w", buildID, sink, target, ErrNotFound)
	}
	if err != nil {
		return m, fmt.Errorf("slack message: %w", err)
	}
	m.UpdatedAt = fromMS(updated)
	return m, nil
}

// SaveSlackMessage records a build's message (insert or replace).
func (s *DB) SaveSlackMessage(ctx context.Context, m SlackMessage) error {
	if m.Sink == "" || m.Target == "" || m.BuildID == 0 || m.Channel == "" || m.TS == "" {
		return errors.New("save slack message: sink, target, build id, channel and ts are required")
	}
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO slack_messages (sink, target, build_id, channel, ts, seq, reply_ts, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (sink, target, build_id) DO UPDATE SET channel = excluded.channel, ts = excluded.ts,
		seq = excluded.seq, reply_ts = excluded.reply_ts, updated_at = excluded.updated_at`),
		m.Sink, m.Target, m.BuildID, m.Channel, m.TS, m.Seq, m.ReplyTS, ms(s.now()))
	if err != nil {
		return fmt.Errorf("save slack message: %w", err)
	}
	return nil
}

// PruneSlackMessages forgets messages not touched since before: their
// builds are long over, and a late event posts a new message.
func (s *DB) PruneSlackMessages(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM slack_messages WHERE updated_at < ?`), ms(before))
	if err != nil {
		return 0, fmt.Errorf("prune slack messages: %w", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// MailHold is one mail an email sink holds back: a digest item, or mail
// waiting for the end of quiet hours. Holds of one (Sink, Group) that
// are released together go out as one mail.
type MailHold struct {
	ID      int64
	Sink    string
	Group   string
	EventID string
	// ReleaseAt is when the hold is due.
	ReleaseAt time.Time
	// Tries counts failed sends.
	Tries     int
	Payload   []byte
	CreatedAt time.Time
}

const mailHoldCols = `id, sink, grp, event_id, release_at, tries, payload, created_at`

func scanMailHold(row interface{ Scan(...any) error }) (MailHold, error) {
	var (
		h                MailHold
		release, created int64
	)
	if err := row.Scan(&h.ID, &h.Sink, &h.Group, &h.EventID, &release, &h.Tries, &h.Payload, &created); err != nil {
		return h, err
	}
	h.ReleaseAt, h.CreatedAt = fromMS(release), fromMS(created)
	return h, nil
}

// HoldMail stores a hold. It joins the open batch of its group: when the
// group has holds not yet taken by a flusher, the new one is released
// with the earliest of them; otherwise at h.ReleaseAt. A hold of the same
// (sink, group, event id) is stored once: created reports whether this
// call stored it. The hold is returned as stored.
func (s *DB) HoldMail(ctx context.Context, h MailHold) (MailHold, bool, error) {
	if h.Sink == "" || h.Group == "" || h.EventID == "" {
		return h, false, errors.New("hold mail: sink, group and event id are required")
	}
	now := s.now()
	created := false
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var open sql.NullInt64
		if err := tx.QueryRowContext(ctx, s.q(`SELECT MIN(release_at) FROM mail_holds WHERE sink = ? AND grp = ? AND lease_until <= ?`),
			h.Sink, h.Group, ms(now)).Scan(&open); err != nil {
			return err
		}
		release := ms(h.ReleaseAt)
		if open.Valid {
			release = open.Int64
		}
		res, err := tx.ExecContext(ctx, s.q(`INSERT INTO mail_holds (sink, grp, event_id, release_at, payload, created_at)
			VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sink, grp, event_id) DO NOTHING`),
			h.Sink, h.Group, h.EventID, release, h.Payload, ms(now))
		if err != nil {
			return err
		}
		n, _ := res.RowsAffected()
		created = n == 1
		var err2 error
		h, err2 = scanMailHold(tx.QueryRowContext(ctx, s.q(`SELECT `+mailHoldCols+` FROM mail_holds WHERE sink = ? AND grp = ? AND event_id = ?`),
			h.Sink, h.Group, h.EventID))
		return err2
	})
	if err != nil {
		return h, false, fmt.Errorf("hold mail: %w", err)
	}
	return h, created, nil
}

// ClaimMailHolds takes up to limit due holds of a sink (released by now
// and not taken by another flusher) and leases them for lease: nobody
// else takes them until then. They come ordered by group and id. The
// caller deletes them once sent, or releases them again.
func (s *DB) ClaimMailHolds(ctx context.Context, sink string, now time.Time, lease time.Duration, limit int) ([]MailHold, error) {
	if limit <= 0 {
		limit = 500
	}
	rows, err := s.db.QueryContext(ctx, s.q(`UPDATE mail_holds SET lease_until = ?
		WHERE id IN (SELECT id FROM mail_holds WHERE sink = ? AND release_at <= ? AND lease_until <= ? ORDER BY id LIMIT ?)
		AND lease_until <= ? RETURNING `+mailHoldCols),
		ms(now.Add(lease)), sink, ms(now), ms(now), limit, ms(now))
	if err != nil {
		return nil, fmt.Errorf("claim mail holds: %w", err)
	}
	defer rows.Close()
	var out []MailHold
	for rows.Next() {
		h, err := scanMailHold(rows)
		if err != nil {
			return nil, fmt.Errorf("claim mail holds: %w", err)
		}
		out = append(out, h)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("claim mail holds: %w", err)
	}
	sortHolds(out)
	return out, nil
}

func sortHolds(hs []MailHold) {
	sort.Slice(hs, func(i, j int) bool {
		if hs[i].Group != hs[j].Group {
			return hs[i].Group < hs[j].Group
		}
		return hs[i].ID < hs[j].ID
	})
}

// NextMailRelease is when the next hold of a sink becomes due (its
// release, or the end of its lease when taken); ok is false when the
// sink holds nothing.
func (s *DB) NextMailRelease(ctx context.Context, sink string) (time.Time, bool, error) {
	var next sql.NullInt64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT MIN(CASE WHEN lease_until > release_at THEN lease_until ELSE release_at END)
		FROM mail_holds WHERE sink = ?`), sink).Scan(&next)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("next mail release: %w", err)
	}
	if !next.Valid {
		return time.Time{}, false, nil
	}
	return fromMS(next.Int64), true, nil
}

// ReleaseMailHolds gives claimed holds back, due again at at; failed
// counts a failed send against each.
func (s *DB) ReleaseMailHolds(ctx context.Context, ids []int64, at time.Time, failed bool) error {
	if len(ids) == 0 {
		return nil
	}
	inc := 0
	if failed {
		inc = 1
	}
	in, args := holdIDs(ids)
	args = append([]any{ms(at), inc}, args...)
	if _, err := s.db.ExecContext(ctx, s.q(`UPDATE mail_holds SET release_at = ?, lease_until = 0, tries = tries + ? WHERE id IN (`+in+`)`), args...); err != nil {
		return fmt.Errorf("release mail holds: %w", err)
	}
	return nil
}

// DeleteMailHolds removes holds that were sent (or given up).
func (s *DB) DeleteMailHolds(ctx context.Context, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	in, args := holdIDs(ids)
	if _, err := s.db.ExecContext(ctx, s.q(`DELETE FROM mail_holds WHERE id IN (`+in+`)`), args...); err != nil {
		return fmt.Errorf("delete mail holds: %w", err)
	}
	return nil
}

func holdIDs(ids []int64) (string, []any) {
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	return strings.TrimSuffix(strings.Repeat("?, ", len(ids)), ", "), args
}
