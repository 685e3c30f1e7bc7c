package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"time"
)

// Session is a dashboard sign-in: made from an API token, it lasts until
// ExpiresAt, sign-out, or the token's revocation, whichever comes first.
type Session struct {
	ID        int64     `json:"id"`
	UserID    int64     `json:"user_id"`
	TokenID   int64     `json:"token_id"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// ErrBadSession is returned for an unknown, expired or revoked session.
var ErrBadSession = errors.New("invalid or expired session")

// maxSessionSecret bounds what SessionUser will hash: a cookie value is
// 43 characters; anything much longer is not one of ours.
const maxSessionSecret = 128

// CreateSession starts a session for the user of a token and returns its
// secret, the cookie value: the only time it is seen. Only its SHA-256 is
// stored. Expired sessions are removed on the way.
func (s *DB) CreateSession(ctx context.Context, userID, tokenID int64, ttl time.Duration) (string, Session, error) {
	if ttl <= 0 {
		return "", Session{}, fmt.Errorf("create session: lifetime must be positive, got %s", ttl)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", Session{}, fmt.Errorf("create session: %w", err)
	}
	plain := base64.RawURLEncoding.EncodeToString(raw[:])
	now := s.now()
	ss := Session{UserID: userID, TokenID: tokenID, CreatedAt: now, ExpiresAt: now.Add(ttl)}
	if _, err := s.db.ExecContext(ctx, s.q(`DELETE FROM sessions WHERE expires_at <= ?`), ms(now)); err != nil {
		return "", Session{}, fmt.Errorf("create session: remove expired: %w", err)
	}
	err := s.db.QueryRowContext(ctx, s.q(`INSERT INTO sessions (hash, user_id, token_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?) RETURNING id`),
		hashToken(plain), userID, tokenID, ms(ss.CreatedAt), ms(ss.ExpiresAt)).Scan(&ss.ID)
	if err != nil {
		return "", Session{}, fmt.Errorf("create session: %w", err)
	}
	return plain, ss, nil
}

// SessionUser returns the user and session a session secret belongs to,
// or ErrBadSession when it is unknown, expired, or its token was revoked.
func (s *DB) SessionUser(ctx context.Context, plain string) (User, Session, error) {
	if plain == "" || len(plain) > maxSessionSecret {
		return User{}, Session{}, ErrBadSession
	}
	var (
		u                  User
		ss                 Session
		ucreated, sc, sexp int64
		revoked            sql.NullInt64
	)
	err := s.db.QueryRowContext(ctx, s.q(`SELECT u.id, u.name, u.is_admin, u.max_channels, u.created_at,
		s.id, s.token_id, s.created_at, s.expires_at, t.revoked_at
		FROM sessions s JOIN users u ON u.id = s.user_id JOIN tokens t ON t.id = s.token_id
		WHERE s.hash = ?`), hashToken(plain)).
		Scan(&u.ID, &u.Name, &u.Admin, &u.MaxChannels, &ucreated, &ss.ID, &ss.TokenID, &sc, &sexp, &revoked)
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, Session{}, ErrBadSession
	}
	if err != nil {
		return User{}, Session{}, fmt.Errorf("session: %w", err)
	}
	u.CreatedAt, ss.UserID, ss.CreatedAt, ss.ExpiresAt = fromMS(ucreated), u.ID, fromMS(sc), fromMS(sexp)
	if revoked.Valid || !s.now().Before(ss.ExpiresAt) {
		return User{}, Session{}, ErrBadSession
	}
	return u, ss, nil
}

// DeleteSession ends the session a secret belongs to. Ending an unknown
// session is not an error: sign-out is idempotent.
func (s *DB) DeleteSession(ctx context.Context, plain string) error {
	if plain == "" || len(plain) > maxSessionSecret {
		return nil
	}
	if _, err := s.db.ExecContext(ctx, s.q(`DELETE FROM sessions WHERE hash = ?`), hashToken(plain)); err != nil {
		return fmt.Errorf("delete session: %w", err)
	}
	return nil
}
