package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

// RunnerTokenPrefix starts every runner token, so that one pasted in the
// wrong place is recognised.
const RunnerTokenPrefix = "bbr_"

// maxRunnerSecret bounds what RunnerByToken will hash.
const maxRunnerSecret = 128

// Errors of the runner protocol.
var (
	// ErrBadRunnerToken is returned for a token no runner has.
	ErrBadRunnerToken = errors.New("unknown runner token")
	// ErrRunnerRevoked is returned for the token of a revoked runner.
	ErrRunnerRevoked = errors.New("runner token revoked")
	// ErrLeaseLost is returned when a runner reports on a build it no
	// longer holds: its lease expired and was taken back, or the lease
	// token is not the current one.
	ErrLeaseLost = errors.New("build lease lost")
)

// Runner is a remote build runner as the store knows it.
type Runner struct {
	ID         int64      `json:"id"`
	Name       string     `json:"name"`
	Labels     []string   `json:"labels"`
	CreatedAt  time.Time  `json:"created_at"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
	LastSeenAt *time.Time `json:"last_seen_at,omitempty"`
}

// Lease is a remote runner's hold on a started build.
type Lease struct {
	BuildID   int64     `json:"build_id"`
	RunnerID  int64     `json:"runner_id"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	// RunnerName is filled in by ExpiredLeases, for the reason it gives.
	RunnerName string `json:"runner_name,omitempty"`
}

// NormalizeLabels trims, lower-cases, de-duplicates and sorts labels, and
// refuses one that is empty or holds a comma or a space.
func NormalizeLabels(in []string) ([]string, error) {
	out := make([]string, 0, len(in))
	for _, l := range in {
		l = strings.ToLower(strings.TrimSpace(l))
		if l == "" {
			continue
		}
		if strings.ContainsAny(l, ", \t\n") || len(l) > 64 {
			return nil, fmt.Errorf("label %q: labels are at most 64 characters, without commas or spaces", l)
		}
		out = append(out, l)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func joinLabels(l []string) string { return strings.Join(l, ",") }

func splitLabels(s string) []string {
	if s == "" {
		return []string{}
	}
	return strings.Split(s, ",")
}

// CreateRunner registers a runner and returns its token in plain text: the
// only time it is seen. Only its SHA-256 is stored.
func (s *DB) CreateRunner(ctx context.Context, name string, labels []string) (string, Runner, error) {
	name = strings.TrimSpace(name)
	if name == "" || len(name) > 100 {
		return "", Runner{}, errors.New("create runner: name must be 1 to 100 characters")
	}
	labels, err := NormalizeLabels(labels)
	if err != nil {
		return "", Runner{}, fmt.Errorf("create runner: %w", err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", Runner{}, fmt.Errorf("create runner: %w", err)
	}
	plain := RunnerTokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:])
	r := Runner{Name: name, Labels: labels, CreatedAt: s.now()}
	err = s.db.QueryRowContext(ctx, s.q(`INSERT INTO runners (name, hash, labels, created_at) VALUES (?, ?, ?, ?) RETURNING id`),
		name, hashToken(plain), joinLabels(labels), ms(r.CreatedAt)).Scan(&r.ID)
	if isUnique(err) {
		return "", Runner{}, fmt.Errorf("runner %q: %w", name, ErrConflict)
	}
	if err != nil {
		return "", Runner{}, fmt.Errorf("create runner: %w", err)
	}
	return plain, r, nil
}

const runnerCols = `id, name, labels, created_at, revoked_at, last_seen_at`

func scanRunner(row interface{ Scan(...any) error }) (Runner, error) {
	var (
		r             Runner
		labels        string
		created       int64
		revoked, seen sql.NullInt64
	)
	if err := row.Scan(&r.ID, &r.Name, &labels, &created, &revoked, &seen); err != nil {
		return r, err
	}
	r.Labels, r.CreatedAt, r.RevokedAt, r.LastSeenAt = splitLabels(labels), fromMS(created), fromNullMS(revoked), fromNullMS(seen)
	return r, nil
}

// Runners lists every runner, revoked ones too, by id.
func (s *DB) Runners(ctx context.Context) ([]Runner, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+runnerCols+` FROM runners ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list runners: %w", err)
	}
	defer rows.Close()
	out := []Runner{}
	for rows.Next() {
		r, err := scanRunner(rows)
		if err != nil {
			return nil, fmt.Errorf("list runners: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// RevokeRunner revokes a runner by id or name: its token is refused from
// now on and its leases end at once, so the reaper hands its builds on.
func (s *DB) RevokeRunner(ctx context.Context, idOrName string) (Runner, error) {
	var r Runner
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		r, err = scanRunner(tx.QueryRowContext(ctx, s.q(`SELECT `+runnerCols+` FROM runners WHERE name = ? OR CAST(id AS TEXT) = ?`), idOrName, idOrName))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("runner %q: %w", idOrName, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if r.RevokedAt != nil {
			return nil
		}
		now := s.now()
		r.RevokedAt = &now
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE runners SET revoked_at = ? WHERE id = ?`), ms(now), r.ID); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, s.q(`UPDATE build_leases SET expires_at = ? WHERE runner_id = ?`), ms(now), r.ID)
		return err
	})
	if err != nil {
		return Runner{}, fmt.Errorf("revoke runner: %w", err)
	}
	return r, nil
}

