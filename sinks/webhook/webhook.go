// Package webhook is the webhook sink: an HTTP POST of the rendered
// message, signed as the Standard Webhooks specification says
// (webhook-id, webhook-timestamp, webhook-signature: v1,<base64
// HMAC-SHA256 of id.timestamp.body> with a whsec_ secret), so that
// receivers can verify it with any of that specification's libraries.
//
// During a secret rotation (previous_secret set) every message carries
// both signatures. A sink configured without a secret signs with the one
// the hub generated for it (Secrets), rotated through the API. Redirects are not followed, TLS certificates are
// verified, response bodies are read up to a cap, and the destination is
// checked at dial time by a Guard, so that a webhook cannot reach the
// server's own network unless an allow-list permits it.
//
// Importing the package completes the sink type "webhook" declared by
// package sinks.
package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"time"

	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/sinks/delivery"
)

// SettingPreviousSecret is the setting that holds the secret being
// rotated out.
const SettingPreviousSecret = "previous_secret"

// Type is the webhook sink type: the specification of package sinks,
// with previous_secret (secret rotation), the delivery policy settings
// (retry_schedule, concurrency, rate_limit, disable_after) and New.
var Type = func() sinks.Type {
	t, ok := sinks.Lookup("webhook")
	if !ok {
		panic("webhook: package sinks does not declare the webhook type")
	}
	t.Settings = append(append(append([]sinks.Setting(nil), t.Settings...),
		sinks.Setting{Name: SettingPreviousSecret, Kind: sinks.KindSecret,
			Doc: "the secret being rotated out: messages carry both signatures until it is removed"}),
		delivery.PolicySettings()...)
	spec := t.Check
	t.Check = func(c *sinks.Config) []*sinks.ConfigError {
		var errs []*sinks.ConfigError
		if spec != nil {
			errs = spec(c)
		}
		if c.IsSet(SettingPreviousSecret) && !c.IsSet("secret") {
			errs = append(errs, c.Errorf(SettingPreviousSecret, "needs secret: a generated secret is rotated with POST /api/v1/sinks/{name}/secret instead"))
		}
		if v := c.Value(SettingPreviousSecret); c.IsSet(SettingPreviousSecret) && !v.Unresolved() {
			if _, err := ParseSecret(v.Secret().Reveal()); err != nil {
				errs = append(errs, c.Errorf(SettingPreviousSecret, "must be whsec_ followed by the base64 of at least 16 bytes (value not shown)"))
			}
		}
		return append(errs, delivery.CheckPolicy(c)...)
	}
	t.New = New
	return t
}()

func init() { sinks.Register(Type) }

// Options are the server-wide settings of webhook sinks.
type Options struct {
	// Allow lists the networks the SSRF guard lets through although they
	// are loopback, private, link-local, … (see Guard).
	Allow []netip.Prefix
	// MaxResponseBody caps how much of a response is read and kept
	// (default 4 KiB).
	MaxResponseBody int64
	// RootCAs verifies servers' certificates (default: the system's).
	RootCAs *x509.CertPool
	// UserAgent is sent with every request (default "buildbridge-webhook").
	UserAgent string
	// Now is the clock of webhook-timestamp (default time.Now).
	Now func() time.Time
	// Secrets gives the sinks configured without a secret the one the
	// hub generated for them; without it such a sink cannot be made.
	Secrets *Secrets
}

