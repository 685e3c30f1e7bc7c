package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// artifactPruneBatch is how many builds' artifacts one pass deletes
// before looking for more.
const artifactPruneBatch = 100

// pruneArtifacts deletes, until ctx ends, the artifacts of builds that
// finished longer than artifact_retention ago: their records, then their
// directory under artifacts_dir. It looks every tenth of the retention,
// at most hourly. Every node does it; with a shared artifacts_dir the
// second one finds nothing left.
func (h *hub) pruneArtifacts(ctx context.Context) error {
	every := min(time.Hour, h.cfg.ArtifactRetention/10)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		n, err := h.pruneArtifactsOnce(ctx, time.Now().Add(-h.cfg.ArtifactRetention))
		switch {
		case err != nil && ctx.Err() == nil:
			h.log.Error("pruning old artifacts", "err", err)
		case n > 0:
			h.log.Info("old artifacts deleted", "builds", n, "retention", h.cfg.ArtifactRetention)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// pruneArtifactsOnce deletes the artifacts of the builds finished before
// before and returns how many builds had some. Records go first: a
// directory whose removal failed is only disk space, while a record
// without its file would be listed and then fail to download.
func (h *hub) pruneArtifactsOnce(ctx context.Context, before time.Time) (int, error) {
	total := 0
	for {
		ids, err := h.store.BuildsWithArtifactsFinishedBefore(ctx, before, artifactPruneBatch)
		if err != nil {
			return total, err
		}
		for _, id := range ids {
			if _, err := h.store.DeleteArtifacts(ctx, id); err != nil {
				return total, err
			}
			dir := filepath.Join(h.cfg.ArtifactsDir, strconv.FormatInt(id, 10))
			if err := os.RemoveAll(dir); err != nil {
				return total, fmt.Errorf("remove artifacts of build %d: %w", id, err)
			}
			total++
		}
		if len(ids) < artifactPruneBatch {
			return total, nil
		}
	}
}