// RunnerByToken returns the runner a token belongs to, ErrBadRunnerToken
// for an unknown token and ErrRunnerRevoked for a revoked runner. It
// records when the runner was last seen.
func (s *DB) RunnerByToken(ctx context.Context, plain string) (Runner, error) {
	if !strings.HasPrefix(plain, RunnerTokenPrefix) || len(plain) > maxRunnerSecret {
		return Runner{}, ErrBadRunnerToken
	}
	r, err := scanRunner(s.db.QueryRowContext(ctx, s.q(`SELECT `+runnerCols+` FROM runners WHERE hash = ?`), hashToken(plain)))
	if errors.Is(err, sql.ErrNoRows) {
		return Runner{}, ErrBadRunnerToken
	}
	if err != nil {
		return Runner{}, fmt.Errorf("runner by token: %w", err)
	}
	if r.RevokedAt != nil {
		return r, fmt.Errorf("runner %q: %w", r.Name, ErrRunnerRevoked)
	}
	now := s.now()
	if r.LastSeenAt == nil || now.Sub(*r.LastSeenAt) > 5*time.Second {
		if _, err := s.db.ExecContext(ctx, s.q(`UPDATE runners SET last_seen_at = ? WHERE id = ?`), ms(now), r.ID); err != nil {
			return r, fmt.Errorf("runner by token: %w", err)
		}
		r.LastSeenAt = &now
	}
	return r, nil
}

// SetProjectLabels sets the labels a runner needs to run a project's
// builds; none means any runner, the embedded one too.
func (s *DB) SetProjectLabels(ctx context.Context, projectID int64, labels []string) error {
	labels, err := NormalizeLabels(labels)
	if err != nil {
		return fmt.Errorf("project labels: %w", err)
	}
	if len(labels) == 0 {
		_, err = s.db.ExecContext(ctx, s.q(`DELETE FROM project_labels WHERE project_id = ?`), projectID)
	} else {
		_, err = s.db.ExecContext(ctx, s.q(`INSERT INTO project_labels (project_id, labels) VALUES (?, ?)
			ON CONFLICT (project_id) DO UPDATE SET labels = excluded.labels`), projectID, joinLabels(labels))
	}
	if err != nil {
		return fmt.Errorf("project %d labels: %w", projectID, err)
	}
	return nil
}

