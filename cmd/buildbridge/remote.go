package main

import (
	"context"
	"path/filepath"
	"sync"
	"time"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/builds/remote"
)

func init() { mounts = append(mounts, mountRemote) }

// runnerLeaseTTL is how long a remote runner keeps a build without a
// heartbeat; runners heartbeat every 500ms, so a lost runner's build is
// handed on within about this long.
const runnerLeaseTTL = 5 * time.Second

// mountRemote serves the runner protocol under /runner/v1/ and runs the
// lease reaper for as long as the hub runs. Lost leases follow on_restart:
// requeue, or finish the build as errored.
func mountRemote(ctx context.Context, h *hub) error {
	rh, err := remote.NewHub(remote.HubConfig{
		Store: h.store, ArtifactsDir: filepath.Join(h.cfg.Data, "artifacts"),
		MaxArtifactBytes: h.cfg.MaxArtifactBytes, LeaseTTL: runnerLeaseTTL,
		Requeue: h.cfg.OnRestart == "requeue", BuildURL: h.cfg.BaseURL + "/builds/",
		OnLog: func(p builds.Project, b builds.Build, off int64, chunk []byte) {
			if fn := h.onLog; fn != nil {
				fn(p, b, off, chunk)
			}
		},
		Logger: h.log, Registerer: h.reg,
	})
	if err != nil {
		return err
	}
	h.mux.Handle("/runner/", rh)
	rctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rh.RunReaper(rctx)
	}()
	h.onShutdown = append(h.onShutdown, func(context.Context) {
		stop()
		wg.Wait()
	})
	return nil
}
