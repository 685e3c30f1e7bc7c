package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/oklog/ulid/v2"

	"github.com/buildbridge/buildbridge/builds"
)

// NewBuild is what a source asks for: a commit of a project to build.
type NewBuild struct {
	ProjectID   int64
	Ref         string
	Branch      string
	SHA         string
	Author      string
	AuthorEmail string
	Message     string
	TriggeredBy int64
}

const buildCols = `b.id, b.project_id, b.number, b.state, b.result, b.reason, b.ref, b.branch, b.sha,
	b.author, b.author_email, b.message, b.triggered_by, b.cancel_requested, b.created_at, b.started_at, b.finished_at,
	b.compare_url, b.pusher`

func scanBuild(row interface{ Scan(...any) error }, extra ...any) (builds.Build, error) {
	var (
		b                 builds.Build
		created           int64
		started, finished sql.NullInt64
	)
	dest := append([]any{&b.ID, &b.ProjectID, &b.Number, &b.State, &b.Result, &b.Reason, &b.Ref, &b.Branch, &b.SHA,
		&b.Author, &b.AuthorEmail, &b.Message, &b.TriggeredBy, &b.CancelRequested, &created, &started, &finished,
		&b.CompareURL, &b.Pusher}, extra...)
	if err := row.Scan(dest...); err != nil {
		return b, err
	}
	b.CreatedAt, b.StartedAt, b.FinishedAt = fromMS(created), fromNullMS(started), fromNullMS(finished)
	return b, nil
}

// CreateBuild queues a build: the build row, its QUEUED transition and
// the transition's outbox row are written in one transaction.
func (s *DB) CreateBuild(ctx context.Context, nb NewBuild) (builds.Build, error) {
	var b builds.Build
	err := s.groupTx(ctx, func(tx *sql.Tx) error {
		var err error
		b, err = s.createBuildTx(ctx, tx, PushBuild{NewBuild: nb})
		return err
	})
	if err != nil {
		return builds.Build{}, fmt.Errorf("create build: %w", err)
	}
	s.notifyOutbox()
	return b, nil
}

// recordTransition writes the event row and the outbox row of a build that
// has just moved from one state to another, inside the caller's transaction.
func (s *DB) recordTransition(ctx context.Context, tx *sql.Tx, from builds.State, b builds.Build, proj builds.ProjectRef) error {
	t := builds.Transition{
		EventID: "evt_" + strings.ToLower(ulid.Make().String()),
		Time:    s.now(), From: from, To: b.State, Build: b, Project: proj,
	}
	var prev builds.Previous
	// The literals match the partial index builds_previous.
	err := s.prepared(tx, ctx).QueryRow(`SELECT number, result FROM builds
		WHERE project_id = ? AND branch = ? AND number < ? AND state = 'FINISHED' AND result <> 'canceled'
		ORDER BY number DESC LIMIT 1`, b.ProjectID, b.Branch, b.Number).Scan(&prev.Number, &prev.Result)
	switch {
	case err == nil:
		t.Previous = &prev
	case !errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("previous build: %w", err)
	}
	if err := s.prepared(tx, ctx).QueryRow(`INSERT INTO build_events (event_id, build_id, state, created_at) VALUES (?, ?, ?, ?) RETURNING seq`,
		t.EventID, b.ID, b.State, ms(t.Time)).Scan(&t.Seq); err != nil {
		return fmt.Errorf("insert build event: %w", err)
	}
	payload, err := json.Marshal(t)
	if err != nil {
		return fmt.Errorf("encode transition: %w", err)
	}
	if _, err := s.prepared(tx, ctx).Exec(`INSERT INTO outbox (event_id, topic, payload, created_at) VALUES (?, ?, ?, ?)`,
		t.EventID, builds.TopicTransition, payload, ms(t.Time)); err != nil {
		return fmt.Errorf("insert outbox: %w", err)
	}
	return nil
}

