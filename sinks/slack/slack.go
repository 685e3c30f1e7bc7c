// Package slack is the slack sink: build events as Slack messages,
// through a bot token (chat.postMessage, then chat.update) or an
// incoming webhook, with slack-go.
//
// With a bot token, a build is one message per channel, edited in place
// as the build goes QUEUED → STARTED → FINISHED: the message's ts is kept
// in the store per (sink, target, build), and an older event never
// overwrites a newer state. A failed build may get a reply in the
// message's thread that mentions the commit author (a mention added by
// an edit notifies nobody): the author's Slack user comes from the
// sink's mentions mapping, or users.lookupByEmail (cached).
//
// The default layout puts the rendered template in an attachment
// coloured by status, with an Open build link button and a Rebuild
// button (action id RebuildActionID, value the build id) that the Slack
// source answers. A template that renders a JSON object with text,
// blocks or attachments is posted as is.
//
// Slack's rate limits (429 with Retry-After) go back to the delivery
// engine as a retry-after; channel_not_found, not_in_channel,
// invalid_auth and the other errors no retry can fix fail the delivery
// at once with a message that says what to fix.
//
// Importing the package completes the sink type "slack" declared by
// package sinks.
package slack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	slackapi "github.com/slack-go/slack"

	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/sinks/delivery"
	"github.com/buildbridge/buildbridge/store"
)

// RebuildActionID is the action id of the Rebuild button; its value is
// the build id. The Slack source answers it.
const RebuildActionID = "buildbridge_rebuild"

// DefaultAPIURL is Slack's Web API.
const DefaultAPIURL = "https://slack.com/api/"

// Store keeps the message of each build; *store.DB implements it.
type Store interface {
	SlackMessage(ctx context.Context, sink, target string, buildID int64) (store.SlackMessage, error)
	SaveSlackMessage(ctx context.Context, m store.SlackMessage) error
	PruneSlackMessages(ctx context.Context, before time.Time) (int64, error)
}

type storeBox struct{ s Store }

// shared is the store of sinks made by the type's New (rules files):
// set by UseStore, looked up at delivery time, so that the rules can be
// loaded before the store is given.
var shared atomic.Pointer[storeBox]

// UseStore sets the store of the slack sinks the rules make. Until it is
// called, their deliveries with a bot token fail as temporary.
func UseStore(s Store) {
	if s == nil {
		shared.Store(nil)
		return
	}
	shared.Store(&storeBox{s: s})
}

// ErrNoStore is returned while a sink has no store to keep messages in.
var ErrNoStore = errors.New("slack: no store for the messages' ts (slack.UseStore was not called)")

// Type is the slack sink type: the specification of package sinks, with
// the delivery policy settings and New.
var Type = func() sinks.Type {
	t, ok := sinks.Lookup("slack")
	if !ok {
		panic("slack: package sinks does not declare the slack type")
	}
	t.Settings = append(append([]sinks.Setting(nil), t.Settings...), delivery.PolicySettings()...)
	spec := t.Check
	t.Check = func(c *sinks.Config) []*sinks.ConfigError {
		var errs []*sinks.ConfigError
		if spec != nil {
			errs = spec(c)
		}
		for email, id := range c.Map("mentions") {
			if !strings.Contains(email, "@") {
				errs = append(errs, c.Errorf("mentions", "%q is not an email address", email))
			}
			if !validUserID(strings.TrimSpace(id)) {
				errs = append(errs, c.Errorf("mentions", "%s: %q is not a Slack user id like U0123ABCD", email, id))
			}
		}
		return append(errs, delivery.CheckPolicy(c)...)
	}
	t.New = New
	return t
}()

func init() { sinks.Register(Type) }

