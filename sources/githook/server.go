package githook

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/sources"
	"github.com/buildbridge/buildbridge/store"
)

// Store is what the hub's side needs of the store.
type Store interface {
	Authenticate(ctx context.Context, token string) (store.User, store.Token, error)
	ProjectByName(ctx context.Context, name string) (builds.Project, error)
}

// Ingester turns a push into builds.
type Ingester interface {
	Ingest(ctx context.Context, p builds.Project, push sources.Push) (sources.Result, error)
}

// ServerConfig configures the hub's side of the hook.
type ServerConfig struct {
	Store    Store
	Ingester Ingester
	// Metrics counts requests (nil: not counted).
	Metrics *sources.Metrics
	// MaxBodyBytes bounds a request body (default 1 MiB).
	MaxBodyBytes int64
	Logger       *slog.Logger
}

func (c *ServerConfig) setDefaults() {
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports a missing or impossible setting.
func (c *ServerConfig) Validate() error {
	switch {
	case c.Store == nil:
		return errors.New("githook: Store is required")
	case c.Ingester == nil:
		return errors.New("githook: Ingester is required")
	case c.MaxBodyBytes < 1024:
		return fmt.Errorf("githook: MaxBodyBytes must be at least 1024, got %d", c.MaxBodyBytes)
	}
	return nil
}

// Server serves POST /hooks/git.
type Server struct {
	cfg ServerConfig
}

// NewServer returns the hub's side of the hook.
func NewServer(cfg ServerConfig) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Server{cfg: cfg}, nil
}

// ServeHTTP handles one hook request: Bearer token of the project's owner
// or of an admin, a JSON Request body. The answer is 200 with
// sources.ResultJSON, also for a request already handled (duplicate:
// true, no build).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		sources.WriteError(w, sources.Errorf(http.StatusMethodNotAllowed, "method_not_allowed", "POST the refs of a push"))
		return
	}
	user, e := s.authenticate(r)
	if e != nil {
		w.Header().Set("WWW-Authenticate", `Bearer realm="buildbridge"`)
		s.refuse(w, r, "", "unauthorized", e)
		return
	}
	body, e := sources.ReadBody(w, r, s.cfg.MaxBodyBytes)
	if e != nil {
		s.refuse(w, r, "", "body_too_large", e)
		return
	}
	var req Request
	if e := sources.DecodeJSON(body, &req); e != nil {
		s.refuse(w, r, "", "malformed_payload", e)
		return
	}
	if err := req.Validate(); err != nil {
		s.refuse(w, r, req.Project, "malformed_payload", sources.Errorf(http.StatusBadRequest, "invalid_field", "%s", err))
		return
	}
	p, err := s.cfg.Store.ProjectByName(r.Context(), req.Project)
	if err == nil && !user.Admin && p.OwnerID != user.ID {
		err = store.ErrNotFound // another user's project does not exist for this caller
	}
	if errors.Is(err, store.ErrNotFound) {
		s.refuse(w, r, req.Project, "unknown_project", sources.Errorf(http.StatusNotFound, "not_found", "project %q not found", clip(req.Project)))
		return
	}
	if err != nil {
		s.internal(w, req.Project, err)
		return
	}
	res, err := s.cfg.Ingester.Ingest(r.Context(), p, req.Push(user.ID))
	if err != nil {
		s.internal(w, req.Project, err)
		return
	}
	reason := "built"
	switch {
	case res.Duplicate:
		reason = "duplicate"
	case len(res.Builds) == 0:
		reason = "nothing_to_build"
	}
	s.cfg.Metrics.Count(sources.SourceGit, sources.OutcomeAccepted, reason)
	sources.WriteJSON(w, http.StatusOK, res.JSON())
}

func (s *Server) authenticate(r *http.Request) (store.User, *sources.Error) {
	h := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(h, " ")
	token = strings.TrimSpace(token)
	if h == "" {
		return store.User{}, sources.Errorf(http.StatusUnauthorized, "unauthorized", "missing Authorization header; send \"Authorization: Bearer <token>\"")
	}
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return store.User{}, sources.Errorf(http.StatusUnauthorized, "unauthorized", "Authorization header must be \"Bearer <token>\"")
	}
	u, _, err := s.cfg.Store.Authenticate(r.Context(), token)
	if errors.Is(err, store.ErrBadToken) {
		return store.User{}, sources.Errorf(http.StatusUnauthorized, "unauthorized", "invalid or revoked API token")
	}
	if err != nil {
		s.cfg.Logger.Error("git hook: authentication failed", "err", err)
		return store.User{}, sources.Errorf(http.StatusInternalServerError, "internal", "internal error; the server log has the details")
	}
	return u, nil
}

func (s *Server) refuse(w http.ResponseWriter, r *http.Request, project, reason string, e *sources.Error) {
	s.cfg.Metrics.Count(sources.SourceGit, sources.OutcomeRefused, reason)
	s.cfg.Logger.Warn("git hook request refused", "project", clip(project), "reason", reason, "status", e.Status, "remote", r.RemoteAddr)
	sources.WriteError(w, e)
}

func (s *Server) internal(w http.ResponseWriter, project string, err error) {
	s.cfg.Metrics.Count(sources.SourceGit, sources.OutcomeRefused, "internal")
	s.cfg.Logger.Error("git hook request failed", "project", clip(project), "err", err)
	sources.WriteError(w, sources.Errorf(http.StatusInternalServerError, "internal", "internal error; the server log has the details"))
}