// ProjectLabels returns the labels a project's builds need.
func (s *DB) ProjectLabels(ctx context.Context, projectID int64) ([]string, error) {
	var l string
	err := s.db.QueryRowContext(ctx, s.q(`SELECT labels FROM project_labels WHERE project_id = ?`), projectID).Scan(&l)
	if errors.Is(err, sql.ErrNoRows) {
		return []string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("project %d labels: %w", projectID, err)
	}
	return splitLabels(l), nil
}

// claimWindow is how many of the oldest queued builds a runner's claim
// looks through for one whose labels it has.
const claimWindow = 50

// ClaimForRunner moves the oldest queued build whose required labels the
// runner has (labels as NormalizeLabels returns them) to STARTED and gives
// the runner a lease on it until now+ttl. A runner without labels takes
// only builds that need none. It returns ErrNotFound when there is none.
func (s *DB) ClaimForRunner(ctx context.Context, runnerID int64, labels []string, ttl time.Duration) (builds.Build, Lease, error) {
	if ttl <= 0 {
		return builds.Build{}, Lease{}, fmt.Errorf("claim build: lease ttl must be positive, got %s", ttl)
	}
	var (
		b     builds.Build
		lease Lease
	)
	// An idle runner polls every second: a plain read answers "nothing
	// queued" instead of the claim's transaction (and, with many runners
	// polling at once, the savepoints of a shared commit).
	if queued, err := s.anyQueued(ctx, len(labels) == 0); err != nil || !queued {
		if err == nil {
			err = ErrNotFound
		}
		return builds.Build{}, Lease{}, err
	}
	err := s.groupTx(ctx, func(tx *sql.Tx) error {
		// A runner without labels takes only builds that need none: one
		// row to look at (and lock) instead of a window. The state and
		// the window are in the text, not bound: see queuedCond.
		window := claimWindow
		query := `SELECT b.id, COALESCE(pl.labels, '') FROM builds b LEFT JOIN project_labels pl ON pl.project_id = b.project_id
			WHERE b.` + queuedCond
		if len(labels) == 0 {
			query += ` AND pl.project_id IS NULL`
			window = 1
		}
		query += ` ORDER BY b.id LIMIT ` + strconv.Itoa(window)
		if s.postgres {
			query += ` FOR UPDATE OF b SKIP LOCKED`
		}
		rows, err := tx.QueryContext(ctx, query)
		if err != nil {
			return fmt.Errorf("claim build: %w", err)
		}
		id := int64(0)
		for rows.Next() {
			var cand int64
			var need string
			if err := rows.Scan(&cand, &need); err != nil {
				rows.Close()
				return fmt.Errorf("claim build: %w", err)
			}
			if id == 0 && hasLabels(labels, splitLabels(need)) {
				id = cand
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("claim build: %w", err)
		}
		if id == 0 {
			return ErrNotFound
		}
		b, err = s.transitionTx(ctx, tx, id, builds.Started, nil)
		if err != nil {
			return err
		}
		lease, err = newLease(b.ID, runnerID, s.now().Add(ttl))
		if err != nil {
			return err
		}
		_, err = s.prepared(tx, ctx).Exec(`INSERT INTO build_leases (build_id, runner_id, token, expires_at) VALUES (?, ?, ?, ?)
			ON CONFLICT (build_id) DO UPDATE SET runner_id = excluded.runner_id, token = excluded.token, expires_at = excluded.expires_at`,
			lease.BuildID, lease.RunnerID, lease.Token, ms(lease.ExpiresAt))
		if err != nil {
			return fmt.Errorf("write lease: %w", err)
		}
		return nil
	})
	if err != nil {
		return builds.Build{}, Lease{}, err
	}
	s.notifyOutbox()
	return b, lease, nil
}

func newLease(buildID, runnerID int64, expires time.Time) (Lease, error) {
	var raw [18]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return Lease{}, fmt.Errorf("lease token: %w", err)
	}
	return Lease{BuildID: buildID, RunnerID: runnerID, Token: base64.RawURLEncoding.EncodeToString(raw[:]), ExpiresAt: expires}, nil
}

