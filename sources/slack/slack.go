// Package slack is the Slack source: the /buildbridge slash command
// (POST /slack/commands: build PROJECT [BRANCH], status PROJECT, help)
// and the Rebuild button of buildbridge's Slack messages (POST
// /slack/interactions).
//
// Every request is verified as Slack signs it: X-Slack-Signature is v0=
// and the hex HMAC-SHA256, with the app's signing secret, of
// "v0:TIMESTAMP:BODY" (slack-go's secrets verifier), and
// X-Slack-Request-Timestamp must be within five minutes. A signature is
// accepted once: replays within the window are refused.
//
// Slack users map to buildbridge users through the configuration, by
// Slack user id or by email (looked up with users.info and a bot
// token). An unmapped user, or a project the user cannot see, gets an
// ephemeral error and nothing runs. Slack wants an answer within three
// seconds: a command that takes longer answers "working on it" and
// posts its result to the request's response URL when done.
package slack

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	slackapi "github.com/slack-go/slack"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/sources"
	"github.com/buildbridge/buildbridge/store"
)

// RebuildActionID is the action id of the Rebuild button the slack sink
// puts in its messages (sinks/slack.RebuildActionID); its value is the
// build id. A source knows nothing about sinks: the two agree on it.
const RebuildActionID = "buildbridge_rebuild"

// DefaultAPIURL is Slack's Web API.
const DefaultAPIURL = "https://slack.com/api/"

// slackResponseURLs is where Slack's response URLs point.
const slackResponseURLs = "https://hooks.slack.com/"

// Store is what the source reads and writes; *store.DB implements it.
type Store interface {
	UserByName(ctx context.Context, name string) (store.User, error)
	ProjectByName(ctx context.Context, name string) (builds.Project, error)
	ProjectByID(ctx context.Context, id int64) (builds.Project, error)
	Build(ctx context.Context, id int64) (builds.Build, error)
	ListBuilds(ctx context.Context, f store.BuildFilter) ([]builds.Build, error)
	CreateBuild(ctx context.Context, nb store.NewBuild) (builds.Build, error)
}

// Scheduler is told when a build was queued.
type Scheduler interface{ Wake() }

// Commit is a resolved commit.
type Commit struct {
	SHA, Ref, Branch, Author, AuthorEmail, Message string
}

// Resolver finds the commit a branch of a repository points to.
type Resolver func(ctx context.Context, repo, ref string) (Commit, error)

// Config configures the source.
type Config struct {
	// SigningSecret is the Slack app's signing secret. Required.
	SigningSecret string
	// Users maps Slack user ids (U…) or emails to buildbridge user names.
	Users map[string]string
	// BotToken looks up a user's email (users.info, scope
	// users:read.email) for the email keys of Users.
	BotToken string
	// APIURL is Slack's Web API (default DefaultAPIURL). Response URLs
	// are followed only to https://hooks.slack.com/ or to this host.
	APIURL string
	// BuildURL prefixes a build id to link to it (".../builds/").
	BuildURL  string
	Store     Store
	Scheduler Scheduler
	Resolve   Resolver
	// Window is how far a request's timestamp may be from now (default
	// 5m, Slack's).
	Window time.Duration
	// ReplyWithin is how long a command may run before the answer goes
	// to the response URL instead (default 2s; Slack waits 3s).
	ReplyWithin time.Duration
	// MaxBodyBytes bounds a request (default 64 KiB).
	MaxBodyBytes int64
	// HTTPClient posts to response URLs and calls users.info.
	HTTPClient *http.Client
	// Now is the clock of the timestamp window (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.APIURL == "" {
		c.APIURL = DefaultAPIURL
	}
	if !strings.HasSuffix(c.APIURL, "/") {
		c.APIURL += "/"
	}
	if c.Window == 0 {
		c.Window = 5 * time.Minute
	}
	if c.ReplyWithin == 0 {
		c.ReplyWithin = 2 * time.Second
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 64 << 10
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports the first missing or impossible setting.
func (c *Config) Validate() error {
	switch {
	case c.SigningSecret == "":
		return errors.New("slack source: SigningSecret is required")
	case c.Store == nil || c.Scheduler == nil || c.Resolve == nil:
		return errors.New("slack source: Store, Scheduler and Resolve are required")
	case c.Window <= 0 || c.Window > time.Hour:
		return fmt.Errorf("slack source: Window must be positive and at most 1h, got %s", c.Window)
	case c.ReplyWithin <= 0:
		return errors.New("slack source: ReplyWithin must be positive")
	case c.MaxBodyBytes < 1024:
		return errors.New("slack source: MaxBodyBytes must be at least 1024")
	}
	if u, err := url.Parse(c.APIURL); err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return fmt.Errorf("slack source: APIURL %q is not an http(s) URL", c.APIURL)
	}
	for key, name := range c.Users {
		if err := ValidUserKey(key); err != nil {
			return fmt.Errorf("slack source: Users: %v", err)
		}
		if err := store.ValidUserName(name); err != nil {
			return fmt.Errorf("slack source: Users[%s]: %v", key, err)
		}
		if strings.Contains(key, "@") && c.BotToken == "" {
			return fmt.Errorf("slack source: Users[%s]: an email key needs BotToken to look users up", key)
		}
	}
	return nil
}

