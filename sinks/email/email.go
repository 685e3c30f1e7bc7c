// Package email is the email sink: build events as mail over SMTP, with
// go-mail.
//
// A mail has a text body and, when the html template is set, an HTML
// alternative; its Message-ID is derived from the delivery (the same on
// every attempt), and In-Reply-To and References name a thread per
// project and branch, so a branch's builds thread together in mail
// clients. Recipients are the rendered to list, where owner stands for
// the project's owner (owner_emails).
//
// The connection uses STARTTLS, implicit TLS, or none (loopback hosts
// only, unless allow_insecure). Temporary SMTP failures (4xx, connection
// errors) go back to the delivery engine to be retried; permanent ones
// (5xx) fail the delivery with the server's message.
//
// A digest (per target) collects the events of a window into one mail,
// and quiet hours hold mail that is not urgent until they end. Held mail
// is kept in the store (mail holds, per sink and recipients): the
// delivery succeeds once it is held, and a flusher owned by the sink
// sends each group when it is due, retrying on failure; Close stops it.
//
// Importing the package completes the sink type "email" declared by
// package sinks.
package email

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/mail"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gomail "github.com/wneessen/go-mail"

	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/sinks/delivery"
	"github.com/buildbridge/buildbridge/store"
)

// Store is what the sink keeps in the store: held mail, and the users
// whose address owner_emails gives by name. *store.DB implements it.
type Store interface {
	UserByID(ctx context.Context, id int64) (store.User, error)
	HoldMail(ctx context.Context, h store.MailHold) (store.MailHold, bool, error)
	ClaimMailHolds(ctx context.Context, sink string, now time.Time, lease time.Duration, limit int) ([]store.MailHold, error)
	NextMailRelease(ctx context.Context, sink string) (time.Time, bool, error)
	ReleaseMailHolds(ctx context.Context, ids []int64, at time.Time, failed bool) error
	DeleteMailHolds(ctx context.Context, ids []int64) error
}

type storeBox struct{ s Store }

// shared is the store of the sinks the rules make, set by UseStore.
var shared atomic.Pointer[storeBox]

// UseStore sets the store of the email sinks the rules make. Until it is
// called, their held mail (digests, quiet hours) and owner lookups by
// name fail as temporary.
func UseStore(s Store) {
	if s == nil {
		shared.Store(nil)
		return
	}
	shared.Store(&storeBox{s: s})
}

// ErrNoStore is returned while a sink that needs the store has none.
var ErrNoStore = errors.New("email: no store for held mail (email.UseStore was not called)")

// Type is the email sink type: the specification of package sinks, with
// the delivery policy settings, the checks of digest, quiet hours and
// owner_emails, and New.
var Type = func() sinks.Type {
	t, ok := sinks.Lookup("email")
	if !ok {
		panic("email: package sinks does not declare the email type")
	}
	t.Settings = append(append([]sinks.Setting(nil), t.Settings...), delivery.PolicySettings()...)
	spec, target := t.Check, t.Target
	t.Check = func(c *sinks.Config) []*sinks.ConfigError {
		var errs []*sinks.ConfigError
		if spec != nil {
			errs = spec(c)
		}
		p := map[string]string{"digest": c.Value("digest").ParamText(), "quiet_hours": c.Text("quiet_hours"),
			"timezone": c.Text("timezone"), "urgent": strings.Join(c.List("urgent"), ",")}
		if _, err := parsePolicy(p); err != nil && !unresolved(p) && !c.Value("quiet_hours").Unresolved() && !c.Value("timezone").Unresolved() {
			name, _, _ := strings.Cut(err.Error(), ":")
			errs = append(errs, c.Errorf(name, "%s", strings.TrimSpace(strings.TrimPrefix(err.Error(), name+":"))))
		}
		for who, addr := range c.Map("owner_emails") {
			if _, err := mail.ParseAddress(addr); err != nil {
				errs = append(errs, c.Errorf("owner_emails", "%s: %q is not an email address", who, addr))
			}
		}
		return append(errs, delivery.CheckPolicy(c)...)
	}
	// Per-route digest and quiet hours are checked where the routes' targets are.
	t.Target = func(c *sinks.Config, p map[string]string) (string, error) {
		if _, err := parsePolicy(p); err != nil && !unresolved(p) {
			return "", err
		}
		return target(c, p)
	}
	t.New = New
	return t
}()

func init() { sinks.Register(Type) }

// unresolved reports parameters holding a reference left unresolved
// (rules check --skip-secrets): they cannot be checked.
func unresolved(p map[string]string) bool {
	for _, v := range p {
		if strings.Contains(v, "[unresolved]") {
			return true
		}
	}
	return false
}

