// Package api is buildbridge's REST API v1: projects, builds, logs,
// artifacts and tokens, behind Bearer-token authentication. Users see their
// own projects; admins see all. Every error is JSON
// {"error":{"code","message"}} with the status that fits.
package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/store"
)

// Scheduler is the part of the build queue the API drives.
type Scheduler interface {
	// Wake tells the queue a build was queued.
	Wake()
	// Cancel stops a running build now; the queue records it as canceled.
	Cancel(buildID int64)
}

// CommitResolver turns a branch or sha of a repository into a commit with
// its metadata.
type CommitResolver func(ctx context.Context, repo, ref string) (Commit, error)

// Commit is what a resolver found.
type Commit struct {
	SHA, Ref, Branch, Author, AuthorEmail, Message string
}

// ErrRefNotFound is wrapped by resolvers when a branch or commit does not
// exist; the API answers 422.
var ErrRefNotFound = errors.New("ref not found")

// Config configures the API.
type Config struct {
	Store     *store.DB
	Scheduler Scheduler
	Resolve   CommitResolver
	// ArtifactsDir holds each build's kept files under <dir>/<build id>/.
	ArtifactsDir string
	// MaxBodyBytes bounds request bodies (default 1 MiB).
	MaxBodyBytes int64
	// BaseURL is where users reach the hub, for links (default empty).
	BaseURL    string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() {
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports a missing or impossible setting.
func (c *Config) Validate() error {
	switch {
	case c.Store == nil:
		return errors.New("api: Store is required")
	case c.Scheduler == nil:
		return errors.New("api: Scheduler is required")
	case c.Resolve == nil:
		return errors.New("api: Resolve is required")
	case c.ArtifactsDir == "":
		return errors.New("api: ArtifactsDir is required")
	case c.MaxBodyBytes < 1024:
		return errors.New("api: MaxBodyBytes must be at least 1024")
	}
	return nil
}

// API serves /api/v1.
type API struct {
	cfg    Config
	engine *gin.Engine
	// Group is the authenticated /api/v1 route group; other packages add
	// their routes to it.
	Group    *gin.RouterGroup
	latency  *prometheus.HistogramVec
	channels *ChannelConfig
	sessions Sessions
	// afterAuth run, in order, right after authentication.
	afterAuth []gin.HandlerFunc
}

// UseAfterAuth adds h to the handlers run after a request to /api/v1 is
// authenticated and before its route's handlers, whatever the route and
// whenever it was added; CurrentUser and CurrentTokenID are then set. h
// may abort the request. A handler that calls c.Next (to see the answer)
// runs the route's handlers there, so it must be the last one added.
// Call it before serving.
func (a *API) UseAfterAuth(h gin.HandlerFunc) { a.afterAuth = append(a.afterAuth, h) }

// Sessions authenticates requests that carry a browser session (the
// dashboard's cookie) instead of an Authorization header. The web package
// implements it.
type Sessions interface {
	// SessionUser returns the user of the request's session. ok is false,
	// with a nil error, when the request carries no session at all. An
	// invalid or expired session, or a state-changing request without its
	// CSRF token, is an error (an *Error from NewError).
	SessionUser(r *http.Request) (u store.User, ok bool, err error)
}

// UseSessions lets requests without an Authorization header authenticate
// with a session. Call it before serving.
func (a *API) UseSessions(s Sessions) { a.sessions = s }

func init() { gin.SetMode(gin.ReleaseMode) }

// New builds the API and its routes.
func New(cfg Config) (*API, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &API{cfg: cfg, engine: gin.New()}
	a.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "buildbridge_http_request_duration_seconds",
		Help:    "HTTP request latency by route, method and status.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"route", "method", "code"})
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(a.latency); err != nil {
			return nil, err
		}
	}
	a.engine.HandleMethodNotAllowed = true
	a.engine.Use(a.observe, gin.CustomRecovery(func(c *gin.Context, rec any) {
		a.cfg.Logger.Error("panic in handler", "path", c.FullPath(), "panic", rec)
		a.fail(c, errorf(http.StatusInternalServerError, "internal", "internal error"))
	}))
	a.engine.NoRoute(func(c *gin.Context) {
		a.fail(c, errorf(http.StatusNotFound, "not_found", "no such endpoint: %s %s", c.Request.Method, c.Request.URL.Path))
	})
	a.engine.NoMethod(func(c *gin.Context) {
		a.fail(c, errorf(http.StatusMethodNotAllowed, "method_not_allowed", "%s is not allowed on %s", c.Request.Method, c.Request.URL.Path))
	})
	a.Group = a.engine.Group("/api/v1", a.authenticate)
	a.routes(a.Group)
	return a, nil
}

// Engine is the gin engine, for mounting more routes outside /api/v1.
func (a *API) Engine() *gin.Engine { return a.engine }

// ServeHTTP serves the API.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.engine.ServeHTTP(w, r) }

func (a *API) routes(g *gin.RouterGroup) {
	g.GET("/user", a.whoami)
	g.GET("/user/tokens", a.listTokens)
	g.POST("/user/tokens", a.createToken)
	g.DELETE("/user/tokens/:id", a.revokeToken)

	g.POST("/projects", a.createProject)
	g.GET("/projects", a.listProjects)
	g.GET("/projects/:name", a.getProject)
	g.PATCH("/projects/:name", a.patchProject)
	g.DELETE("/projects/:name", a.deleteProject)
	g.POST("/projects/:name/builds", a.triggerBuild)
	g.GET("/projects/:name/builds", a.listBuilds)

	g.GET("/builds/:id", a.getBuild)
	g.POST("/builds/:id/cancel", a.cancelBuild)
	g.POST("/builds/:id/rebuild", a.rebuild)
	g.GET("/builds/:id/log", a.buildLog)
	g.GET("/builds/:id/events", a.buildEvents)
	g.GET("/builds/:id/artifacts", a.listArtifacts)
	g.GET("/builds/:id/artifacts/*path", a.downloadArtifact)
}

func (a *API) observe(c *gin.Context) {
	start := time.Now()
	c.Next()
	route := c.FullPath()
	if route == "" {
		route = "unmatched"
	}
	a.latency.WithLabelValues(route, c.Request.Method, strconv.Itoa(c.Writer.Status())).Observe(time.Since(start).Seconds())
}

type ctxKey struct{}

// authenticate checks the Bearer token, stores the user and the token's
// id in the context and runs the after-authentication handlers.
func (a *API) authenticate(c *gin.Context) {
	u, tokenID, err := a.authRequest(c.Request)
	if err != nil {
		c.Header("WWW-Authenticate", `Bearer realm="buildbridge"`)
		a.fail(c, err)
		return
	}
	c.Set("user", u)
	c.Set("token_id", tokenID)
	for _, h := range a.afterAuth {
		h(c)
		if c.IsAborted() {
			return
		}
	}
	c.Next()
}

// UserFromRequest returns the user whose Bearer token the request carries,
// or, with no Authorization header, whose session it carries (see
// UseSessions); otherwise an *Error with status 401 (403 for a session
// request that fails its CSRF check).
func (a *API) UserFromRequest(r *http.Request) (store.User, error) {
	u, _, err := a.authRequest(r)
	return u, err
}

// authRequest is UserFromRequest that also returns the token's id (0 for
// a session).
func (a *API) authRequest(r *http.Request) (store.User, int64, error) {
	h := r.Header.Get("Authorization")
	if h == "" && a.sessions != nil {
		if u, ok, err := a.sessions.SessionUser(r); ok || err != nil {
			return u, 0, err
		}
	}
	scheme, token, ok := strings.Cut(h, " ")
	if h == "" {
		return store.User{}, 0, errorf(http.StatusUnauthorized, "unauthorized", "missing Authorization header; send \"Authorization: Bearer <token>\"")
	}
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return store.User{}, 0, errorf(http.StatusUnauthorized, "unauthorized", "Authorization header must be \"Bearer <token>\"")
	}
	u, t, err := a.cfg.Store.Authenticate(r.Context(), strings.TrimSpace(token))
	if errors.Is(err, store.ErrBadToken) {
		return store.User{}, 0, errorf(http.StatusUnauthorized, "unauthorized", "invalid or revoked API token")
	}
	if err != nil {
		return store.User{}, 0, err
	}
	return u, t.ID, nil
}