// ValidUserKey accepts a Slack user id (U or W, then capitals and
// digits) or an email address.
func ValidUserKey(key string) error {
	if strings.Contains(key, "@") {
		if _, d, _ := strings.Cut(key, "@"); d == "" || strings.ContainsAny(key, " <>") {
			return fmt.Errorf("%q is not an email address", key)
		}
		return nil
	}
	if len(key) < 3 || len(key) > 32 || (key[0] != 'U' && key[0] != 'W') {
		return fmt.Errorf("%q is neither a Slack user id (U0123ABCD) nor an email", key)
	}
	for _, c := range key[1:] {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return fmt.Errorf("%q is neither a Slack user id (U0123ABCD) nor an email", key)
		}
	}
	return nil
}

// Handler serves the Slack endpoints.
type Handler struct {
	cfg    Config
	log    *slog.Logger
	api    *slackapi.Client // users.info, with a bot token
	users  map[string]string
	emails bool // some keys of users are emails

	seenMu sync.Mutex
	seen   map[string]time.Time // signature → when it may be forgotten

	emailMu sync.Mutex
	emailOf map[string]cachedEmail

	bg     context.Context
	stop   context.CancelFunc
	wg     sync.WaitGroup
	closed bool
	mu     sync.Mutex
}

type cachedEmail struct {
	email   string
	expires time.Time
}

// New makes the handler.
func New(cfg Config) (*Handler, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	h := &Handler{cfg: cfg, log: cfg.Logger.With("source", "slack"), users: map[string]string{},
		seen: map[string]time.Time{}, emailOf: map[string]cachedEmail{}}
	for k, v := range cfg.Users {
		if strings.Contains(k, "@") {
			k = strings.ToLower(k)
			h.emails = true
		}
		h.users[k] = v
	}
	if cfg.BotToken != "" {
		h.api = slackapi.New(cfg.BotToken, slackapi.OptionAPIURL(cfg.APIURL), slackapi.OptionHTTPClient(cfg.HTTPClient))
	}
	h.bg, h.stop = context.WithCancel(context.Background())
	return h, nil
}

// Close stops the replies still running and waits for them.
func (h *Handler) Close() error {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	h.stop()
	h.wg.Wait()
	return nil
}

// goBackground runs fn in a goroutine Close waits for; false after Close.
func (h *Handler) goBackground(fn func(ctx context.Context)) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		fn(h.bg)
	}()
	return true
}

// Sign is Slack's request signature of body at ts with secret, for the
// X-Slack-Signature header (tests and tools that call the endpoints).
func Sign(secret string, ts time.Time, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	fmt.Fprintf(mac, "v0:%d:", ts.Unix())
	mac.Write(body)
	return "v0=" + hex.EncodeToString(mac.Sum(nil))
}

