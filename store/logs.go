package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// AppendLog appends a chunk to a build's log and returns the log's new
// size in bytes.
func (s *DB) AppendLog(ctx context.Context, buildID int64, data []byte) (int64, error) {
	var size int64
	if len(data) == 0 {
		err := s.db.QueryRowContext(ctx, s.q(`SELECT log_size FROM builds WHERE id = ?`), buildID).Scan(&size)
		return size, err
	}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		err := s.prepared(tx, ctx).QueryRow(`UPDATE builds SET log_size = log_size + ? WHERE id = ? RETURNING log_size`,
			len(data), buildID).Scan(&size)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("build %d: %w", buildID, ErrNotFound)
		}
		if err != nil {
			return err
		}
		_, err = s.prepared(tx, ctx).Exec(`INSERT INTO build_logs (build_id, pos, data) VALUES (?, ?, ?)`,
			buildID, size-int64(len(data)), data)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("append log of build %d: %w", buildID, err)
	}
	return size, nil
}

// ReadLog returns up to max bytes of a build's log from offset, and the
// log's total size, so a reader can resume where it stopped.
func (s *DB) ReadLog(ctx context.Context, buildID, offset int64, max int) ([]byte, int64, error) {
	var size int64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT log_size FROM builds WHERE id = ?`), buildID).Scan(&size)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, 0, fmt.Errorf("build %d: %w", buildID, ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read log of build %d: %w", buildID, err)
	}
	if offset < 0 || offset >= size {
		return nil, size, nil
	}
	// The chunk holding offset starts at or before it; later chunks follow.
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT pos, data FROM build_logs WHERE build_id = ? AND pos >= 
		(SELECT COALESCE(MAX(pos), 0) FROM build_logs WHERE build_id = ? AND pos <= ?) ORDER BY pos`), buildID, buildID, offset)
	if err != nil {
		return nil, 0, fmt.Errorf("read log of build %d: %w", buildID, err)
	}
	defer rows.Close()
	out := make([]byte, 0, min(int64(max), size-offset))
	for rows.Next() && len(out) < max {
		var pos int64
		var data []byte
		if err := rows.Scan(&pos, &data); err != nil {
			return nil, 0, fmt.Errorf("read log of build %d: %w", buildID, err)
		}
		if pos < offset {
			data = data[offset-pos:]
		}
		out = append(out, data[:min(len(data), max-len(out))]...)
	}
	return out, size, rows.Err()
}

// Artifact is a file a build kept.
type Artifact struct {
	BuildID int64  `json:"build_id"`
	Path    string `json:"path"`
	Size    int64  `json:"size"`
	SHA256  string `json:"sha256"`
}

// AddArtifacts records a build's artifacts.
func (s *DB) AddArtifacts(ctx context.Context, buildID int64, list []Artifact) error {
	if len(list) == 0 {
		return nil
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		for _, a := range list {
			if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO artifacts (build_id, path, size, sha256) VALUES (?, ?, ?, ?)
				ON CONFLICT (build_id, path) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256`),
				buildID, a.Path, a.Size, a.SHA256); err != nil {
				return fmt.Errorf("add artifact %q of build %d: %w", a.Path, buildID, err)
			}
		}
		return nil
	})
}

// Artifacts lists a build's artifacts by path.
func (s *DB) Artifacts(ctx context.Context, buildID int64) ([]Artifact, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT build_id, path, size, sha256 FROM artifacts WHERE build_id = ? ORDER BY path`), buildID)
	if err != nil {
		return nil, fmt.Errorf("artifacts of build %d: %w", buildID, err)
	}
	defer rows.Close()
	out := []Artifact{}
	for rows.Next() {
		var a Artifact
		if err := rows.Scan(&a.BuildID, &a.Path, &a.Size, &a.SHA256); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// ArtifactByPath returns one artifact's record.
func (s *DB) ArtifactByPath(ctx context.Context, buildID int64, path string) (Artifact, error) {
	var a Artifact
	err := s.db.QueryRowContext(ctx, s.q(`SELECT build_id, path, size, sha256 FROM artifacts WHERE build_id = ? AND path = ?`), buildID, path).
		Scan(&a.BuildID, &a.Path, &a.Size, &a.SHA256)
	if errors.Is(err, sql.ErrNoRows) {
		return a, fmt.Errorf("artifact %q of build %d: %w", path, buildID, ErrNotFound)
	}
	return a, err
}

// BuildsWithArtifactsFinishedBefore returns up to limit builds, oldest
// first, that finished before before and still have artifact records.
func (s *DB) BuildsWithArtifactsFinishedBefore(ctx context.Context, before time.Time, limit int) ([]int64, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT DISTINCT a.build_id FROM artifacts a JOIN builds b ON b.id = a.build_id
		WHERE b.finished_at < ? ORDER BY a.build_id LIMIT ?`), ms(before), limit)
	if err != nil {
		return nil, fmt.Errorf("builds with old artifacts: %w", err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("builds with old artifacts: %w", err)
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// DeleteArtifacts deletes a build's artifact records (not the files) and
// returns how many there were.
func (s *DB) DeleteArtifacts(ctx context.Context, buildID int64) (int64, error) {
	res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM artifacts WHERE build_id = ?`), buildID)
	if err != nil {
		return 0, fmt.Errorf("delete artifacts of build %d: %w", buildID, err)
	}
	return res.RowsAffected()
}
