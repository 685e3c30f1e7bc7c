// Package web is buildbridge's dashboard: the page and its script bundle,
// embedded in the binary, and browser sign-in. A user signs in with an API
// token, which is exchanged for an HttpOnly session cookie; the page then
// uses the REST API with that cookie (state-changing calls carry a CSRF
// token) and gets every update pushed on the user's private channel.
//
// The bundle is built from src/ by `make web` into dist/. Until it is, the
// package still builds (dist/ holds a placeholder) and the dashboard's
// pages say how to build it.
package web

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/buildbridge/buildbridge/store"
)

//go:embed all:dist
var distFS embed.FS

//go:embed page.html
var pageHTML string

// Store is what the dashboard needs of the store: tokens to sign in with,
// and sessions.
type Store interface {
	Authenticate(ctx context.Context, token string) (store.User, store.Token, error)
	CreateSession(ctx context.Context, userID, tokenID int64, ttl time.Duration) (string, store.Session, error)
	SessionUser(ctx context.Context, secret string) (store.User, store.Session, error)
	DeleteSession(ctx context.Context, secret string) error
}

// Config configures the dashboard.
type Config struct {
	Store Store
	// BaseURL is the hub's public URL. When it is https, the session
	// cookie is Secure (and named with the __Host- prefix).
	BaseURL string
	// SessionTTL is how long a sign-in lasts (default 7 days); it never
	// outlives the token it was made from.
	SessionTTL time.Duration
	// Assets, when set, replaces the embedded bundle (tests use it).
	Assets fs.FS
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.SessionTTL == 0 {
		c.SessionTTL = 7 * 24 * time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Assets == nil {
		c.Assets, _ = fs.Sub(distFS, "dist")
	}
}

// Validate reports the first setting that cannot work.
func (c *Config) Validate() error {
	if c.Store == nil {
		return errors.New("web: Store is required")
	}
	if c.SessionTTL < time.Minute {
		return errors.New("web: SessionTTL must be at least a minute")
	}
	if c.BaseURL != "" {
		u, err := url.Parse(c.BaseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return errors.New("web: BaseURL must be an http or https URL")
		}
	}
	return nil
}

// asset is one file of the bundle, held in memory with its content type.
type asset struct {
	body  []byte
	ctype string
	etag  string
}

// Handler serves the dashboard's pages, its bundle and its session
// endpoints, and authenticates API requests by session (see SessionUser).
type Handler struct {
	cfg     Config
	secure  bool
	cookie  string
	assets  map[string]asset
	version string // of the bundle, for cache busting
	page    *template.Template
	xorigin *http.CrossOriginProtection
}

// New builds the handler. A missing bundle is not an error: the pages then
// say to run `make web`.
func New(cfg Config) (*Handler, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	h := &Handler{cfg: cfg, assets: map[string]asset{}, xorigin: http.NewCrossOriginProtection(),
		secure: strings.HasPrefix(cfg.BaseURL, "https:")}
	h.cookie = "bb_session"
	if h.secure {
		h.cookie = "__Host-bb_session" // Secure, Path=/, no Domain: cannot be set by a sibling host
	}
	var err error
	if h.page, err = template.New("page").Parse(pageHTML); err != nil {
		return nil, err
	}
	sum := sha256.New()
	for _, name := range []string{"app.js", "app.css"} {
		b, err := fs.ReadFile(cfg.Assets, name)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		ctype := "text/javascript; charset=utf-8"
		if path.Ext(name) == ".css" {
			ctype = "text/css; charset=utf-8"
		}
		fileSum := sha256.Sum256(b)
		h.assets[name] = asset{body: b, ctype: ctype, etag: `"` + hex.EncodeToString(fileSum[:8]) + `"`}
		sum.Write(b)
	}
	h.version = hex.EncodeToString(sum.Sum(nil)[:6])
	return h, nil
}

// Pages are the dashboard's own paths, each answered with the page that
// renders it in the browser.
var pages = []string{"GET /{$}", "GET /signin", "GET /builds/{id}", "GET /projects/{name}", "GET /deliveries"}

// Register adds the dashboard's routes to mux: its pages, /assets/ and
// /session. Every other path is left to the rest of the server.
func (h *Handler) Register(mux *http.ServeMux) {
	for _, p := range pages {
		mux.HandleFunc(p, h.servePage)
	}
	mux.HandleFunc("GET /assets/{file}", h.serveAsset)
	mux.HandleFunc("GET /session", h.getSession)
	mux.Handle("POST /session", h.xorigin.Handler(http.HandlerFunc(h.signIn)))
	mux.Handle("DELETE /session", h.xorigin.Handler(http.HandlerFunc(h.signOut)))
}

// BundleBuilt reports whether the script bundle is embedded.
func (h *Handler) BundleBuilt() bool {
	_, js := h.assets["app.js"]
	_, css := h.assets["app.css"]
	return js && css
}

// securityHeaders are sent with every page: the page loads only its own
// script and styles, talks only to this origin and its WebSocket, and is
// never framed.
func securityHeaders(w http.ResponseWriter) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
		"connect-src 'self' ws: wss:; manifest-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "same-origin")
	hd.Set("X-Frame-Options", "DENY")
}

const missingBundle = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>buildbridge: dashboard not built</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem; line-height: 1.5">
<h1>The dashboard is not built into this binary</h1>
<p>This buildbridge was compiled before its dashboard bundle was built. Build it, then the binary:</p>
<pre style="background:#f3f3f3; padding: 1rem">make web build</pre>
<p>(<code>make run</code> and <code>make test</code> do both.) The API at <a href="/api/v1/user">/api/v1</a> works as it is.</p>
</body></html>
`

func (h *Handler) servePage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-cache")
	if !h.BundleBuilt() {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(missingBundle))
		return
	}
	securityHeaders(w)
	var buf bytes.Buffer
	if err := h.page.Execute(&buf, struct{ Version string }{h.version}); err != nil {
		h.cfg.Logger.Error("render dashboard page", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Write(buf.Bytes())
}

func (h *Handler) serveAsset(w http.ResponseWriter, r *http.Request) {
	a, ok := h.assets[r.PathValue("file")]
	if !ok {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		http.Error(w, "no such asset", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", a.ctype)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("ETag", a.etag)
	// A versioned URL never changes content; an unversioned one is
	// revalidated.
	if r.URL.Query().Get("v") == h.version {
		w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		w.Header().Set("Cache-Control", "no-cache")
	}
	if match := r.Header.Get("If-None-Match"); match == a.etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Write(a.body)
}