func (o *Options) setDefaults() {
	if o.MaxResponseBody == 0 {
		o.MaxResponseBody = 4 << 10
	}
	if o.UserAgent == "" {
		o.UserAgent = "buildbridge-webhook"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Validate reports an impossible option.
func (o *Options) Validate() error {
	if o.MaxResponseBody < 0 {
		return errors.New("webhook: Options.MaxResponseBody must not be negative")
	}
	return nil
}

// loadTimeout bounds the store calls that give a sink its generated
// secret when it is made: the engine makes sinks without a context (on
// a rules reload too), and a slow store must not hold that up; a sink
// whose secret could not be read then reads it on its first message.
const loadTimeout = 5 * time.Second

// Sink posts deliveries to one URL.
type Sink struct {
	name    string
	url     string
	keys    [][]byte // the rules' secrets, current first; nil: secrets gives them
	secrets *Secrets
	headers http.Header
	timeout time.Duration
	opts    Options
	tr      *http.Transport
	client  *http.Client
}

// New makes a webhook sink with the default Options (no allow-list): the
// type's New.
func New(c *sinks.Config) (sinks.Sink, error) { return NewSink(c, Options{}) }

// NewSink makes a webhook sink from its configuration.
func NewSink(c *sinks.Config, opts Options) (*Sink, error) {
	opts.setDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	s := &Sink{name: c.Name, url: c.Text("url"), timeout: c.Duration("timeout"), opts: opts, headers: http.Header{}}
	if u, err := url.Parse(s.url); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("url: not an absolute http(s) URL")
	}
	for _, name := range []string{"secret", SettingPreviousSecret} {
		if !c.IsSet(name) {
			continue
		}
		key, err := ParseSecret(c.Secret(name).Reveal())
		if err != nil {
			return nil, fmt.Errorf("%s: %v", name, err)
		}
		s.keys = append(s.keys, key)
	}
	if len(s.keys) == 0 {
		if opts.Secrets == nil {
			return nil, errors.New("secret: not in the rules, and no store to keep a generated one")
		}
		s.secrets = opts.Secrets
		ctx, cancel := context.WithTimeout(context.Background(), loadTimeout)
		err := s.secrets.Load(ctx, s.name)
		cancel()
		if err != nil {
			opts.Secrets.cfg.Logger.Warn("webhook sink: its generated secret is not available yet; reading it again on the first message",
				"sink", s.name, "err", err)
		}
	}
	for k, v := range c.Map("headers") {
		s.headers.Set(k, v)
	}
	if s.timeout <= 0 {
		s.timeout = 15 * time.Second
	}
	guard := NewGuard(opts.Allow)
	dialer := &net.Dialer{Timeout: min(s.timeout, 10*time.Second), KeepAlive: 30 * time.Second, Control: guard.Control}
	s.tr = &http.Transport{
		Proxy:               nil, // a proxy would be dialled instead of the destination, past the guard
		DialContext:         dialer.DialContext,
		TLSClientConfig:     &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: opts.RootCAs},
		TLSHandshakeTimeout: 10 * time.Second,
		ForceAttemptHTTP2:   true,
		MaxIdleConns:        64,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	s.client = &http.Client{Transport: s.tr, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse // a redirect is an answer, not followed
	}}
	return s, nil
}

// Deliver sends one delivery, with the message id derived from it.
func (s *Sink) Deliver(ctx context.Context, d sinks.Delivery) error {
	_, err := s.Send(ctx, delivery.Attempt{Delivery: d, ID: delivery.MessageID(d.EventID, d.Sink, d.Target), Number: 1})
	return err
}

// Send posts one attempt and returns the answer, classified: 2xx is
// success, 410 Gone, other 4xx (but 408, 409, 425, 429) permanent, the
// rest temporary with Retry-After honoured; a refused destination
// address is permanent, network errors and timeouts temporary.
func (s *Sink) Send(ctx context.Context, a delivery.Attempt) (delivery.Response, error) {
	keys := s.keys
	if s.secrets != nil {
		var err error
		if keys, err = s.secrets.Keys(ctx, s.name); err != nil {
			return delivery.Response{}, err // temporary: the store comes back
		}
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	d := &a.Delivery
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(d.Body))
	if err != nil {
		return delivery.Response{}, delivery.Permanent(fmt.Errorf("request: %w", err))
	}
	for k, v := range s.headers {
		req.Header[k] = v
	}
	ct := d.Params["content_type"]
	if ct == "" {
		ct = d.ContentType
	}
	if ct == "" {
		ct = "application/json"
	}
	now := s.opts.Now()
	req.Header.Set("Content-Type", ct)
	req.Header.Set("User-Agent", s.opts.UserAgent)
	req.Header.Set(HeaderID, a.ID)
	req.Header.Set(HeaderTimestamp, fmt.Sprint(now.Unix()))
	req.Header.Set(HeaderSignature, Sign(keys, a.ID, now, d.Body))
	resp, err := s.client.Do(req)
	if err != nil {
		if errors.Is(err, ErrForbiddenAddress) {
			return delivery.Response{}, delivery.Permanent(err)
		}
		if ctx.Err() == context.DeadlineExceeded {
			return delivery.Response{}, fmt.Errorf("no answer within %s: %w", s.timeout, err)
		}
		return delivery.Response{}, err
	}
	defer resp.Body.Close()
	// The status decides; a body cut short (by the timeout) is kept as read.
	body, _ := io.ReadAll(io.LimitReader(resp.Body, s.opts.MaxResponseBody))
	// Read a little more so the connection can be reused, not more.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	out := delivery.Response{StatusCode: resp.StatusCode, Header: capHeader(resp.Header), Body: body}
	if err := delivery.ClassifyHTTP(resp.StatusCode, resp.Header, s.opts.Now()); err != nil {
		if resp.StatusCode >= 300 && resp.StatusCode < 400 {
			return out, fmt.Errorf("redirect not followed (Location: %q): %w", resp.Header.Get("Location"), err)
		}
		return out, err
	}
	return out, nil
}

// capHeader keeps a bounded copy of response headers for the log.
func capHeader(h http.Header) http.Header {
	out := make(http.Header, min(len(h), 32))
	n := 0
	for k, vs := range h {
		if n >= 32 {
			break
		}
		n++
		for i, v := range vs {
			if i >= 4 {
				break
			}
			if len(v) > 512 {
				v = v[:512]
			}
			out[k] = append(out[k], v)
		}
	}
	return out
}

// Close closes idle connections.
func (s *Sink) Close() error {
	s.tr.CloseIdleConnections()
	return nil
}
