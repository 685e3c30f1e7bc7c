package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

// WebhookSecret is a project's webhook secret and, during a rotation, the
// previous one, which keeps verifying until PreviousExpiresAt.
type WebhookSecret struct {
	ProjectID int64
	Secret    string
	// Previous is empty when no rotation is in its grace period.
	Previous          string
	PreviousExpiresAt time.Time
	CreatedAt         time.Time
}

// Valid returns the secrets that verify a delivery at time now: the current
// one, then the previous one while its grace period lasts.
func (w WebhookSecret) Valid(now time.Time) []string {
	return validSecrets(w.Secret, w.Previous, w.PreviousExpiresAt, now)
}

// validSecrets is the current secret, then the previous one until it
// expires: what a rotation with a grace period accepts or signs with.
func validSecrets(current, previous string, expires, now time.Time) []string {
	var out []string
	if current != "" {
		out = append(out, current)
	}
	if previous != "" && now.Before(expires) {
		out = append(out, previous)
	}
	return out
}

// RotateWebhookSecret makes secret the project's webhook secret. The secret
// it replaces keeps verifying for grace (none when grace is 0); a secret
// still in an earlier grace period is dropped, so at most two verify at
// once. Secrets are stored as given: verifying an HMAC needs them.
func (s *DB) RotateWebhookSecret(ctx context.Context, projectID int64, secret string, grace time.Duration) (WebhookSecret, error) {
	if secret == "" {
		return WebhookSecret{}, errors.New("rotate webhook secret: empty secret")
	}
	if grace < 0 {
		return WebhookSecret{}, fmt.Errorf("rotate webhook secret: negative grace %s", grace)
	}
	w := WebhookSecret{ProjectID: projectID, Secret: secret, CreatedAt: s.now()}
	defer s.webhooks.clear()
	err := s.tx(ctx, func(tx *sql.Tx) error {
		lock := ""
		if s.postgres {
			lock = " FOR UPDATE"
		}
		var old string
		err := tx.QueryRowContext(ctx, s.q(`SELECT secret FROM webhook_secrets WHERE project_id = ?`+lock), projectID).Scan(&old)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			_, err = tx.ExecContext(ctx, s.q(`INSERT INTO webhook_secrets (project_id, secret, created_at) VALUES (?, ?, ?)`),
				projectID, secret, ms(w.CreatedAt))
			if err != nil && (strings.Contains(err.Error(), "FOREIGN KEY") || strings.Contains(err.Error(), "23503")) {
				return fmt.Errorf("project %d: %w", projectID, ErrNotFound)
			}
			return err
		case err != nil:
			return err
		}
		var expires int64
		if grace > 0 {
			w.Previous, w.PreviousExpiresAt = old, w.CreatedAt.Add(grace)
			expires = ms(w.PreviousExpiresAt)
		}
		_, err = tx.ExecContext(ctx, s.q(`UPDATE webhook_secrets SET secret = ?, previous_secret = ?, previous_expires_at = ?, created_at = ? WHERE project_id = ?`),
			secret, w.Previous, expires, ms(w.CreatedAt), projectID)
		return err
	})
	if err != nil {
		return WebhookSecret{}, fmt.Errorf("rotate webhook secret: %w", err)
	}
	return w, nil
}

// rowScanner adds destinations after those a scan function fills, so the
// project scanner serves queries that select more columns.
type rowScanner struct {
	row   interface{ Scan(...any) error }
	extra []any
}

func (r rowScanner) Scan(dest ...any) error { return r.row.Scan(append(dest, r.extra...)...) }

const projectWebhookQuery = `SELECT p.id, p.name, p.owner_id, p.repo, p.default_branch, p.steps, p.timeout_ms, p.settings, p.created_at, p.updated_at,
	w.secret, w.previous_secret, w.previous_expires_at, w.created_at
	FROM projects p LEFT JOIN webhook_secrets w ON w.project_id = p.id WHERE p.name = ?`

// ProjectWebhook returns a project by name with its webhook secret (an
// empty Secret when none was ever created), in one query: webhooks look
// both up on every delivery. Answers are reused for up to
// Config.WebhookCacheTTL (see webhookCache); callers must not modify the
// project's slices.
func (s *DB) ProjectWebhook(ctx context.Context, name string) (builds.Project, WebhookSecret, error) {
	now := s.now()
	e, gen, ok := s.webhooks.get(name, now)
	if ok {
		return e.project, e.secret, nil
	}
	p, w, err := s.projectWebhook(ctx, name)
	if err == nil {
		s.webhooks.put(name, gen, webhookEntry{project: p, secret: w, at: now})
	}
	return p, w, err
}