// Options are the process-wide settings of email sinks.
type Options struct {
	// Store keeps held mail (default: the one given to UseStore).
	Store Store
	// RootCAs verifies servers' certificates (default: the system's).
	RootCAs *x509.CertPool
	// Timeout bounds connecting and each SMTP exchange (default 30s).
	Timeout time.Duration
	// HELO is the name the client greets with (default: the host name).
	HELO string
	// Poll is how often the flusher looks for due held mail besides the
	// wake-ups it schedules (default 30s); negative: no flusher, FlushDue
	// is called by hand (tests).
	Poll time.Duration
	// Lease is how long a flusher owns the held mail it sends (default 5m).
	Lease time.Duration
	// MaxTries bounds the sends of one held group (default 12); a group
	// still failing is dropped with an error in the log.
	MaxTries int
	// Now is the clock (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	if o.HELO == "" {
		o.HELO, _ = os.Hostname()
		if o.HELO == "" {
			o.HELO = "localhost"
		}
	}
	if o.Poll == 0 {
		o.Poll = 30 * time.Second
	}
	if o.Lease == 0 {
		o.Lease = 5 * time.Minute
	}
	if o.MaxTries == 0 {
		o.MaxTries = 12
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
		return errors.New("email: Options.Timeout must not be negative")
	case o.Lease <= 0:
		return errors.New("email: Options.Lease must be positive")
	case o.MaxTries < 1:
		return errors.New("email: Options.MaxTries must be at least 1")
	}
	return nil
}

// Sink sends mail through one SMTP server.
type Sink struct {
	name     string
	host     string
	port     int
	tls      string
	insecure bool
	user     string
	password sinks.Secret
	from     *mail.Address
	owners   map[string]string
	opts     Options
	log      *slog.Logger

	stop    context.CancelFunc
	done    chan struct{}
	wake    chan struct{}
	closing sync.Once
}

// New makes an email sink with the default Options: the type's New.
func New(c *sinks.Config) (sinks.Sink, error) { return NewSink(c, Options{}) }