// validUserID accepts Slack user ids: U or W and upper-case letters and
// digits.
func validUserID(id string) bool {
	if len(id) < 3 || len(id) > 32 || (id[0] != 'U' && id[0] != 'W') {
		return false
	}
	for _, c := range id[1:] {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// Options are the process-wide settings of slack sinks.
type Options struct {
	// Store keeps the messages' ts (default: the one given to UseStore).
	Store Store
	// HTTPClient makes the requests (default: a client with Timeout).
	HTTPClient *http.Client
	// Timeout bounds one request (default 15s).
	Timeout time.Duration
	// MessageTTL is how long a build's message is kept for edits after
	// its last event (default 30 days).
	MessageTTL time.Duration
	// UserCacheTTL is how long users.lookupByEmail answers are kept
	// (default 1h; not found: a tenth of it).
	UserCacheTTL time.Duration
	// Now is the clock (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.Timeout == 0 {
		o.Timeout = 15 * time.Second
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: o.Timeout}
	}
	if o.MessageTTL == 0 {
		o.MessageTTL = 30 * 24 * time.Hour
	}
	if o.UserCacheTTL == 0 {
		o.UserCacheTTL = time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Validate reports an impossible option.
func (o *Options) Validate() error {
	switch {
	case o.Timeout < 0:
		return errors.New("slack: Options.Timeout must not be negative")
	case o.MessageTTL < 0 || o.UserCacheTTL < 0:
		return errors.New("slack: Options.MessageTTL and UserCacheTTL must not be negative")
	}
	return nil
}

// Sink posts to one workspace, through a bot token or one webhook.
type Sink struct {
	name     string
	opts     Options
	log      *slog.Logger
	api      *slackapi.Client // bot token mode
	webhook  string           // webhook mode
	mentions map[string]string
	lookup   bool
	users    *userCache

	pruneMu   sync.Mutex
	lastPrune time.Time
}

// New makes a slack sink with the default Options: the type's New.
func New(c *sinks.Config) (sinks.Sink, error) { return NewSink(c, Options{}) }

// NewSink makes a slack sink from its configuration.
func NewSink(c *sinks.Config, opts Options) (*Sink, error) {
	opts.setDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	s := &Sink{name: c.Name, opts: opts, log: opts.Logger.With("sink", c.Name), mentions: map[string]string{},
		lookup: c.Bool("lookup_users")}
	for email, id := range c.Map("mentions") {
		s.mentions[strings.ToLower(strings.TrimSpace(email))] = strings.TrimSpace(id)
	}
	switch {
	case c.IsSet("webhook_url"):
		s.webhook = c.Secret("webhook_url").Reveal()
		if u, err := url.Parse(s.webhook); err != nil || u.Host == "" {
			return nil, errors.New("webhook_url: not a URL (value not shown)")
		}
	case c.IsSet("token"):
		base := c.Text("api_url")
		if base == "" {
			base = DefaultAPIURL
		}
		if !strings.HasSuffix(base, "/") {
			base += "/"
		}
		s.api = slackapi.New(c.Secret("token").Reveal(), slackapi.OptionAPIURL(base), slackapi.OptionHTTPClient(opts.HTTPClient))
		s.users = newUserCache(s.api, opts.UserCacheTTL, opts.Now)
	default:
		return nil, errors.New("token or webhook_url is required")
	}
	return s, nil
}

func (s *Sink) store() Store {
	if s.opts.Store != nil {
		return s.opts.Store
	}
	if b := shared.Load(); b != nil {
		return b.s
	}
	return nil
}

// Deliver posts or updates the message of one delivery.
func (s *Sink) Deliver(ctx context.Context, d sinks.Delivery) error {
	_, err := s.Send(ctx, delivery.Attempt{Delivery: d, Number: 1})
	return err
}

// Send posts or updates the message of one delivery and reports what it
// did in the response body, for the delivery log.
func (s *Sink) Send(ctx context.Context, a delivery.Attempt) (delivery.Response, error) {
	d := &a.Delivery
	m, err := compose(d)
	if err != nil {
		return delivery.Response{}, delivery.Permanent(err)
	}
	failed := m.failed()
	threaded := s.api != nil && failed && d.Params["thread_on_failure"] != "false" && m.build != nil
	var mention string
	if failed && m.build != nil {
		mention = s.mention(ctx, m.build.AuthorEmail)
		if !threaded {
			m.addMention(mention)
		}
	}
	if s.webhook != "" {
		return s.postWebhook(ctx, d, m)
	}
	channel := d.Params["channel"]
	opts := s.msgOptions(d, m)
	if m.build == nil || m.build.ID == 0 {
		ch, ts, err := s.api.PostMessageContext(ctx, channel, opts...)
		if err != nil {
			return delivery.Response{}, classify("chat.postMessage", channel, err)
		}
		return answer("chat.postMessage", ch, ts), nil
	}

	st := s.store()
	if st == nil {
		return delivery.Response{}, ErrNoStore
	}
	s.prune(ctx, st)
	msg, err := st.SlackMessage(ctx, d.Sink, d.Target, m.build.ID)
	found := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return delivery.Response{}, fmt.Errorf("loading the build's message: %w", err)
	}
	if found && d.Event.Seq < msg.Seq {
		return delivery.Response{Body: []byte(fmt.Sprintf("skipped: message %s in %s already shows a later event (seq %d)", msg.TS, msg.Channel, msg.Seq))}, nil
	}
	method := "chat.update"
	if found {
		_, _, _, err := s.api.UpdateMessageContext(ctx, msg.Channel, msg.TS, opts...)
		switch {
		case messageGone(err):
			// Deleted, or too old to edit: post a new one.
			s.log.Info("the build's message cannot be edited any more; posting a new one", "channel", msg.Channel, "ts", msg.TS, "reason", err)
			found = false
		case err != nil:
			return delivery.Response{}, classify(method, channel, err)
		}
	}
	if !found {
		method = "chat.postMessage"
		ch, ts, err := s.api.PostMessageContext(ctx, channel, opts...)
		if err != nil {
			return delivery.Response{}, classify(method, channel, err)
		}
		msg = store.SlackMessage{Sink: d.Sink, Target: d.Target, BuildID: m.build.ID, Channel: ch, TS: ts}
	}
	msg.Seq = max(msg.Seq, d.Event.Seq)
	if err := st.SaveSlackMessage(ctx, msg); err != nil {
		return delivery.Response{}, fmt.Errorf("%s done, but saving its ts failed: %w", method, err)
	}
	resp := answer(method, msg.Channel, msg.TS)
	if threaded && msg.ReplyTS == "" {
		_, rts, err := s.api.PostMessageContext(ctx, msg.Channel, s.replyOptions(d, m, mention, msg.TS)...)
		if err != nil {
			return resp, classify("chat.postMessage (thread reply)", channel, err)
		}
		msg.ReplyTS = rts
		if err := st.SaveSlackMessage(ctx, msg); err != nil {
			return resp, fmt.Errorf("thread reply posted, but saving its ts failed: %w", err)
		}
		resp.Body = append(resp.Body, fmt.Sprintf("; thread reply %s", rts)...)
	}
	return resp, nil
}

func answer(method, channel, ts string) delivery.Response {
	return delivery.Response{StatusCode: http.StatusOK, Body: []byte(fmt.Sprintf("%s ok: channel %s ts %s", method, channel, ts))}
}

// prune forgets old messages, at most once an hour.
func (s *Sink) prune(ctx context.Context, st Store) {
	now := s.opts.Now()
	s.pruneMu.Lock()
	if now.Sub(s.lastPrune) < time.Hour {
		s.pruneMu.Unlock()
		return
	}
	s.lastPrune = now
	s.pruneMu.Unlock()
	if n, err := st.PruneSlackMessages(ctx, now.Add(-s.opts.MessageTTL)); err != nil {
		s.log.Warn("pruning old slack messages", "err", err)
	} else if n > 0 {
		s.log.Debug("old slack messages forgotten", "count", n)
	}
}

// mention is the Slack mention of a commit author, or "".
func (s *Sink) mention(ctx context.Context, email string) string {
	email = strings.ToLower(strings.TrimSpace(email))
	if email == "" {
		return ""
	}
	if id, ok := s.mentions[email]; ok {
		return "<@" + id + ">"
	}
	if !s.lookup || s.users == nil {
		return ""
	}
	id, err := s.users.lookup(ctx, email)
	if err != nil {
		// A mention is a nicety: the message goes without it.
		s.log.Warn("users.lookupByEmail failed; posting without a mention", "err", err)
		return ""
	}
	if id == "" {
		return ""
	}
	return "<@" + id + ">"
}

func (s *Sink) msgOptions(d *sinks.Delivery, m *message) []slackapi.MsgOption {
	opts := []slackapi.MsgOption{slackapi.MsgOptionText(m.text, false)}
	if len(m.blocks) > 0 {
		opts = append(opts, slackapi.MsgOptionBlocks(m.blocks...))
	}
	if len(m.attachments) > 0 {
		opts = append(opts, slackapi.MsgOptionAttachments(m.attachments...))
	}
	return append(opts, s.identity(d)...)
}

func (s *Sink) identity(d *sinks.Delivery) []slackapi.MsgOption {
	var opts []slackapi.MsgOption
	if u := d.Params["username"]; u != "" {
		opts = append(opts, slackapi.MsgOptionUsername(u))
	}
	if e := d.Params["icon_emoji"]; e != "" {
		opts = append(opts, slackapi.MsgOptionIconEmoji(e))
	}
	return opts
}

func (s *Sink) replyOptions(d *sinks.Delivery, m *message, mention, ts string) []slackapi.MsgOption {
	return append([]slackapi.MsgOption{slackapi.MsgOptionText(m.replyText(mention), false), slackapi.MsgOptionTS(ts)}, s.identity(d)...)
}

// Close releases idle connections.
func (s *Sink) Close() error {
	s.opts.HTTPClient.CloseIdleConnections()
	return nil
}