// hasLabels reports whether have (sorted) holds every label of need.
func hasLabels(have, need []string) bool {
	for _, l := range need {
		if _, ok := slices.BinarySearch(have, l); !ok {
			return false
		}
	}
	return true
}

// RenewLease extends a lease to now+ttl and reports whether a cancel was
// requested for the build. It returns ErrLeaseLost when the token is not
// the build's current lease or the lease has already expired: a late
// runner does not get its build back.
func (s *DB) RenewLease(ctx context.Context, buildID int64, token string, ttl time.Duration) (cancelRequested bool, err error) {
	now := s.now()
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE build_leases SET expires_at = ? WHERE build_id = ? AND token = ? AND expires_at > ?`),
		ms(now.Add(ttl)), buildID, token, ms(now))
	if err != nil {
		return false, fmt.Errorf("renew lease of build %d: %w", buildID, err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return false, fmt.Errorf("build %d: %w", buildID, ErrLeaseLost)
	}
	b, err := s.Build(ctx, buildID)
	if err != nil {
		return false, err
	}
	return b.CancelRequested, nil
}

// CheckLease returns ErrLeaseLost unless token is the build's current,
// unexpired lease.
func (s *DB) CheckLease(ctx context.Context, buildID int64, token string) error {
	var n int
	err := s.db.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM build_leases WHERE build_id = ? AND token = ? AND expires_at > ?`),
		buildID, token, ms(s.now())).Scan(&n)
	if err != nil {
		return fmt.Errorf("check lease of build %d: %w", buildID, err)
	}
	if n != 1 {
		return fmt.Errorf("build %d: %w", buildID, ErrLeaseLost)
	}
	return nil
}