// NewSink makes an email sink and starts its flusher.
func NewSink(c *sinks.Config, opts Options) (*Sink, error) {
	opts.setDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	from, err := mail.ParseAddress(c.Text("from"))
	if err != nil {
		return nil, fmt.Errorf("from: not an email address: %v", err)
	}
	s := &Sink{name: c.Name, host: c.Text("host"), port: int(c.Int("port")), tls: c.Text("tls"), insecure: c.Bool("allow_insecure"),
		user: c.Text("username"), password: c.Secret("password"), from: from, owners: map[string]string{},
		opts: opts, log: opts.Logger.With("sink", c.Name), done: make(chan struct{}), wake: make(chan struct{}, 1)}
	for who, addr := range c.Map("owner_emails") {
		s.owners[strings.ToLower(strings.TrimSpace(who))] = strings.TrimSpace(addr)
	}
	if s.host == "" || s.port < 1 || s.port > 65535 {
		return nil, errors.New("host and port: required")
	}
	if s.tls == "none" && !s.insecure && !sinks.IsLoopback(s.host) {
		return nil, errors.New("tls: none is only allowed to a loopback host, unless allow_insecure")
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	if opts.Poll > 0 {
		go s.flusher(ctx)
	} else {
		close(s.done)
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

// Deliver sends (or holds) the mail of one delivery.
func (s *Sink) Deliver(ctx context.Context, d sinks.Delivery) error {
	_, err := s.Send(ctx, delivery.Attempt{Delivery: d, ID: delivery.MessageID(d.EventID, d.Sink, d.Target), Number: 1})
	return err
}

// Send sends the mail of one delivery, or holds it for a digest or the
// end of quiet hours, and says which in the response body.
func (s *Sink) Send(ctx context.Context, a delivery.Attempt) (delivery.Response, error) {
	d := &a.Delivery
	pol, err := parsePolicy(d.Params)
	if err != nil {
		return delivery.Response{}, delivery.Permanent(err)
	}
	to, err := s.recipients(ctx, d)
	if err != nil {
		return delivery.Response{}, err
	}
	id := a.ID
	if id == "" {
		id = delivery.MessageID(d.EventID, d.Sink, d.Target)
	}
	p := parts{ID: id, EventID: d.EventID, To: to, Subject: d.Subject, Text: string(d.Body), HTML: d.Params["html"],
		Urgent: pol.isUrgent(&d.Event), Params: policyParams(d.Params), Event: summarize(&d.Event)}
	if until := pol.holdUntil(s.opts.Now(), &d.Event); !until.IsZero() {
		return s.hold(ctx, d, &p, until)
	}
	if err := s.send(ctx, s.single(&p)); err != nil {
		return delivery.Response{}, err
	}
	return delivery.Response{Body: []byte("sent to " + strings.Join(to, ", "))}, nil
}

// recipients resolves the delivery's recipients, owner included.
func (s *Sink) recipients(ctx context.Context, d *sinks.Delivery) ([]string, error) {
	rest, owner := sinks.SplitOwner(d.Params["to"])
	var out []string
	if strings.TrimSpace(rest) != "" {
		list, err := sinks.EmailRecipients(rest)
		if err != nil {
			return nil, delivery.Permanent(err)
		}
		out = list
	}
	if owner {
		addr, err := s.ownerAddress(ctx, d)
		switch {
		case err != nil && len(out) == 0:
			return nil, err
		case err != nil:
			s.log.Warn("the project owner gets no mail", "err", err)
		default:
			out = appendNew(out, strings.ToLower(addr))
		}
	}
	if len(out) == 0 {
		return nil, delivery.Permanent(errors.New("no recipients"))
	}
	sort.Strings(out)
	return out, nil
}

func appendNew(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

// ownerAddress is the address of the delivery's project owner, from
// owner_emails by user id or name.
func (s *Sink) ownerAddress(ctx context.Context, d *sinks.Delivery) (string, error) {
	if d.Event.Project == nil || d.Event.Project.OwnerID == 0 {
		return "", delivery.Permanent(errors.New("recipient owner: the event has no project"))
	}
	id := d.Event.Project.OwnerID
	if addr, ok := s.owners[strconv.FormatInt(id, 10)]; ok {
		return bareAddress(addr)
	}
	st := s.store()
	if st == nil {
		return "", ErrNoStore
	}
	u, err := st.UserByID(ctx, id)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return "", delivery.Permanent(fmt.Errorf("recipient owner: user %d does not exist", id))
		}
		return "", fmt.Errorf("recipient owner: %w", err)
	}
	if addr, ok := s.owners[strings.ToLower(u.Name)]; ok {
		return bareAddress(addr)
	}
	return "", delivery.Permanent(fmt.Errorf("recipient owner: user %s (id %d) has no address in owner_emails", u.Name, id))
}

func bareAddress(s string) (string, error) {
	a, err := mail.ParseAddress(s)
	if err != nil {
		return "", delivery.Permanent(fmt.Errorf("owner_emails: %q is not an email address", s))
	}
	return a.Address, nil
}

// client makes the SMTP client of one connection.
func (s *Sink) client() (*gomail.Client, error) {
	opts := []gomail.Option{gomail.WithPort(s.port), gomail.WithTimeout(s.opts.Timeout), gomail.WithHELO(s.opts.HELO),
		gomail.WithTLSConfig(&tls.Config{ServerName: s.host, RootCAs: s.opts.RootCAs, MinVersion: tls.VersionTLS12})}
	switch s.tls {
	case "tls":
		opts = append(opts, gomail.WithSSL())
	case "none":
		opts = append(opts, gomail.WithTLSPolicy(gomail.NoTLS))
	default:
		opts = append(opts, gomail.WithTLSPolicy(gomail.TLSMandatory))
	}
	if s.user != "" {
		// PLAIN or LOGIN, over TLS only (or to loopback), unless the
		// configuration accepts a connection in clear.
		mechs := []gomail.SMTPAuthType{gomail.SMTPAuthPlain, gomail.SMTPAuthLogin}
		if s.insecure {
			mechs = []gomail.SMTPAuthType{gomail.SMTPAuthPlainNoEnc, gomail.SMTPAuthLoginNoEnc}
		}
		opts = append(opts, gomail.WithOpportunisticSMTPAuth(mechs...), gomail.WithUsername(s.user), gomail.WithPassword(s.password.Reveal()))
	}
	return gomail.NewClient(s.host, opts...)
}

// send sends one message and classifies the failure.
func (s *Sink) send(ctx context.Context, m *gomail.Msg) error {
	c, err := s.client()
	if err != nil {
		return delivery.Permanent(fmt.Errorf("SMTP client: %w", err))
	}
	return classify(s.host, c.DialAndSendWithContext(ctx, m))
}

// Close stops the flusher and waits for it.
func (s *Sink) Close() error {
	s.closing.Do(s.stop)
	<-s.done
	return nil
}
