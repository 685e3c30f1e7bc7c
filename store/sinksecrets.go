package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// SinkSecret is the signing secret the hub generated for a webhook sink
// whose rules give none, and, during a rotation, the previous one, which
// keeps signing until PreviousExpiresAt.
type SinkSecret struct {
	Sink   string
	Secret string
	// Previous is empty when no rotation is in its grace period.
	Previous          string
	PreviousExpiresAt time.Time
	// CreatedAt is when Secret was made (generated or rotated in).
	CreatedAt time.Time
	// ShownAt is when Secret was handed out through the API; zero while
	// it never was. A secret is shown once.
	ShownAt time.Time
}

// Valid returns the secrets that sign at time now: the current one, then
// the previous one while its grace period lasts.
func (w SinkSecret) Valid(now time.Time) []string {
	return validSecrets(w.Secret, w.Previous, w.PreviousExpiresAt, now)
}

const sinkSecretColumns = `sink, secret, previous_secret, previous_expires_at, created_at, shown_at`

func scanSinkSecret(row interface{ Scan(...any) error }) (SinkSecret, error) {
	var (
		w                       SinkSecret
		expires, created, shown int64
	)
	if err := row.Scan(&w.Sink, &w.Secret, &w.Previous, &expires, &created, &shown); err != nil {
		return w, err
	}
	if w.Previous != "" && expires > 0 {
		w.PreviousExpiresAt = fromMS(expires)
	} else {
		w.Previous = ""
	}
	w.CreatedAt = fromMS(created)
	if shown > 0 {
		w.ShownAt = fromMS(shown)
	}
	return w, nil
}

// SinkSecret returns the stored secret of a sink, or an error wrapping
// ErrNotFound.
func (s *DB) SinkSecret(ctx context.Context, sink string) (SinkSecret, error) {
	w, err := scanSinkSecret(s.db.QueryRowContext(ctx, s.q(`SELECT `+sinkSecretColumns+` FROM sink_secrets WHERE sink = ?`), sink))
	if errors.Is(err, sql.ErrNoRows) {
		return w, fmt.Errorf("secret of sink %q: %w", sink, ErrNotFound)
	}
	if err != nil {
		return w, fmt.Errorf("secret of sink %q: %w", sink, err)
	}
	return w, nil
}

// CreateSinkSecret stores secret as the sink's secret unless the sink
// already has one. It returns the stored secret and whether this call
// stored it: nodes that load the same rules at the same moment each
// propose a secret, and all of them end up signing with the one that was
// stored first.
func (s *DB) CreateSinkSecret(ctx context.Context, sink, secret string) (SinkSecret, bool, error) {
	if sink == "" || secret == "" {
		return SinkSecret{}, false, errors.New("create sink secret: empty sink name or secret")
	}
	res, err := s.db.ExecContext(ctx, s.q(`INSERT INTO sink_secrets (sink, secret, created_at) VALUES (?, ?, ?)
		ON CONFLICT (sink) DO NOTHING`), sink, secret, ms(s.now()))
	if err != nil {
		return SinkSecret{}, false, fmt.Errorf("create secret of sink %q: %w", sink, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return SinkSecret{}, false, fmt.Errorf("create secret of sink %q: %w", sink, err)
	}
	w, err := s.SinkSecret(ctx, sink)
	return w, n == 1, err
}

// ShowSinkSecret hands out a sink's secret through the API, once: a
// secret never shown is returned as it is (and is shown from then on);
// a secret already shown is replaced by next, and keeps signing for
// grace (none when grace is 0) so that receivers can switch without
// refusing a delivery. A secret still in an earlier grace period is
// dropped, so at most two sign at once. A sink without a stored secret
// gets next. replaced reports that next replaced a secret.
func (s *DB) ShowSinkSecret(ctx context.Context, sink, next string, grace time.Duration) (w SinkSecret, replaced bool, err error) {
	if sink == "" || next == "" {
		return SinkSecret{}, false, errors.New("show sink secret: empty sink name or secret")
	}
	if grace < 0 {
		return SinkSecret{}, false, fmt.Errorf("show sink secret: negative grace %s", grace)
	}
	now := s.now()
	err = s.tx(ctx, func(tx *sql.Tx) error {
		lock := ""
		if s.postgres {
			lock = " FOR UPDATE"
		}
		old, err := scanSinkSecret(tx.QueryRowContext(ctx, s.q(`SELECT `+sinkSecretColumns+` FROM sink_secrets WHERE sink = ?`+lock), sink))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			w = SinkSecret{Sink: sink, Secret: next, CreatedAt: now, ShownAt: now}
			_, err = tx.ExecContext(ctx, s.q(`INSERT INTO sink_secrets (sink, secret, created_at, shown_at) VALUES (?, ?, ?, ?)`),
				sink, next, ms(now), ms(now))
			return err
		case err != nil:
			return err
		case old.ShownAt.IsZero():
			w = old
			w.ShownAt = now
			_, err = tx.ExecContext(ctx, s.q(`UPDATE sink_secrets SET shown_at = ? WHERE sink = ?`), ms(now), sink)
			return err
		}
		w, replaced = SinkSecret{Sink: sink, Secret: next, CreatedAt: now, ShownAt: now}, true
		var expires int64
		if grace > 0 {
			w.Previous, w.PreviousExpiresAt = old.Secret, now.Add(grace)
			expires = ms(w.PreviousExpiresAt)
		}
		_, err = tx.ExecContext(ctx, s.q(`UPDATE sink_secrets SET secret = ?, previous_secret = ?, previous_expires_at = ?, created_at = ?, shown_at = ?
			WHERE sink = ?`), next, w.Previous, expires, ms(now), ms(now), sink)
		return err
	})
	if err != nil {
		return SinkSecret{}, false, fmt.Errorf("show secret of sink %q: %w", sink, err)
	}
	return w, replaced, nil
}
