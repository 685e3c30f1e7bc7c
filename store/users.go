package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// User is an account. Admins see every project.
type User struct {
	ID    int64  `json:"id"`
	Name  string `json:"name"`
	Admin bool   `json:"admin"`
	// MaxChannels overrides the server's open-channel limit when > 0.
	MaxChannels int       `json:"max_channels,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
}

// Token is an API token's metadata; the secret itself is never stored.
type Token struct {
	ID        int64      `json:"id"`
	UserID    int64      `json:"user_id"`
	Name      string     `json:"name"`
	Prefix    string     `json:"prefix"`
	CreatedAt time.Time  `json:"created_at"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

// TokenPrefix starts every API token, so a leaked one is recognisable.
const TokenPrefix = "bb_"

// ErrBadToken is returned for an unknown, malformed or revoked token.
var ErrBadToken = errors.New("invalid or revoked token")

// ValidUserName reports whether name can name a user: 1–64 letters,
// digits, '-', '_' or '.'.
func ValidUserName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("user name must be 1 to 64 characters")
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("user name %q may only hold letters, digits, '-', '_' and '.'", name)
		}
	}
	return nil
}

// CreateUser adds a user.
func (s *DB) CreateUser(ctx context.Context, name string, admin bool) (User, error) {
	if err := ValidUserName(name); err != nil {
		return User{}, err
	}
	u := User{Name: name, Admin: admin, CreatedAt: s.now()}
	err := s.db.QueryRowContext(ctx, s.q(`INSERT INTO users (name, is_admin, created_at) VALUES (?, ?, ?) RETURNING id`),
		name, admin, ms(u.CreatedAt)).Scan(&u.ID)
	if isUnique(err) {
		return User{}, fmt.Errorf("user %q: %w", name, ErrConflict)
	}
	if err != nil {
		return User{}, fmt.Errorf("create user %q: %w", name, err)
	}
	return u, nil
}

const userCols = `id, name, is_admin, max_channels, created_at`

func scanUser(row interface{ Scan(...any) error }) (User, error) {
	var u User
	var created int64
	err := row.Scan(&u.ID, &u.Name, &u.Admin, &u.MaxChannels, &created)
	u.CreatedAt = fromMS(created)
	return u, err
}

// UserByName looks a user up by name.
func (s *DB) UserByName(ctx context.Context, name string) (User, error) {
	u, err := scanUser(s.db.QueryRowContext(ctx, s.q(`SELECT `+userCols+` FROM users WHERE name = ?`), name))
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, fmt.Errorf("user %q: %w", name, ErrNotFound)
	}
	return u, err
}

// UserByID looks a user up by id.
func (s *DB) UserByID(ctx context.Context, id int64) (User, error) {
	u, err := scanUser(s.db.QueryRowContext(ctx, s.q(`SELECT `+userCols+` FROM users WHERE id = ?`), id))
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, fmt.Errorf("user %d: %w", id, ErrNotFound)
	}
	return u, err
}

// ListUsers lists every user by id.
func (s *DB) ListUsers(ctx context.Context) ([]User, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+userCols+` FROM users ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	defer rows.Close()
	var out []User
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, fmt.Errorf("list users: %w", err)
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// CountUsers returns how many users exist.
func (s *DB) CountUsers(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM users`).Scan(&n)
	return n, err
}