// FinishLeased records how a leased build ended: its artifacts, its
// FINISHED transition and the end of the lease, in one transaction that
// fails with ErrLeaseLost unless token is still the build's lease.
func (s *DB) FinishLeased(ctx context.Context, buildID int64, token string, result builds.Result, reason string, arts []Artifact) (builds.Build, error) {
	if !result.Valid() {
		return builds.Build{}, fmt.Errorf("finish build %d: result %q is not one of passed, failed, errored, canceled", buildID, result)
	}
	var b builds.Build
	err := s.groupTx(ctx, func(tx *sql.Tx) error {
		res, err := s.prepared(tx, ctx).Exec(`DELETE FROM build_leases WHERE build_id = ? AND token = ? AND expires_at > ?`, buildID, token, ms(s.now()))
		if err != nil {
			return fmt.Errorf("end lease: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("build %d: %w", buildID, ErrLeaseLost)
		}
		for _, a := range arts {
			if _, err := s.prepared(tx, ctx).Exec(`INSERT INTO artifacts (build_id, path, size, sha256) VALUES (?, ?, ?, ?)
				ON CONFLICT (build_id, path) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256`,
				buildID, a.Path, a.Size, a.SHA256); err != nil {
				return fmt.Errorf("add artifact %q: %w", a.Path, err)
			}
		}
		b, err = s.transitionTx(ctx, tx, buildID, builds.Finished, func(fb *builds.Build) error {
			fb.Result, fb.Reason = result, reason
			if result == builds.Canceled && fb.Reason == "" {
				fb.Reason = "canceled"
			}
			return nil
		})
		return err
	})
	if err != nil {
		return builds.Build{}, err
	}
	s.notifyOutbox()
	return b, nil
}

// ExpiredLeases lists leases that ended before now, oldest first.
func (s *DB) ExpiredLeases(ctx context.Context, limit int) ([]Lease, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT l.build_id, l.runner_id, l.token, l.expires_at, r.name FROM build_leases l JOIN runners r ON r.id = l.runner_id
		WHERE l.expires_at <= ? ORDER BY l.expires_at LIMIT ?`),
		ms(s.now()), limit)
	if err != nil {
		return nil, fmt.Errorf("expired leases: %w", err)
	}
	defer rows.Close()
	var out []Lease
	for rows.Next() {
		var l Lease
		var exp int64
		if err := rows.Scan(&l.BuildID, &l.RunnerID, &l.Token, &exp, &l.RunnerName); err != nil {
			return nil, fmt.Errorf("expired leases: %w", err)
		}
		l.ExpiresAt = fromMS(exp)
		out = append(out, l)
	}
	return out, rows.Err()
}

// ReclaimLease takes an expired lease back: the build is re-queued when
// requeue is set, otherwise finished as errored with reason; the lease row
// goes in the same transaction. It returns ErrLeaseLost when the lease was
// renewed, finished or reclaimed meanwhile.
func (s *DB) ReclaimLease(ctx context.Context, l Lease, requeue bool, reason string) (builds.Build, error) {
	var b builds.Build
	err := s.groupTx(ctx, func(tx *sql.Tx) error {
		res, err := s.prepared(tx, ctx).Exec(`DELETE FROM build_leases WHERE build_id = ? AND token = ? AND expires_at <= ?`, l.BuildID, l.Token, ms(s.now()))
		if err != nil {
			return fmt.Errorf("end lease: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("build %d: %w", l.BuildID, ErrLeaseLost)
		}
		// A build finished some other way keeps its end; only the lease goes.
		cur, err := scanBuild(s.prepared(tx, ctx).QueryRow(`SELECT `+buildCols+` FROM builds b WHERE b.id = ?`, l.BuildID))
		if err != nil {
			return fmt.Errorf("build %d: %w", l.BuildID, err)
		}
		if cur.State != builds.Started {
			b = cur
			return nil
		}
		if requeue {
			b, err = s.transitionTx(ctx, tx, l.BuildID, builds.Queued, func(qb *builds.Build) error {
				qb.Reason = reason
				return nil
			})
		} else {
			b, err = s.transitionTx(ctx, tx, l.BuildID, builds.Finished, func(fb *builds.Build) error {
				fb.Result, fb.Reason = builds.Errored, reason
				return nil
			})
		}
		return err
	})
	if err != nil {
		return builds.Build{}, fmt.Errorf("reclaim lease: %w", err)
	}
	s.notifyOutbox()
	return b, nil
}

// WaitingForLabels counts queued builds that need labels, by their
// comma-separated label set.
func (s *DB) WaitingForLabels(ctx context.Context) (map[string]int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT pl.labels, COUNT(*) FROM builds b JOIN project_labels pl ON pl.project_id = b.project_id
		WHERE b.`+queuedCond+` GROUP BY pl.labels`)
	if err != nil {
		return nil, fmt.Errorf("builds waiting for labels: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var l string
		var n int
		if err := rows.Scan(&l, &n); err != nil {
			return nil, err
		}
		out[l] = n
	}
	return out, rows.Err()
}

// LeaseOf returns the lease a remote runner holds on a build, and the
// runner's name, or ErrNotFound.
func (s *DB) LeaseOf(ctx context.Context, buildID int64) (Lease, string, error) {
	var (
		l    Lease
		name string
		exp  int64
	)
	err := s.db.QueryRowContext(ctx, s.q(`SELECT l.build_id, l.runner_id, l.expires_at, r.name FROM build_leases l JOIN runners r ON r.id = l.runner_id WHERE l.build_id = ?`),
		buildID).Scan(&l.BuildID, &l.RunnerID, &exp, &name)
	if errors.Is(err, sql.ErrNoRows) {
		return l, "", fmt.Errorf("lease of build %d: %w", buildID, ErrNotFound)
	}
	if err != nil {
		return l, "", fmt.Errorf("lease of build %d: %w", buildID, err)
	}
	l.ExpiresAt = fromMS(exp)
	return l, name, nil
}