// Transition moves a build to another state. apply may change the build's
// fields (result, reason, times) and may refuse by returning an error; the
// state machine is checked against the stored state, inside the same
// transaction that writes the outbox row, so concurrent callers cannot both
// move one build.
func (s *DB) Transition(ctx context.Context, buildID int64, to builds.State, apply func(b *builds.Build) error) (builds.Build, error) {
	var b builds.Build
	err := s.groupTx(ctx, func(tx *sql.Tx) error {
		var err error
		b, err = s.transitionTx(ctx, tx, buildID, to, apply)
		return err
	})
	if err != nil {
		return builds.Build{}, err
	}
	s.notifyOutbox()
	return b, nil
}

func (s *DB) transitionTx(ctx context.Context, tx *sql.Tx, buildID int64, to builds.State, apply func(b *builds.Build) error) (builds.Build, error) {
	return s.transitionOnTx(ctx, tx, buildID, to, apply, "")
}

// transitionOnTx is transitionTx recording, on a move to STARTED, the node
// whose embedded runner claimed the build ("" for none: a remote runner).
// Every start writes the column, so a build re-queued and started again
// never keeps the node of an earlier claim.
func (s *DB) transitionOnTx(ctx context.Context, tx *sql.Tx, buildID int64, to builds.State, apply func(b *builds.Build) error, node string) (builds.Build, error) {
	lock := ""
	if s.postgres {
		lock = " FOR UPDATE OF b"
	}
	var proj builds.ProjectRef
	b, err := scanBuild(s.prepared(tx, ctx).QueryRow(`SELECT `+buildCols+`, p.name, p.owner_id FROM builds b JOIN projects p ON p.id = b.project_id WHERE b.id = ?`+lock, buildID),
		&proj.Name, &proj.OwnerID)
	if errors.Is(err, sql.ErrNoRows) {
		return b, fmt.Errorf("build %d: %w", buildID, ErrNotFound)
	}
	if err != nil {
		return b, fmt.Errorf("load build %d: %w", buildID, err)
	}
	proj.ID = b.ProjectID
	from := b.State
	if err := builds.CheckTransition(from, to); err != nil {
		return b, fmt.Errorf("build %d: %w", buildID, err)
	}
	b.State = to
	now := s.now()
	switch to {
	case builds.Started:
		b.StartedAt, b.FinishedAt, b.Result, b.Reason = &now, nil, "", ""
	case builds.Finished:
		b.FinishedAt = &now
	case builds.Queued:
		b.StartedAt, b.FinishedAt, b.Result = nil, nil, ""
	}
	if apply != nil {
		if err := apply(&b); err != nil {
			return b, err
		}
	}
	if b.State != to || (to == builds.Finished) != b.Result.Valid() {
		return b, fmt.Errorf("build %d: %w: %s with result %q", buildID, builds.ErrTransition, b.State, b.Result)
	}
	var res sql.Result
	if to == builds.Started {
		res, err = s.prepared(tx, ctx).Exec(`UPDATE builds SET state = ?, result = ?, reason = ?, started_at = ?, finished_at = ?, cancel_requested = ?, node = ?
			WHERE id = ? AND state = ?`,
			b.State, b.Result, b.Reason, nullMS(b.StartedAt), nullMS(b.FinishedAt), b.CancelRequested, sql.NullString{String: node, Valid: node != ""}, b.ID, from)
	} else {
		res, err = s.prepared(tx, ctx).Exec(`UPDATE builds SET state = ?, result = ?, reason = ?, started_at = ?, finished_at = ?, cancel_requested = ?
			WHERE id = ? AND state = ?`,
			b.State, b.Result, b.Reason, nullMS(b.StartedAt), nullMS(b.FinishedAt), b.CancelRequested, b.ID, from)
	}
	if err != nil {
		return b, fmt.Errorf("update build %d: %w", buildID, err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return b, fmt.Errorf("build %d changed concurrently: %w", buildID, builds.ErrTransition)
	}
	return b, s.recordTransition(ctx, tx, from, b, proj)
}

// ClaimQueued moves the oldest queued build to STARTED and returns it, or
// ErrNotFound when none is queued. The move is the claim: two callers never
// get the same build. The build names no node: recovery on any node takes
// it back (ClaimQueuedOn names one).
func (s *DB) ClaimQueued(ctx context.Context) (builds.Build, error) {
	return s.ClaimQueuedOn(ctx, "")
}

// ClaimQueuedOn is ClaimQueued for the embedded runner of a node: the
// build records the node, so that recovery elsewhere leaves it alone while
// the node's lease (RenewNode) is current. It claims nothing (ErrNotFound)
// while that lease is not current.
func (s *DB) ClaimQueuedOn(ctx context.Context, node string) (builds.Build, error) {
	var b builds.Build
	// Idle workers ask every second: a plain read answers "nothing queued"
	// without taking SQLite's write lock or starting a transaction.
	// Builds of projects that need runner labels wait for a remote runner
	// (ClaimForRunner); the embedded runner has no labels.
	if queued, err := s.anyQueued(ctx, true); err != nil || !queued {
		if err == nil {
			err = ErrNotFound
		}
		return b, err
	}
	err := s.groupTx(ctx, func(tx *sql.Tx) error {
		query := `SELECT id FROM builds WHERE ` + queuedCond + ` AND ` + noLabelsCond
		var args []any
		if node != "" {
			// Only while the node's lease is current: recovery elsewhere
			// would take back at once a build claimed under an expired one.
			query += ` AND EXISTS (SELECT 1 FROM nodes WHERE id = ? AND expires_at > ?)`
			args = append(args, node, ms(s.now()))
		}
		query += ` ORDER BY id LIMIT 1`
		if s.postgres {
			query += ` FOR UPDATE SKIP LOCKED`
		}
		var id int64
		err := s.prepared(tx, ctx).QueryRow(query, args...).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("claim build: %w", err)
		}
		b, err = s.transitionOnTx(ctx, tx, id, builds.Started, nil, node)
		return err
	})
	if err != nil {
		return builds.Build{}, err
	}
	s.notifyOutbox()
	return b, nil
}

