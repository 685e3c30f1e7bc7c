// Package forge receives push webhooks from GitHub, GitLab and Gitea:
// POST /hooks/{github,gitlab,gitea}/{project}. Each delivery is checked
// against the project's webhook secret (HMAC-SHA256 for GitHub and Gitea,
// the shared token for GitLab, compared in constant time, the previous
// secret too during a rotation), de-duplicated by its delivery id and
// turned into builds by sources.Ingester.
package forge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/sources"
	"github.com/buildbridge/buildbridge/store"
)

// Projects looks a project and its webhook secret up by name.
type Projects interface {
	ProjectWebhook(ctx context.Context, name string) (builds.Project, store.WebhookSecret, error)
}

// Ingester turns a verified push into builds.
type Ingester interface {
	Ingest(ctx context.Context, p builds.Project, push sources.Push) (sources.Result, error)
}

// Config configures a Handler.
type Config struct {
	Projects Projects
	Ingester Ingester
	// Metrics counts deliveries (nil: not counted).
	Metrics *sources.Metrics
	// MaxBodyBytes bounds a delivery's body (default 5 MiB); a larger one
	// is refused with 413.
	MaxBodyBytes int64
	Logger       *slog.Logger
	// Now is the clock that ends rotation grace periods (default time.Now).
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 5 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate reports a missing or impossible setting.
func (c *Config) Validate() error {
	switch {
	case c.Projects == nil:
		return errors.New("forge: Projects is required")
	case c.Ingester == nil:
		return errors.New("forge: Ingester is required")
	case c.MaxBodyBytes < 1024:
		return fmt.Errorf("forge: MaxBodyBytes must be at least 1024, got %d", c.MaxBodyBytes)
	}
	return nil
}

// Handler serves the forge webhooks.
type Handler struct {
	cfg Config
}

// NewHandler returns a Handler.
func NewHandler(cfg Config) (*Handler, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Handler{cfg: cfg}, nil
}

// Forges lists the forge names Serve accepts, as they appear in the path.
var Forges = []string{sources.SourceGitHub, sources.SourceGitLab, sources.SourceGitea}

// ServeHTTP serves POST /hooks/{forge}/{project}, reading both from the
// last two segments of the path.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) < 2 {
		sources.WriteError(w, sources.Errorf(http.StatusNotFound, "not_found", "webhook URLs are /hooks/{github,gitlab,gitea}/{project}"))
		return
	}
	h.Serve(w, r, parts[len(parts)-2], parts[len(parts)-1])
}

// delivery is one webhook request as the handler sees it through its
// checks.
type delivery struct {
	forge, project, id, event string
}

// Serve handles one delivery from forge for project.
func (h *Handler) Serve(w http.ResponseWriter, r *http.Request, forge, project string) {
	d := delivery{forge: forge, project: project}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		sources.WriteError(w, sources.Errorf(http.StatusMethodNotAllowed, "method_not_allowed", "webhooks are POST requests"))
		return
	}
	switch forge {
	case sources.SourceGitHub:
		d.event, d.id = r.Header.Get("X-GitHub-Event"), r.Header.Get("X-GitHub-Delivery")
	case sources.SourceGitLab:
		// Idempotency-Key (GitLab 17.4+) stays the same when a delivery is
		// retried; X-Gitlab-Event-UUID is the older per-event id.
		d.event, d.id = r.Header.Get("X-Gitlab-Event"), r.Header.Get("Idempotency-Key")
		if d.id == "" {
			d.id = r.Header.Get("X-Gitlab-Event-UUID")
		}
	case sources.SourceGitea:
		d.event, d.id = r.Header.Get("X-Gitea-Event"), r.Header.Get("X-Gitea-Delivery")
	default:
		sources.WriteError(w, sources.Errorf(http.StatusNotFound, "not_found", "unknown forge %q: webhook URLs are /hooks/{github,gitlab,gitea}/{project}", clip(forge, 40)))
		return
	}
	p, secret, err := h.cfg.Projects.ProjectWebhook(r.Context(), project)
	if errors.Is(err, store.ErrNotFound) {
		h.refuse(w, r, d, "unknown_project", sources.Errorf(http.StatusNotFound, "not_found", "project %q not found", clip(project, 100)))
		return
	}
	if err != nil {
		h.internal(w, d, err)
		return
	}
	body, e := sources.ReadBody(w, r, h.cfg.MaxBodyBytes)
	if e != nil {
		h.refuse(w, r, d, "body_too_large", e)
		return
	}
	if reason, e := h.verify(r, d.forge, body, secret.Valid(h.cfg.Now())); e != nil {
		h.refuse(w, r, d, reason, e)
		return
	}
	if d.id != "" && !validDeliveryID(d.id) {
		h.refuse(w, r, d, "invalid_delivery_id", sources.Errorf(http.StatusBadRequest, "invalid_header", "the delivery id header must be 1 to 200 printable ASCII characters"))
		return
	}

	var push sources.Push
	switch kind := eventKind(d.forge, d.event); kind {
	case "ping":
		h.cfg.Metrics.Count(d.forge, sources.OutcomeAccepted, "ping")
		sources.WriteJSON(w, http.StatusOK, map[string]any{"ok": true, "message": "pong: webhook for project " + p.Name + " verified"})
		return
	case "":
		if d.event == "" {
			h.refuse(w, r, d, "no_event", sources.Errorf(http.StatusBadRequest, "missing_header", "the request has no %s header", eventHeader(d.forge)))
			return
		}
		h.cfg.Metrics.Count(d.forge, sources.OutcomeIgnored, "unknown_event")
		sources.WriteJSON(w, http.StatusAccepted, map[string]any{"ignored": true,
			"reason": fmt.Sprintf("event %q is not handled; only push events start builds", clip(d.event, 60))})
		return
	case "push":
		push, e = ParseGitHubPush(r.Header.Get("Content-Type"), body)
	case "gitlab:push", "gitlab:tag_push":
		push, e = ParseGitLabPush(strings.TrimPrefix(kind, "gitlab:"), body)
	case "gitea:push":
		push, e = ParseGiteaPush(body)
	}
	if e != nil {
		h.refuse(w, r, d, "malformed_payload", e)
		return
	}
	push.DeliveryID = d.id
	res, err := h.cfg.Ingester.Ingest(r.Context(), p, push)
	if err != nil {
		h.internal(w, d, err)
		return
	}
	reason := "built"
	switch {
	case res.Duplicate:
		reason = "duplicate"
	case len(res.Builds) == 0:
		reason = "nothing_to_build"
	}
	h.cfg.Metrics.Count(d.forge, sources.OutcomeAccepted, reason)
	sources.WriteJSON(w, http.StatusOK, res.JSON())
}