// SetUserMaxChannels sets a user's open-channel limit (0: server default).
func (s *DB) SetUserMaxChannels(ctx context.Context, userID int64, n int) error {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE users SET max_channels = ? WHERE id = ?`), n, userID)
	if err != nil {
		return fmt.Errorf("set max channels: %w", err)
	}
	if k, _ := res.RowsAffected(); k == 0 {
		return fmt.Errorf("user %d: %w", userID, ErrNotFound)
	}
	return nil
}

func hashToken(plain string) string {
	sum := sha256.Sum256([]byte(plain))
	return hex.EncodeToString(sum[:])
}

// CreateToken makes a new API token for a user and returns it in plain
// text: the only time it is ever seen. Only its SHA-256 is stored.
func (s *DB) CreateToken(ctx context.Context, userID int64, name string) (string, Token, error) {
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", Token{}, fmt.Errorf("create token: %w", err)
	}
	plain := TokenPrefix + hex.EncodeToString(raw[:])
	if name == "" {
		name = "default"
	}
	t := Token{UserID: userID, Name: name, Prefix: plain[:len(TokenPrefix)+6], CreatedAt: s.now()}
	err := s.db.QueryRowContext(ctx, s.q(`INSERT INTO tokens (user_id, name, prefix, hash, created_at) VALUES (?, ?, ?, ?, ?) RETURNING id`),
		userID, name, t.Prefix, hashToken(plain), ms(t.CreatedAt)).Scan(&t.ID)
	if err != nil {
		if strings.Contains(err.Error(), "FOREIGN KEY") || strings.Contains(err.Error(), "23503") {
			return "", Token{}, fmt.Errorf("user %d: %w", userID, ErrNotFound)
		}
		return "", Token{}, fmt.Errorf("create token: %w", err)
	}
	return plain, t, nil
}

// ListTokens lists a user's tokens, revoked ones included.
func (s *DB) ListTokens(ctx context.Context, userID int64) ([]Token, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT id, user_id, name, prefix, created_at, revoked_at FROM tokens WHERE user_id = ? ORDER BY id`), userID)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	defer rows.Close()
	var out []Token
	for rows.Next() {
		var t Token
		var created int64
		var revoked sql.NullInt64
		if err := rows.Scan(&t.ID, &t.UserID, &t.Name, &t.Prefix, &created, &revoked); err != nil {
			return nil, fmt.Errorf("list tokens: %w", err)
		}
		t.CreatedAt, t.RevokedAt = fromMS(created), fromNullMS(revoked)
		out = append(out, t)
	}
	return out, rows.Err()
}

// RevokeToken revokes one of a user's tokens; it stops working at once.
func (s *DB) RevokeToken(ctx context.Context, userID, tokenID int64) error {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE tokens SET revoked_at = ? WHERE id = ? AND user_id = ? AND revoked_at IS NULL`),
		ms(s.now()), tokenID, userID)
	if err != nil {
		return fmt.Errorf("revoke token: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("token %d of user %d: %w", tokenID, userID, ErrNotFound)
	}
	return nil
}

// Authenticate returns the user a plain token belongs to, or ErrBadToken.
func (s *DB) Authenticate(ctx context.Context, plain string) (User, Token, error) {
	if !strings.HasPrefix(plain, TokenPrefix) || len(plain) > 128 {
		return User{}, Token{}, ErrBadToken
	}
	want := hashToken(plain)
	var (
		u       User
		t       Token
		hash    string
		created int64
		tcreat  int64
		revoked sql.NullInt64
	)
	err := s.db.QueryRowContext(ctx, s.q(`SELECT u.id, u.name, u.is_admin, u.max_channels, u.created_at,
		t.id, t.name, t.prefix, t.hash, t.created_at, t.revoked_at
		FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.hash = ?`), want).
		Scan(&u.ID, &u.Name, &u.Admin, &u.MaxChannels, &created, &t.ID, &t.Name, &t.Prefix, &hash, &tcreat, &revoked)
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, Token{}, ErrBadToken
	}
	if err != nil {
		return User{}, Token{}, fmt.Errorf("authenticate: %w", err)
	}
	// The lookup already matched on the hash; the constant-time compare
	// keeps the check itself free of timing differences.
	if subtle.ConstantTimeCompare([]byte(hash), []byte(want)) != 1 || revoked.Valid {
		return User{}, Token{}, ErrBadToken
	}
	u.CreatedAt, t.CreatedAt, t.UserID = fromMS(created), fromMS(tcreat), u.ID
	return u, t, nil
}
