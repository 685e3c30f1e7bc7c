package main

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"sync"

	"github.com/gin-gonic/gin"

	"github.com/buildbridge/buildbridge/api"
	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/builds/remote"
	"github.com/buildbridge/buildbridge/store"
)

func init() { mounts = append(mounts, mountRemote) }

// mountRemote serves the runner protocol under /runner/v1/ and runs the
// lease reaper for as long as the hub runs. Lost leases (runner_lease_ttl
// without a heartbeat; runners send one every 500ms) follow on_restart:
// requeue, or finish the build as errored. runner_embedded: false stops
// the in-process runner, leaving every build to remote runners.
func mountRemote(ctx context.Context, h *hub) error {
	if !h.cfg.RunnerEmbedded {
		h.queue.DisableWorkers()
	}
	rh, err := remote.NewHub(remote.HubConfig{
		Store: h.store, ArtifactsDir: h.cfg.ArtifactsDir,
		MaxArtifactBytes: h.cfg.MaxArtifactBytes, LeaseTTL: h.cfg.RunnerLeaseTTL,
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
	h.api.Group.GET("/projects/:name/runner-labels", projectLabels(h))
	h.api.Group.PUT("/projects/:name/runner-labels", setProjectLabels(h))
	h.api.Group.GET("/builds/:id/runner", buildRunner(h))
	h.api.Group.GET("/runners", listRunners(h))
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

func projectLabels(h *hub) gin.HandlerFunc {
	return func(c *gin.Context) {
		p, ok := h.api.ProjectParam(c)
		if !ok {
			return
		}
		l, err := h.store.ProjectLabels(c.Request.Context(), p.ID)
		if err != nil {
			h.api.Fail(c, err)
			return
		}
		c.JSON(http.StatusOK, gin.H{"project": p.Name, "labels": l})
	}
}

// setProjectLabels sets the labels a runner needs for the project's
// builds; the project's owner or an admin may.
func setProjectLabels(h *hub) gin.HandlerFunc {
	return func(c *gin.Context) {
		p, ok := h.api.ProjectParam(c)
		if !ok {
			return
		}
		if u := api.CurrentUser(c); !u.Admin && u.ID != p.OwnerID {
			h.api.Fail(c, api.NewError(http.StatusForbidden, "forbidden", "only the project's owner or an admin may set its runner labels"))
			return
		}
		var in struct {
			Labels []string `json:"labels"`
		}
		if err := h.api.Decode(c, &in); err != nil {
			h.api.Fail(c, err)
			return
		}
		labels, err := store.NormalizeLabels(in.Labels)
		if err != nil {
			h.api.Fail(c, api.NewError(http.StatusBadRequest, "invalid_labels", "%s", err.Error()))
			return
		}
		if err := h.store.SetProjectLabels(c.Request.Context(), p.ID, labels); err != nil {
			h.api.Fail(c, err)
			return
		}
		c.JSON(http.StatusOK, gin.H{"project": p.Name, "labels": labels})
	}
}

// buildRunner says where a build runs or why it waits: the labels a queued
// build waits for, or the remote runner holding it and until when.
func buildRunner(h *hub) gin.HandlerFunc {
	return func(c *gin.Context) {
		ctx := c.Request.Context()
		id, err := strconv.ParseInt(c.Param("id"), 10, 64)
		if err != nil || id <= 0 {
			h.api.Fail(c, api.NewError(http.StatusBadRequest, "invalid_id", "build id %q is not a positive integer", c.Param("id")))
			return
		}
		b, err := h.store.Build(ctx, id)
		if err != nil {
			h.api.Fail(c, err)
			return
		}
		p, err := h.store.ProjectByID(ctx, b.ProjectID)
		if err != nil {
			h.api.Fail(c, err)
			return
		}
		if u := api.CurrentUser(c); !u.Admin && u.ID != p.OwnerID {
			h.api.Fail(c, api.NewError(http.StatusNotFound, "not_found", "build %d: not found", id))
			return
		}
		out := gin.H{"build_id": b.ID, "state": b.State, "waiting_for_labels": []string{}}
		if b.State == builds.Queued {
			l, err := h.store.ProjectLabels(ctx, p.ID)
			if err != nil {
				h.api.Fail(c, err)
				return
			}
			out["waiting_for_labels"] = l
		}
		lease, name, err := h.store.LeaseOf(ctx, b.ID)
		switch {
		case err == nil:
			out["runner"] = gin.H{"id": lease.RunnerID, "name": name, "lease_expires_at": lease.ExpiresAt}
		case !errors.Is(err, store.ErrNotFound):
			h.api.Fail(c, err)
			return
		case b.State == builds.Started:
			out["runner"] = gin.H{"name": "embedded"}
		}
		c.JSON(http.StatusOK, out)
	}
}

// listRunners lists the remote runners and the queued builds waiting for
// labels, for admins.
func listRunners(h *hub) gin.HandlerFunc {
	return func(c *gin.Context) {
		if !api.CurrentUser(c).Admin {
			h.api.Fail(c, api.NewError(http.StatusForbidden, "forbidden", "only admins may list runners"))
			return
		}
		rs, err := h.store.Runners(c.Request.Context())
		if err != nil {
			h.api.Fail(c, err)
			return
		}
		w, err := h.store.WaitingForLabels(c.Request.Context())
		if err != nil {
			h.api.Fail(c, err)
			return
		}
		c.JSON(http.StatusOK, gin.H{"runners": rs, "waiting_for_labels": w})
	}
}