func (s *DB) projectWebhook(ctx context.Context, name string) (builds.Project, WebhookSecret, error) {
	var (
		w                WebhookSecret
		expires, created sql.NullInt64
		secret, previous sql.NullString
	)
	var row *sql.Row
	if st := s.stmt(projectWebhookQuery); st != nil {
		row = st.QueryRowContext(ctx, name)
	} else {
		row = s.db.QueryRowContext(ctx, s.q(projectWebhookQuery), name)
	}
	p, err := scanProject(rowScanner{row: row, extra: []any{&secret, &previous, &expires, &created}})
	if errors.Is(err, sql.ErrNoRows) {
		return p, w, fmt.Errorf("project %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return p, w, fmt.Errorf("project %q: %w", name, err)
	}
	w.ProjectID, w.Secret, w.Previous = p.ID, secret.String, previous.String
	if expires.Int64 > 0 {
		w.PreviousExpiresAt = fromMS(expires.Int64)
	}
	if created.Valid {
		w.CreatedAt = fromMS(created.Int64)
	}
	return p, w, nil
}

// Delivery names one incoming push for de-duplication: the same ID from
// the same source for the same project is ingested once.
type Delivery struct {
	ProjectID int64
	// Source is where the push came from: "git", "github", "gitlab", "gitea".
	Source string
	// ID is the forge's delivery id or the hook's idempotency key; empty
	// means the push cannot be told apart from a redelivery and is not
	// de-duplicated.
	ID string
}

// PushBuild is a build a push asks for, with the push metadata that
// builds.Build does not carry (yet): it is kept in the builds table.
type PushBuild struct {
	NewBuild
	CompareURL string
	Pusher     string
}

// PushOutcome is what IngestPush did.
type PushOutcome struct {
	// Duplicate is true when the delivery was ingested before; nothing
	// was written.
	Duplicate bool
	// Builds are the builds queued, in the order asked.
	Builds []builds.Build
	// Superseded are the queued builds that the new ones canceled.
	Superseded []builds.Build
}

// IngestPush records a delivery and queues its builds in one transaction:
// either the delivery is recorded with all its builds, or nothing is. A
// delivery already recorded is reported as Duplicate and queues nothing.
// With supersede, each new build of a branch cancels the builds of that
// branch that are still queued.
func (s *DB) IngestPush(ctx context.Context, d Delivery, reqs []PushBuild, supersede bool) (PushOutcome, error) {
	outs, errs, err := s.IngestPushes(ctx, []PushRequest{{Delivery: d, Builds: reqs, Supersede: supersede}})
	if err != nil {
		return PushOutcome{}, err
	}
	return outs[0], errs[0]
}

// PushRequest is one delivery with the builds it asks for.
type PushRequest struct {
	Delivery  Delivery
	Builds    []PushBuild
	Supersede bool
}

// IngestPushes is IngestPush for several deliveries in one transaction
// (group commit: one commit, one write of the shared pages, for a burst
// of webhooks). When one delivery fails (its project was deleted
// meanwhile, …), the transaction is rolled back and each delivery is
// committed on its own, so only that one gets its error in errs[i]. err
// reports a failure that hit them all; then nothing was committed.
func (s *DB) IngestPushes(ctx context.Context, reqs []PushRequest) (outs []PushOutcome, errs []error, err error) {
	outs, errs = make([]PushOutcome, len(reqs)), make([]error, len(reqs))
	// Savepoints would isolate a failing delivery inside the batch, but
	// SQLite writes every page a savepoint touches to a statement journal
	// first: a retry of the rare failed batch is cheaper.
	err = s.tx(ctx, func(tx *sql.Tx) error {
		for i, r := range reqs {
			out, err := s.ingestTx(ctx, tx, r)
			if err != nil {
				return err
			}
			outs[i] = out
		}
		return nil
	})
	if err != nil && len(reqs) > 1 && ctx.Err() == nil {
		for i, r := range reqs {
			outs[i], errs[i] = s.IngestPush(ctx, r.Delivery, r.Builds, r.Supersede)
		}
		return outs, errs, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("ingest push: %w", err)
	}
	for _, o := range outs {
		if len(o.Builds) > 0 || len(o.Superseded) > 0 {
			s.notifyOutbox()
			break
		}
	}
	return outs, errs, nil
}

// ingestTx records one delivery and queues its builds inside tx.
func (s *DB) ingestTx(ctx context.Context, tx *sql.Tx, r PushRequest) (PushOutcome, error) {
	var out PushOutcome
	d := r.Delivery
	if d.ID != "" {
		res, err := s.prepared(tx, ctx).Exec(`INSERT INTO source_deliveries (project_id, source, delivery_id, created_at) VALUES (?, ?, ?, ?)
			ON CONFLICT DO NOTHING`, d.ProjectID, d.Source, d.ID, ms(s.now()))
		if err != nil {
			if strings.Contains(err.Error(), "FOREIGN KEY") || strings.Contains(err.Error(), "23503") {
				return out, fmt.Errorf("project %d: %w", d.ProjectID, ErrNotFound)
			}
			return out, fmt.Errorf("record delivery: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return out, fmt.Errorf("record delivery: %w", err)
		} else if n == 0 {
			out.Duplicate = true
			return out, nil
		}
	}
	for _, b := range r.Builds {
		if b.ProjectID != d.ProjectID {
			return out, fmt.Errorf("build for project %d in a delivery to project %d", b.ProjectID, d.ProjectID)
		}
		nb, err := s.createBuildTx(ctx, tx, b)
		if err != nil {
			return out, err
		}
		out.Builds = append(out.Builds, nb)
		if !r.Supersede || nb.Branch == "" {
			continue
		}
		old, err := s.supersedeTx(ctx, tx, nb)
		if err != nil {
			return out, err
		}
		out.Superseded = append(out.Superseded, old...)
	}
	return out, nil
}

// createBuildTx queues a build inside the caller's transaction, with the
// push metadata columns; CreateBuild uses it too.
func (s *DB) createBuildTx(ctx context.Context, tx *sql.Tx, nb PushBuild) (builds.Build, error) {
	var (
		b    builds.Build
		proj builds.ProjectRef
	)
	err := s.prepared(tx, ctx).QueryRow(`UPDATE projects SET last_number = last_number + 1 WHERE id = ? RETURNING id, name, owner_id, last_number`,
		nb.ProjectID).Scan(&proj.ID, &proj.Name, &proj.OwnerID, &b.Number)
	if errors.Is(err, sql.ErrNoRows) {
		return b, fmt.Errorf("project %d: %w", nb.ProjectID, ErrNotFound)
	}
	if err != nil {
		return b, fmt.Errorf("number build: %w", err)
	}
	b.ProjectID, b.State, b.Ref, b.Branch, b.SHA = nb.ProjectID, builds.Queued, nb.Ref, nb.Branch, nb.SHA
	b.Author, b.AuthorEmail, b.Message, b.TriggeredBy = nb.Author, nb.AuthorEmail, nb.Message, nb.TriggeredBy
	b.CreatedAt = s.now()
	err = s.prepared(tx, ctx).QueryRow(`INSERT INTO builds (project_id, number, state, ref, branch, sha, author, author_email, message, triggered_by, created_at, compare_url, pusher)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
		b.ProjectID, b.Number, b.State, b.Ref, b.Branch, b.SHA, b.Author, b.AuthorEmail, b.Message, b.TriggeredBy, ms(b.CreatedAt),
		nb.CompareURL, nb.Pusher).Scan(&b.ID)
	if err != nil {
		return b, fmt.Errorf("insert build: %w", err)
	}
	b.CompareURL, b.Pusher = nb.CompareURL, nb.Pusher
	return b, s.recordTransition(ctx, tx, "", b, proj)
}

// supersedeTx cancels the queued builds of b's branch older than b.
func (s *DB) supersedeTx(ctx context.Context, tx *sql.Tx, b builds.Build) ([]builds.Build, error) {
	// On PostgreSQL the rows are locked first: a runner claiming one of
	// them at the same moment either wins (the row no longer matches
	// state = QUEUED when the lock is granted) or skips it.
	lock := ""
	if s.postgres {
		lock = " FOR UPDATE"
	}
	rows, err := tx.QueryContext(ctx, s.q(`SELECT id FROM builds WHERE project_id = ? AND branch = ? AND `+queuedCond+` AND id < ? ORDER BY id`+lock),
		b.ProjectID, b.Branch, b.ID)
	if err != nil {
		return nil, fmt.Errorf("queued builds of %s: %w", b.Branch, err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var out []builds.Build
	reason := fmt.Sprintf("superseded by build #%d (%s)", b.Number, shortID(b.SHA))
	for _, id := range ids {
		old, err := s.transitionTx(ctx, tx, id, builds.Finished, func(old *builds.Build) error {
			old.Result, old.Reason, old.CancelRequested = builds.Canceled, reason, true
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("supersede build %d: %w", id, err)
		}
		out = append(out, old)
	}
	return out, nil
}

func shortID(sha string) string {
	if len(sha) > 10 {
		return sha[:10]
	}
	return sha
}

// PushInfo is the push metadata stored with a build.
type PushInfo struct {
	CompareURL string
	Pusher     string
}

// BuildPushInfo returns the push metadata of a build (empty for builds not
// started by a push).
func (s *DB) BuildPushInfo(ctx context.Context, buildID int64) (PushInfo, error) {
	var pi PushInfo
	err := s.db.QueryRowContext(ctx, s.q(`SELECT compare_url, pusher FROM builds WHERE id = ?`), buildID).Scan(&pi.CompareURL, &pi.Pusher)
	if errors.Is(err, sql.ErrNoRows) {
		return pi, fmt.Errorf("build %d: %w", buildID, ErrNotFound)
	}
	if err != nil {
		return pi, fmt.Errorf("build %d push info: %w", buildID, err)
	}
	return pi, nil
}

// PruneDeliveries forgets deliveries recorded more than olderThan ago (by
// the store's clock) and returns how many; a redelivery older than that
// builds again.
func (s *DB) PruneDeliveries(ctx context.Context, olderThan time.Duration) (int64, error) {
	res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM source_deliveries WHERE created_at < ?`), ms(s.now().Add(-olderThan)))
	if err != nil {
		return 0, fmt.Errorf("prune deliveries: %w", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}
