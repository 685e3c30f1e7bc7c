package main

import (
	"context"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/buildbridge/buildbridge/api"
	"github.com/buildbridge/buildbridge/sources"
	"github.com/buildbridge/buildbridge/sources/forge"
	"github.com/buildbridge/buildbridge/sources/githook"
)

func init() { mounts = append(mounts, mountSources) }

// forgeBodyFloor is the smallest body limit of forge webhooks: a push of
// many commits makes a payload of a few MiB, larger than API requests.
const forgeBodyFloor = 5 << 20

// mountSources serves the push sources: POST /hooks/git for the
// post-receive hook, POST /hooks/{github,gitlab,gitea}/{project} for forge
// webhooks, and POST /api/v1/projects/{name}/webhook-secret to create or
// rotate a project's webhook secret.
func mountSources(_ context.Context, h *hub) error {
	metrics, err := sources.NewMetrics(h.reg)
	if err != nil {
		return err
	}
	ing, err := sources.New(sources.Config{Store: h.store, Scheduler: h.queue, Logger: h.log, Metrics: metrics})
	if err != nil {
		return err
	}
	gitSrv, err := githook.NewServer(githook.ServerConfig{Store: h.store, Ingester: ing, Metrics: metrics,
		MaxBodyBytes: h.cfg.MaxBodyBytes, Logger: h.log})
	if err != nil {
		return err
	}
	forges, err := forge.NewHandler(forge.Config{Projects: h.store, Ingester: ing, Metrics: metrics,
		MaxBodyBytes: max(h.cfg.MaxBodyBytes, forgeBodyFloor), Logger: h.log})
	if err != nil {
		return err
	}
	e := h.api.Engine()
	e.POST("/hooks/git", gin.WrapH(gitSrv))
	for _, name := range forge.Forges {
		e.POST("/hooks/"+name+"/:project", func(c *gin.Context) { forges.Serve(c.Writer, c.Request, name, c.Param("project")) })
	}
	h.api.Group.POST("/projects/:name/webhook-secret", rotateWebhookSecret(h))
	return nil
}

// maxSecretGrace bounds how long a replaced webhook secret keeps working.
const maxSecretGrace = 30 * 24 * time.Hour

// rotateWebhookSecret creates the project's webhook secret, or replaces
// it; the replaced one keeps verifying for the grace period (body
// {"grace":"24h"} or seconds; default 24h, 0 ends it at once). The new
// secret is in this answer and nowhere else, ever.
func rotateWebhookSecret(h *hub) gin.HandlerFunc {
	return func(c *gin.Context) {
		p, ok := h.api.ProjectParam(c)
		if !ok {
			return
		}
		grace, ok := readGrace(h, c)
		if !ok {
			return
		}
		secret, err := forge.NewSecret()
		if err != nil {
			h.api.Fail(c, err)
			return
		}
		w, err := h.store.RotateWebhookSecret(c.Request.Context(), p.ID, secret, grace)
		if err != nil {
			h.api.Fail(c, err)
			return
		}
		h.log.Info("webhook secret rotated", "project", p.Name, "by", api.CurrentUser(c).Name, "grace", grace)
		var prevExpires *time.Time
		if w.Previous != "" {
			prevExpires = &w.PreviousExpiresAt
		}
		urls := map[string]string{}
		for _, name := range forge.Forges {
			urls[name] = h.cfg.BaseURL + "/hooks/" + name + "/" + p.Name
		}
		c.Header("Cache-Control", "no-store")
		c.JSON(http.StatusCreated, gin.H{
			"project": p.Name, "secret": w.Secret, "created_at": w.CreatedAt,
			"previous_expires_at": prevExpires, "webhook_urls": urls,
		})
	}
}