// verify reads a request's body and checks its signature, its timestamp
// and that it was not seen before.
func (h *Handler) verify(w http.ResponseWriter, r *http.Request) ([]byte, *sources.Error) {
	if r.Method != http.MethodPost {
		return nil, sources.Errorf(http.StatusMethodNotAllowed, "method_not_allowed", "use POST")
	}
	body, e := sources.ReadBody(w, r, h.cfg.MaxBodyBytes)
	if e != nil {
		return nil, e
	}
	tsText := r.Header.Get("X-Slack-Request-Timestamp")
	sig := r.Header.Get("X-Slack-Signature")
	if tsText == "" || sig == "" {
		return nil, sources.Errorf(http.StatusUnauthorized, "unsigned", "X-Slack-Signature and X-Slack-Request-Timestamp are required")
	}
	ts, err := strconv.ParseInt(tsText, 10, 64)
	if err != nil {
		return nil, sources.Errorf(http.StatusUnauthorized, "bad_timestamp", "X-Slack-Request-Timestamp is not a number of seconds")
	}
	now := h.cfg.Now()
	if d := now.Sub(time.Unix(ts, 0)); d > h.cfg.Window || d < -h.cfg.Window {
		return nil, sources.Errorf(http.StatusUnauthorized, "stale_request", "the request's timestamp is more than %s away from now", h.cfg.Window)
	}
	v, err := slackapi.NewSecretsVerifier(r.Header, h.cfg.SigningSecret)
	if err == nil {
		v.Write(body)
		err = v.Ensure()
	}
	if err != nil {
		return nil, sources.Errorf(http.StatusUnauthorized, "bad_signature", "the request's signature does not verify with the signing secret")
	}
	// Accepted once: a replay within the window is refused, and after it
	// the timestamp check refuses it.
	h.seenMu.Lock()
	defer h.seenMu.Unlock()
	if _, dup := h.seen[sig]; dup {
		return nil, sources.Errorf(http.StatusUnauthorized, "replayed", "this request was already received")
	}
	if len(h.seen) > 1000 {
		for s, until := range h.seen {
			if now.After(until) {
				delete(h.seen, s)
			}
		}
	}
	if len(h.seen) >= maxSeen {
		return nil, sources.Errorf(http.StatusServiceUnavailable, "busy", "too many requests in the replay window")
	}
	h.seen[sig] = time.Unix(ts, 0).Add(h.cfg.Window)
	return body, nil
}

// maxSeen bounds the signatures remembered for the replay window.
const maxSeen = 200_000

// reply is a message to the user: ephemeral unless InChannel.
type reply struct {
	Text      string
	InChannel bool
}

func (m reply) json() map[string]any {
	t := "ephemeral"
	if m.InChannel {
		t = "in_channel"
	}
	return map[string]any{"response_type": t, "text": m.Text, "replace_original": false}
}

func ephemeral(format string, args ...any) reply { return reply{Text: fmt.Sprintf(format, args...)} }

// postResponse posts a reply to a response URL Slack gave.
func (h *Handler) postResponse(ctx context.Context, responseURL string, m reply) {
	if !h.allowedResponseURL(responseURL) {
		h.log.Warn("response URL refused: not a Slack URL", "url_host", hostOf(responseURL))
		return
	}
	if err := slackapi.PostWebhookCustomHTTPContext(ctx, responseURL, h.cfg.HTTPClient, &slackapi.WebhookMessage{
		Text: m.Text, ResponseType: m.json()["response_type"].(string)}); err != nil {
		h.log.Warn("posting to the response URL", "err", err)
	}
}

func hostOf(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	return u.Host
}

// allowedResponseURL accepts Slack's response URLs (and those of the
// configured API host, a test server or a proxy).
func (h *Handler) allowedResponseURL(s string) bool {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.User != nil {
		return false
	}
	if strings.HasPrefix(s, slackResponseURLs) {
		return true
	}
	api, _ := url.Parse(h.cfg.APIURL)
	return u.Scheme == api.Scheme && u.Host == api.Host
}