// eventKind maps a forge's event header to what the handler does: "ping",
// "push" (GitHub), "gitlab:push", "gitlab:tag_push", "gitea:push", or ""
// for an event it does not handle.
func eventKind(forge, event string) string {
	switch forge + ":" + event {
	case "github:ping":
		return "ping"
	case "github:push":
		return "push"
	case "gitlab:Push Hook":
		return "gitlab:push"
	case "gitlab:Tag Push Hook":
		return "gitlab:tag_push"
	case "gitea:push":
		return "gitea:push"
	}
	return ""
}

func eventHeader(forge string) string {
	switch forge {
	case sources.SourceGitHub:
		return "X-GitHub-Event"
	case sources.SourceGitLab:
		return "X-Gitlab-Event"
	}
	return "X-Gitea-Event"
}

// verify checks a delivery's signature against the valid secrets and
// returns the refusal reason and answer when it fails.
func (h *Handler) verify(r *http.Request, forge string, body []byte, secrets []string) (string, *sources.Error) {
	header := map[string]string{sources.SourceGitHub: "X-Hub-Signature-256", sources.SourceGitLab: "X-Gitlab-Token",
		sources.SourceGitea: "X-Gitea-Signature"}[forge]
	if len(secrets) == 0 {
		return "no_secret", sources.Errorf(http.StatusUnauthorized, "no_webhook_secret",
			"the project has no webhook secret yet; create one with POST /api/v1/projects/{name}/webhook-secret and set it on the webhook")
	}
	value := r.Header.Get(header)
	var (
		ok  bool
		err error
	)
	switch forge {
	case sources.SourceGitHub, sources.SourceGitea:
		var mac []byte
		if forge == sources.SourceGitHub {
			mac, err = ParseGitHubSignature(value)
		} else {
			mac, err = ParseGiteaSignature(value)
		}
		ok = err == nil && VerifyHMAC(body, mac, secrets)
	default:
		var token string
		token, err = ParseGitLabToken(value)
		ok = err == nil && VerifyToken(token, secrets)
	}
	switch {
	case errors.Is(err, ErrNoSignature):
		return "missing_signature", sources.Errorf(http.StatusUnauthorized, "missing_signature", "the request has no %s header", header)
	case err != nil:
		return "malformed_signature", sources.Errorf(http.StatusUnauthorized, "invalid_signature", "%s: %v", header, err)
	case !ok:
		return "bad_signature", sources.Errorf(http.StatusUnauthorized, "invalid_signature", "%s does not match the project's webhook secret", header)
	}
	return "", nil
}

// refuse answers a refused delivery, counts it and logs one line. The log
// names the project, the forge and why, never a secret or signature.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, d delivery, reason string, e *sources.Error) {
	h.cfg.Metrics.Count(d.forge, sources.OutcomeRefused, reason)
	h.cfg.Logger.Warn("webhook refused", "forge", d.forge, "project", clip(d.project, 100), "reason", reason,
		"status", e.Status, "delivery", clip(d.id, 200), "event", clip(d.event, 60), "remote", r.RemoteAddr)
	sources.WriteError(w, e)
}

func (h *Handler) internal(w http.ResponseWriter, d delivery, err error) {
	h.cfg.Metrics.Count(d.forge, sources.OutcomeRefused, "internal")
	h.cfg.Logger.Error("webhook failed", "forge", d.forge, "project", clip(d.project, 100), "delivery", clip(d.id, 200), "err", err)
	sources.WriteError(w, sources.Errorf(http.StatusInternalServerError, "internal", "internal error; the server log has the details"))
}

// validDeliveryID reports whether a delivery id is short printable ASCII,
// fit to be stored and logged.
func validDeliveryID(id string) bool {
	if len(id) == 0 || len(id) > 200 {
		return false
	}
	for i := range len(id) {
		if id[i] <= ' ' || id[i] >= 0x7f {
			return false
		}
	}
	return true
}