// CurrentUser returns the authenticated user of a request in the group.
func CurrentUser(c *gin.Context) store.User {
	u, _ := c.Get("user")
	user, _ := u.(store.User)
	return user
}

// CurrentTokenID returns the id of the API token that authenticated a
// request in the group, 0 for a dashboard session.
func CurrentTokenID(c *gin.Context) int64 {
	v, _ := c.Get("token_id")
	id, _ := v.(int64)
	return id
}

func (a *API) whoami(c *gin.Context) { c.JSON(http.StatusOK, CurrentUser(c)) }

// project loads a project by name that the caller may see. Another user's
// project is reported as not found, so names do not leak.
func (a *API) project(c *gin.Context) (builds.Project, bool) {
	name := c.Param("name")
	p, err := a.cfg.Store.ProjectByName(c.Request.Context(), name)
	u := CurrentUser(c)
	if err == nil && !u.Admin && p.OwnerID != u.ID {
		err = errorf(http.StatusNotFound, "not_found", "project %q not found", name)
	}
	if errors.Is(err, store.ErrNotFound) {
		err = errorf(http.StatusNotFound, "not_found", "project %q not found", name)
	}
	if err != nil {
		a.fail(c, err)
		return p, false
	}
	return p, true
}

// build loads a build by id whose project the caller may see.
func (a *API) build(c *gin.Context) (builds.Build, builds.Project, bool) {
	id, err := strconv.ParseInt(c.Param("id"), 10, 64)
	if err != nil || id <= 0 {
		a.fail(c, errorf(http.StatusBadRequest, "invalid_id", "build id %q must be a positive integer", c.Param("id")))
		return builds.Build{}, builds.Project{}, false
	}
	notFound := errorf(http.StatusNotFound, "not_found", "build %d not found", id)
	b, err := a.cfg.Store.Build(c.Request.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		err = notFound
	}
	if err != nil {
		a.fail(c, err)
		return b, builds.Project{}, false
	}
	p, err := a.cfg.Store.ProjectByID(c.Request.Context(), b.ProjectID)
	if err != nil {
		a.fail(c, err)
		return b, p, false
	}
	if u := CurrentUser(c); !u.Admin && p.OwnerID != u.ID {
		a.fail(c, notFound)
		return b, p, false
	}
	return b, p, true
}