// The states of builds, written into the SQL of the statements that run
// all the time (claims, their idle probes, recovery, the reaper) instead
// of bound as parameters. pgx prepares every statement, and after five
// executions PostgreSQL may keep a generic plan, made without the
// parameters' values: for "state = $1" it then assumes a third of the
// builds match and walks the primary key from the oldest build, a
// sequential read of the whole table (250-1,100 ms a claim at 1M builds)
// where the index on (state, id) finds the few queued ones at once. With
// the value in the text, every plan of the statement sees it.
const (
	queuedCond  = `state = '` + string(builds.Queued) + `'`
	startedCond = `state = '` + string(builds.Started) + `'`
	// noLabelsCond keeps builds of projects that need runner labels out.
	noLabelsCond = `project_id NOT IN (SELECT project_id FROM project_labels)`
)

// anyQueued reports whether some build is queued (only those that need no
// runner labels, with noLabels): one indexed read, so that idle workers
// and runners polling every second cost no transaction.
func (s *DB) anyQueued(ctx context.Context, noLabels bool) (bool, error) {
	query := `SELECT EXISTS (SELECT 1 FROM builds WHERE ` + queuedCond
	if noLabels {
		query += ` AND ` + noLabelsCond
	}
	var queued bool
	if err := s.db.QueryRowContext(ctx, query+`)`).Scan(&queued); err != nil {
		return false, fmt.Errorf("claim build: %w", err)
	}
	return queued, nil
}

// RequestCancel marks a build for cancelation. A queued build finishes as
// canceled at once (and is returned FINISHED); a started one keeps running
// until its runner sees the request. Canceling a finished build is a
// conflict.
func (s *DB) RequestCancel(ctx context.Context, buildID int64, reason string) (builds.Build, error) {
	var b builds.Build
	wrote := false
	err := s.groupTx(ctx, func(tx *sql.Tx) error {
		var err error
		b, err = scanBuild(s.prepared(tx, ctx).QueryRow(`SELECT `+buildCols+` FROM builds b WHERE b.id = ?`, buildID))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("build %d: %w", buildID, ErrNotFound)
		}
		if err != nil {
			return err
		}
		switch b.State {
		case builds.Finished:
			return fmt.Errorf("build %d already finished (%s): %w", buildID, b.Result, ErrConflict)
		case builds.Queued:
			b, err = s.transitionTx(ctx, tx, buildID, builds.Finished, func(b *builds.Build) error {
				b.Result, b.Reason, b.CancelRequested = builds.Canceled, reason, true
				return nil
			})
			wrote = true
			return err
		}
		b.CancelRequested = true
		_, err = s.prepared(tx, ctx).Exec(`UPDATE builds SET cancel_requested = ? WHERE id = ?`, true, buildID)
		return err
	})
	if err != nil {
		return builds.Build{}, err
	}
	if wrote {
		s.notifyOutbox()
	}
	return b, nil
}

