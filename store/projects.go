package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

var projectName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$`)

// ValidProjectName reports whether name can name a project: it appears in
// URLs and file names, so it is 1–100 letters, digits, '.', '_' or '-',
// not starting with a punctuation mark.
func ValidProjectName(name string) error {
	if !projectName.MatchString(name) {
		return fmt.Errorf("project name %q must be 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

// CreateProject adds a project; ID, CreatedAt and UpdatedAt are set.
func (s *DB) CreateProject(ctx context.Context, p builds.Project) (builds.Project, error) {
	if err := ValidProjectName(p.Name); err != nil {
		return builds.Project{}, err
	}
	steps, err := json.Marshal(p.Steps)
	if err != nil {
		return builds.Project{}, fmt.Errorf("create project: %w", err)
	}
	settings, err := json.Marshal(p.Settings)
	if err != nil {
		return builds.Project{}, fmt.Errorf("create project: %w", err)
	}
	p.CreatedAt = s.now()
	p.UpdatedAt = p.CreatedAt
	err = s.db.QueryRowContext(ctx, s.q(`INSERT INTO projects (name, owner_id, repo, default_branch, steps, timeout_ms, settings, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`),
		p.Name, p.OwnerID, p.Repo, p.DefaultBranch, string(steps), p.Timeout.Milliseconds(), string(settings), ms(p.CreatedAt), ms(p.UpdatedAt)).Scan(&p.ID)
	if isUnique(err) {
		return builds.Project{}, fmt.Errorf("project %q: %w", p.Name, ErrConflict)
	}
	if err != nil {
		return builds.Project{}, fmt.Errorf("create project %q: %w", p.Name, err)
	}
	return p, nil
}

const projectCols = `id, name, owner_id, repo, default_branch, steps, timeout_ms, settings, created_at, updated_at`

func scanProject(row interface{ Scan(...any) error }) (builds.Project, error) {
	var (
		p               builds.Project
		steps, settings string
		timeout, c, u   int64
	)
	if err := row.Scan(&p.ID, &p.Name, &p.OwnerID, &p.Repo, &p.DefaultBranch, &steps, &timeout, &settings, &c, &u); err != nil {
		return p, err
	}
	if err := json.Unmarshal([]byte(steps), &p.Steps); err != nil {
		return p, fmt.Errorf("project %d steps: %w", p.ID, err)
	}
	if err := json.Unmarshal([]byte(settings), &p.Settings); err != nil {
		return p, fmt.Errorf("project %d settings: %w", p.ID, err)
	}
	p.Timeout = time.Duration(timeout) * time.Millisecond
	p.CreatedAt, p.UpdatedAt = fromMS(c), fromMS(u)
	return p, nil
}

// ProjectByName looks a project up by its name.
func (s *DB) ProjectByName(ctx context.Context, name string) (builds.Project, error) {
	p, err := scanProject(s.db.QueryRowContext(ctx, s.q(`SELECT `+projectCols+` FROM projects WHERE name = ?`), name))
	if errors.Is(err, sql.ErrNoRows) {
		return p, fmt.Errorf("project %q: %w", name, ErrNotFound)
	}
	return p, err
}

// ProjectByID looks a project up by id.
func (s *DB) ProjectByID(ctx context.Context, id int64) (builds.Project, error) {
	p, err := scanProject(s.db.QueryRowContext(ctx, s.q(`SELECT `+projectCols+` FROM projects WHERE id = ?`), id))
	if errors.Is(err, sql.ErrNoRows) {
		return p, fmt.Errorf("project %d: %w", id, ErrNotFound)
	}
	return p, err
}

// ListProjects lists the projects of one owner, or all of them when
// ownerID is 0, by name.
func (s *DB) ListProjects(ctx context.Context, ownerID int64) ([]builds.Project, error) {
	query, args := `SELECT `+projectCols+` FROM projects ORDER BY name`, []any{}
	if ownerID != 0 {
		query, args = `SELECT `+projectCols+` FROM projects WHERE owner_id = ? ORDER BY name`, []any{ownerID}
	}
	rows, err := s.db.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, fmt.Errorf("list projects: %w", err)
	}
	defer rows.Close()
	out := []builds.Project{}
	for rows.Next() {
		p, err := scanProject(rows)
		if err != nil {
			return nil, fmt.Errorf("list projects: %w", err)
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// UpdateProject saves a project's settings (not its name or owner).
func (s *DB) UpdateProject(ctx context.Context, p builds.Project) (builds.Project, error) {
	steps, err := json.Marshal(p.Steps)
	if err != nil {
		return p, fmt.Errorf("update project: %w", err)
	}
	settings, err := json.Marshal(p.Settings)
	if err != nil {
		return p, fmt.Errorf("update project: %w", err)
	}
	p.UpdatedAt = s.now()
	defer s.webhooks.clear()
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE projects SET repo = ?, default_branch = ?, steps = ?, timeout_ms = ?, settings = ?, updated_at = ? WHERE id = ?`),
		p.Repo, p.DefaultBranch, string(steps), p.Timeout.Milliseconds(), string(settings), ms(p.UpdatedAt), p.ID)
	if err != nil {
		return p, fmt.Errorf("update project %q: %w", p.Name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return p, fmt.Errorf("project %q: %w", p.Name, ErrNotFound)
	}
	return p, nil
}

// DeleteProject removes a project with its builds, logs and artifact
// records. It refuses while a build of the project is queued or running.
func (s *DB) DeleteProject(ctx context.Context, id int64) error {
	defer s.webhooks.clear()
	return s.tx(ctx, func(tx *sql.Tx) error {
		var active int
		if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM builds WHERE project_id = ? AND state <> ?`), id, builds.Finished).Scan(&active); err != nil {
			return fmt.Errorf("delete project: %w", err)
		}
		if active > 0 {
			return fmt.Errorf("project has %d unfinished builds; cancel them first: %w", active, ErrConflict)
		}
		res, err := tx.ExecContext(ctx, s.q(`DELETE FROM projects WHERE id = ?`), id)
		if err != nil {
			return fmt.Errorf("delete project: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("project %d: %w", id, ErrNotFound)
		}
		return nil
	})
}