// Build returns one build.
func (s *DB) Build(ctx context.Context, id int64) (builds.Build, error) {
	b, err := scanBuild(s.db.QueryRowContext(ctx, s.q(`SELECT `+buildCols+` FROM builds b WHERE b.id = ?`), id))
	if errors.Is(err, sql.ErrNoRows) {
		return b, fmt.Errorf("build %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return b, fmt.Errorf("build %d: %w", id, err)
	}
	return b, nil
}

// BuildFilter narrows ListBuilds.
type BuildFilter struct {
	ProjectID int64
	Branch    string
	State     builds.State
	// Before is a cursor: only builds with a smaller id are listed.
	Before int64
	Limit  int
}

// ListBuilds lists builds newest first.
func (s *DB) ListBuilds(ctx context.Context, f BuildFilter) ([]builds.Build, error) {
	where, args := []string{"1 = 1"}, []any{}
	if f.ProjectID != 0 {
		where, args = append(where, "b.project_id = ?"), append(args, f.ProjectID)
	}
	if f.Branch != "" {
		where, args = append(where, "b.branch = ?"), append(args, f.Branch)
	}
	if f.State != "" {
		where, args = append(where, "b.state = ?"), append(args, f.State)
	}
	if f.Before > 0 {
		where, args = append(where, "b.id < ?"), append(args, f.Before)
	}
	if f.Limit <= 0 || f.Limit > 500 {
		f.Limit = 50
	}
	args = append(args, f.Limit)
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT `+buildCols+` FROM builds b WHERE `+strings.Join(where, " AND ")+` ORDER BY b.id DESC LIMIT ?`), args...)
	if err != nil {
		return nil, fmt.Errorf("list builds: %w", err)
	}
	defer rows.Close()
	out := []builds.Build{}
	for rows.Next() {
		b, err := scanBuild(rows)
		if err != nil {
			return nil, fmt.Errorf("list builds: %w", err)
		}
		out = append(out, b)
	}
	return out, rows.Err()
}

// CountBuilds counts builds by state and result, for metrics. It reads
// the counts that triggers on builds keep (migration 00013), a few
// hundred rows at most, instead of counting the builds: every /metrics
// scrape of every node asks, and a count took a full scan.
func (s *DB) CountBuilds(ctx context.Context) (map[[2]string]int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT state, result, SUM(n) FROM build_counts GROUP BY state, result HAVING SUM(n) <> 0`)
	if err != nil {
		return nil, fmt.Errorf("count builds: %w", err)
	}
	defer rows.Close()
	out := map[[2]string]int{}
	for rows.Next() {
		var st, res string
		var n int
		if err := rows.Scan(&st, &res, &n); err != nil {
			return nil, err
		}
		out[[2]string{st, res}] = n
	}
	return out, rows.Err()
}

// BuildEvents returns the transitions of a build in order, as they were
// recorded (for tests and for clients filling a gap after a reconnect).
func (s *DB) BuildEvents(ctx context.Context, buildID int64) ([]BuildEvent, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT seq, event_id, build_id, state, created_at FROM build_events WHERE build_id = ? ORDER BY seq`), buildID)
	if err != nil {
		return nil, fmt.Errorf("build events: %w", err)
	}
	defer rows.Close()
	var out []BuildEvent
	for rows.Next() {
		var e BuildEvent
		var c int64
		if err := rows.Scan(&e.Seq, &e.EventID, &e.BuildID, &e.State, &c); err != nil {
			return nil, err
		}
		e.Time = fromMS(c)
		out = append(out, e)
	}
	return out, rows.Err()
}
