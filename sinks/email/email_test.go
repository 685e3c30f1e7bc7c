package email

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/routes"
	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/sinks/delivery"
	"github.com/buildbridge/buildbridge/sinks/email/mailtest"
	"github.com/buildbridge/buildbridge/store"
)

// clock is a test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func (c *clock) Advance(d time.Duration) { c.Set(c.Now().Add(d)) }

// env is an SMTP server, a store and rules whose email sinks send to it.
type env struct {
	t     *testing.T
	smtp  *mailtest.Server
	db    *store.DB
	rules *routes.Rules
	sinks map[string]*Sink
	clock *clock
	owner int64
}

type envConfig struct {
	smtp    mailtest.Config
	vars    map[string]string
	rootCAs *x509.CertPool
	poll    time.Duration
}

func newEnv(t *testing.T, rules string, ec envConfig) *env {
	t.Helper()
	srv, err := mailtest.NewServer(ec.smtp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	e := &env{t: t, smtp: srv, sinks: map[string]*Sink{}, clock: &clock{t: time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)}}
	e.db, err = store.Open(context.Background(), store.Config{DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.db.Close() })
	u, err := e.db.CreateUser(context.Background(), "admin", true)
	if err != nil {
		t.Fatal(err)
	}
	e.owner = u.ID
	vars := map[string]string{"SMTP_PORT": strconv.Itoa(srv.Port)}
	for k, v := range ec.vars {
		vars[k] = v
	}
	e.rules, err = routes.Parse("rules.yaml", []byte(rules), routes.Options{
		LookupEnv: func(k string) (string, bool) { v, ok := vars[k]; return v, ok },
		Logger:    slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("rules: %v", err)
	}
	poll := ec.poll
	if poll == 0 {
		poll = -1
	}
	for _, c := range e.rules.Sinks() {
		if c.Type != "email" {
			continue
		}
		s, err := NewSink(c, Options{Store: e.db, RootCAs: ec.rootCAs, Poll: poll, Now: e.clock.Now,
			Timeout: 5 * time.Second, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		e.sinks[c.Name] = s
		t.Cleanup(func() { s.Close() })
	}
	return e
}

func (e *env) deliveries(ev event.Envelope) []sinks.Delivery {
	var out []sinks.Delivery
	for _, d := range e.rules.Match(ev) {
		if d.SinkType == "email" {
			out = append(out, d)
		}
	}
	if len(out) == 0 {
		e.t.Fatalf("no email delivery for %s", ev.ID)
	}
	return out
}

// send delivers an event's email deliveries; it returns their answers.
func (e *env) send(ev event.Envelope) ([]delivery.Response, []error) {
	var (
		resps []delivery.Response
		errs  []error
	)
	for _, d := range e.deliveries(ev) {
		r, err := e.sinks[d.Sink].Send(context.Background(), delivery.Attempt{Delivery: d, ID: delivery.MessageID(d.EventID, d.Sink, d.Target)})
		resps, errs = append(resps, r), append(errs, err)
	}
	return resps, errs
}

func (e *env) mustSend(ev event.Envelope) []delivery.Response {
	e.t.Helper()
	resps, errs := e.send(ev)
	for _, err := range errs {
		if err != nil {
			e.t.Fatalf("deliver %s: %v", ev.ID, err)
		}
	}
	return resps
}

func (e *env) parse(m mailtest.Message) *mailtest.Parsed {
	e.t.Helper()
	p, err := m.Parse()
	if err != nil {
		e.t.Fatalf("%v\n%s", err, m.Data)
	}
	return p
}

type build struct {
	id, number int64
	branch     string
	message    string
}

func (e *env) event(b build, seq int64, state builds.State, result builds.Result, status builds.Status) event.Envelope {
	if b.branch == "" {
		b.branch = "main"
	}
	if b.message == "" {
		b.message = "Fix the thing"
	}
	eb := &event.Build{ID: b.id, Number: b.number, State: state, Result: result, Status: status,
		Ref: "refs/heads/" + b.branch, Branch: b.branch, SHA: "0123456789abcdef0123456789abcdef01234567",
		Author: "Ann Example", AuthorEmail: "Ann@Example.com", Message: b.message,
		URL: "https://ci.example.com/builds/" + strconv.FormatInt(b.id, 10)}
	if state == builds.Finished {
		ok := result == builds.Passed
		eb.Success = &ok
		ms := int64(72000)
		eb.DurationMS = &ms
	}
	return event.Envelope{ID: "evt_" + strconv.FormatInt(b.id, 10) + "_" + strconv.FormatInt(seq, 10), Type: event.TypeBuildStateChanged,
		Time: e.clock.Now(), Seq: seq, Build: eb, Job: &event.Job{ID: 1, Name: "app"},
		Project: &event.Project{ID: 1, Name: "app", OwnerID: e.owner}, Previous: &event.Previous{}}
}

const plainSink = `
sinks:
  mail:
    type: email
    host: 127.0.0.1
    port: ${SMTP_PORT}
    tls: none
    from: "buildbridge <ci@example.com>"
    to: [team@example.com]
    owner_emails:
      admin: Owner <owner@example.com>
`

// TestMailIsMultipartAndThreaded sends one build's mail to a static
// address, the commit author and the project owner, and reads it back.
func TestMailIsMultipartAndThreaded(t *testing.T) {
	e := newEnv(t, plainSink+`
routes:
  - name: finished
    match: {state: FINISHED}
    to:
      - sink: mail
        to: [team@example.com, "{{.Build.AuthorEmail}}", owner]
        html: "<p>{{icon .Build.Status}} <b>{{.Project.Name}}</b> #{{.Build.Number}}: {{.Build.Message}}</p>"
`, envConfig{})
	ev := e.event(build{id: 9, number: 7, message: "Fix <script>alert(1)</script>"}, 3, builds.Finished, builds.Failed, builds.StatusBroken)
	resps := e.mustSend(ev)
	if !strings.Contains(string(resps[0].Body), "sent to ann@example.com, owner@example.com, team@example.com") {
		t.Fatalf("response: %s", resps[0].Body)
	}
	msgs, err := e.smtp.Wait(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	m := msgs[0]
	if m.From != "ci@example.com" || strings.Join(m.To, " ") != "ann@example.com owner@example.com team@example.com" {
		t.Fatalf("envelope: from %s to %v", m.From, m.To)
	}
	p := e.parse(m)
	d := e.deliveries(ev)[0]
	wantID := "<" + delivery.MessageID(d.EventID, d.Sink, d.Target) + "@example.com>"
	if p.ContentType != "multipart/alternative" || p.Parts != 2 {
		t.Fatalf("MIME: %s with %d parts", p.ContentType, p.Parts)
	}
	if p.Subject() != "[app] Build #7 broken on main" || p.Header.Get("Message-Id") != wantID || p.Header.Get("Auto-Submitted") != "auto-generated" {
		t.Fatalf("headers: %q %q %v", p.Subject(), p.Header.Get("Message-Id"), p.Header)
	}
	if !strings.Contains(p.Header.Get("From"), "ci@example.com") || !strings.Contains(p.Header.Get("To"), "owner@example.com") {
		t.Fatalf("From/To: %q %q", p.Header.Get("From"), p.Header.Get("To"))
	}
	if !strings.Contains(p.Text, "Build #7 of app: broken") || !strings.Contains(p.Text, "Branch:   main") {
		t.Errorf("text part:\n%s", p.Text)
	}
	if !strings.Contains(p.HTML, "<b>app</b> #7") || strings.Contains(p.HTML, "<script>") || !strings.Contains(p.HTML, "&lt;script&gt;") {
		t.Errorf("html part:\n%s", p.HTML)
	}
	thread := p.Header.Get("In-Reply-To")
	if !strings.HasPrefix(thread, "<branch.") || !strings.HasSuffix(thread, "@example.com>") || p.Header.Get("References") != thread {
		t.Fatalf("threading: In-Reply-To %q References %q", thread, p.Header.Get("References"))
	}

	// The next build of the branch is in the same thread, another
	// branch in another; the same delivery again has the same Message-ID.
	e.mustSend(e.event(build{id: 10, number: 8}, 6, builds.Finished, builds.Passed, builds.StatusFixed))
	e.mustSend(e.event(build{id: 11, number: 9, branch: "feature/x"}, 9, builds.Finished, builds.Failed, builds.StatusFailed))
	e.mustSend(ev)
	msgs, _ = e.smtp.Wait(4, 5*time.Second)
	p2, p3, p4 := e.parse(msgs[1]), e.parse(msgs[2]), e.parse(msgs[3])
	if p2.Header.Get("In-Reply-To") != thread || p3.Header.Get("In-Reply-To") == thread || p3.Header.Get("In-Reply-To") == "" {
		t.Fatalf("threads: main %q, main again %q, feature %q", thread, p2.Header.Get("In-Reply-To"), p3.Header.Get("In-Reply-To"))
	}
	if p2.Header.Get("Message-Id") == wantID || p4.Header.Get("Message-Id") != wantID {
		t.Fatalf("message ids: %q %q", p2.Header.Get("Message-Id"), p4.Header.Get("Message-Id"))
	}
}

// TestSMTPFailures: a 4xx is temporary, a 5xx permanent with the
// server's message, a refused connection temporary.
func TestSMTPFailures(t *testing.T) {
	e := newEnv(t, plainSink+"routes:\n  - {name: all, to: [mail]}\n", envConfig{})
	ev := e.event(build{id: 1, number: 1}, 1, builds.Queued, "", builds.StatusQueued)
	kind := func(err error) string {
		var de *delivery.Error
		switch {
		case err == nil:
			return "ok"
		case errors.As(err, &de) && de.Permanent:
			return "permanent"
		}
		return "temporary"
	}
	e.smtp.Fail(mailtest.Failure{Stage: "RCPT", Code: 451, Message: "4.7.1 Greylisted, try again later"})
	_, errs := e.send(ev)
	if kind(errs[0]) != "temporary" || !strings.Contains(errs[0].Error(), "Greylisted") {
		t.Fatalf("451: %s %v", kind(errs[0]), errs[0])
	}
	e.smtp.Fail(mailtest.Failure{Stage: "DATA", Code: 554, Message: "5.7.1 Message rejected as spam"})
	_, errs = e.send(ev)
	if kind(errs[0]) != "permanent" || !strings.Contains(errs[0].Error(), "5.7.1 Message rejected as spam") {
		t.Fatalf("554: %s %v", kind(errs[0]), errs[0])
	}
	e.smtp.Fail(mailtest.Failure{Stage: "MAIL", Code: 550, Message: "5.1.0 Sender rejected"})
	_, errs = e.send(ev)
	if kind(errs[0]) != "permanent" || !strings.Contains(errs[0].Error(), "Sender rejected") {
		t.Fatalf("550: %s %v", kind(errs[0]), errs[0])
	}
	e.mustSend(ev)
	if n := len(e.smtp.Messages()); n != 1 {
		t.Fatalf("%d messages received", n)
	}
	e.smtp.Close()
	_, errs = e.send(ev)
	if kind(errs[0]) != "temporary" {
		t.Fatalf("connection refused: %s %v", kind(errs[0]), errs[0])
	}
}

// TestTemporaryFailureThenSuccessThroughTheEngine: the engine retries a
// 451 on the sink's schedule and the mail arrives.
func TestTemporaryFailureThenSuccessThroughTheEngine(t *testing.T) {
	e := newEnv(t, plainSink+"    retry_schedule: [0s, 1s]\nroutes:\n  - {name: all, to: [mail]}\n", envConfig{})
	eng, err := delivery.New(delivery.Config{Store: e.db, Logger: slog.New(slog.DiscardHandler),
		NewSink: func(c *sinks.Config) (sinks.Sink, error) {
			if c.Type != "email" {
				return sinks.New(c)
			}
			return e.sinks[c.Name], nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Configure(e.rules.Sinks()); err != nil && !errors.Is(err, sinks.ErrNotImplemented) {
		t.Fatal(err)
	}
	if err := eng.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	e.smtp.Fail(mailtest.Failure{Stage: "RCPT", Code: 421, Message: "4.3.2 Service shutting down"})
	if err := eng.Enqueue(context.Background(), e.deliveries(e.event(build{id: 3, number: 3}, 1, builds.Queued, "", builds.StatusQueued))); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := e.smtp.Wait(1, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 700*time.Millisecond || e.smtp.Transactions() != 2 {
		t.Fatalf("delivered after %s in %d transactions", took, e.smtp.Transactions())
	}
}

// TestTLSAndAuth: STARTTLS and implicit TLS with a trusted certificate
// and AUTH PLAIN; an untrusted certificate, a server without STARTTLS
// and a wrong password fail permanently.
func TestTLSAndAuth(t *testing.T) {
	srvTLS, roots, err := mailtest.NewTLS()
	if err != nil {
		t.Fatal(err)
	}
	rules := func(mode string) string {
		return `
sinks:
  mail:
    type: email
    host: 127.0.0.1
    port: ${SMTP_PORT}
    tls: ` + mode + `
    username: ci
    password: ${SMTP_PASSWORD}
    from: ci@example.com
    to: [team@example.com]
routes:
  - {name: all, to: [mail]}
`
	}
	auth := mailtest.Config{TLS: srvTLS, Username: "ci", Password: "s3cret"}
	vars := map[string]string{"SMTP_PASSWORD": "s3cret"}
	for _, c := range []struct {
		name    string
		mode    string
		smtp    mailtest.Config
		roots   *x509.CertPool
		vars    map[string]string
		failure string
	}{
		{name: "starttls", mode: "starttls", smtp: auth, roots: roots, vars: vars},
		{name: "implicit", mode: "tls", smtp: mailtest.Config{TLS: srvTLS, Implicit: true, Username: "ci", Password: "s3cret"}, roots: roots, vars: vars},
		{name: "untrusted", mode: "starttls", smtp: auth, vars: vars, failure: "not trusted"},
		{name: "no starttls", mode: "starttls", smtp: mailtest.Config{Username: "ci", Password: "s3cret"}, roots: roots, vars: vars, failure: "STARTTLS"},
		{name: "wrong password", mode: "starttls", smtp: auth, roots: roots, vars: map[string]string{"SMTP_PASSWORD": "nope"}, failure: "535"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, rules(c.mode), envConfig{smtp: c.smtp, vars: c.vars, rootCAs: c.roots})
			_, errs := e.send(e.event(build{id: 1, number: 1}, 1, builds.Queued, "", builds.StatusQueued))
			if c.failure == "" {
				if errs[0] != nil {
					t.Fatal(errs[0])
				}
				msgs, _ := e.smtp.Wait(1, 5*time.Second)
				if len(msgs) != 1 || !msgs[0].TLS || msgs[0].User != "ci" {
					t.Fatalf("received %+v", msgs)
				}
				return
			}
			var de *delivery.Error
			if !errors.As(errs[0], &de) || !de.Permanent || !strings.Contains(errs[0].Error(), c.failure) {
				t.Fatalf("want a permanent failure with %q, got %v", c.failure, errs[0])
			}
			if len(e.smtp.Messages()) != 0 {
				t.Fatal("a message was received")
			}
		})
	}
}

// TestDigestGroupsWithTestClock holds the events of a window and sends
// them as one mail per recipients when it ends, retrying a 4xx.
func TestDigestGroupsWithTestClock(t *testing.T) {
	e := newEnv(t, plainSink+`
routes:
  - name: team
    to:
      - sink: mail
        digest: 15m
  - name: author
    match: {state: FINISHED}
    to:
      - sink: mail
        to: ["{{.Build.AuthorEmail}}"]
        digest: 15m
`, envConfig{})
	s := e.sinks["mail"]
	ctx := context.Background()
	t0 := e.clock.Now()
	b1, b2 := build{id: 1, number: 1}, build{id: 2, number: 2}
	resps := e.mustSend(e.event(b1, 1, builds.Queued, "", builds.StatusQueued))
	if !strings.Contains(string(resps[0].Body), "held for the digest until "+t0.Add(15*time.Minute).Format(time.RFC3339)) {
		t.Fatalf("response: %s", resps[0].Body)
	}
	e.clock.Advance(5 * time.Minute)
	e.mustSend(e.event(b1, 2, builds.Finished, builds.Failed, builds.StatusBroken))
	e.clock.Advance(5 * time.Minute)
	e.mustSend(e.event(b2, 3, builds.Finished, builds.Passed, builds.StatusFixed))
	// The same delivery again (a retry after a lost answer) is held once.
	e.mustSend(e.event(b2, 3, builds.Finished, builds.Passed, builds.StatusFixed))

	if err := s.FlushDue(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(e.smtp.Messages()); n != 0 {
		t.Fatalf("%d mails before the window ends", n)
	}
	// At the end of the team's window (the author's opened 5 minutes
	// later): its send fails (451) and is retried 30s later.
	e.clock.Set(t0.Add(15 * time.Minute))
	e.smtp.Fail(mailtest.Failure{Stage: "RCPT", Code: 451, Message: "4.7.1 later"})
	if err := s.FlushDue(ctx); err != nil {
		t.Fatal(err)
	}
	if n, tx := len(e.smtp.Messages()), e.smtp.Transactions(); n != 0 || tx != 1 {
		t.Fatalf("%d mails in %d transactions after the first flush", n, tx)
	}
	e.clock.Advance(29 * time.Second)
	s.FlushDue(ctx)
	if tx := e.smtp.Transactions(); tx != 1 {
		t.Fatalf("retried before 30s: %d transactions", tx)
	}
	e.clock.Advance(time.Second)
	if err := s.FlushDue(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(e.smtp.Messages()); n != 1 {
		t.Fatalf("%d mails after the retry", n)
	}
	e.clock.Set(t0.Add(20 * time.Minute))
	if err := s.FlushDue(ctx); err != nil {
		t.Fatal(err)
	}
	msgs, _ := e.smtp.Wait(2, 5*time.Second)
	var team, ann *mailtest.Parsed
	for _, m := range msgs {
		switch strings.Join(m.To, ",") {
		case "team@example.com":
			team = e.parse(m)
		case "ann@example.com":
			ann = e.parse(m)
		}
	}
	if team == nil || ann == nil {
		t.Fatalf("recipients: %+v", msgs)
	}
	if team.Subject() != "[app] 3 notifications: #1 queued, #1 broken, #2 fixed" {
		t.Errorf("team digest subject %q", team.Subject())
	}
	for _, want := range []string{"3 notifications from buildbridge", "== [app] Build #1 queued on main ==", "== [app] Build #1 broken on main ==", "Build #2 of app: fixed"} {
		if !strings.Contains(team.Text, want) {
			t.Errorf("team digest lacks %q:\n%s", want, team.Text)
		}
	}
	if !strings.HasPrefix(team.Header.Get("Message-Id"), "<digest.") || !strings.HasPrefix(team.Header.Get("In-Reply-To"), "<branch.") {
		t.Errorf("digest headers: %v", team.Header)
	}
	if ann.Subject() != "[app] 2 notifications: #1 broken, #2 fixed" {
		t.Errorf("author digest subject %q", ann.Subject())
	}
	// Nothing is left, and the next event opens a new window.
	if _, ok, _ := e.db.NextMailRelease(ctx, "mail"); ok {
		t.Fatal("holds left after the flush")
	}
	e.mustSend(e.event(build{id: 3, number: 3}, 4, builds.Queued, "", builds.StatusQueued))
	if next, ok, _ := e.db.NextMailRelease(ctx, "mail"); !ok || !next.Equal(e.clock.Now().Add(15*time.Minute)) {
		t.Fatalf("next window %s", next)
	}
	// A single held mail goes out as itself, not as a digest.
	e.clock.Advance(15 * time.Minute)
	if err := s.FlushDue(ctx); err != nil {
		t.Fatal(err)
	}
	msgs, _ = e.smtp.Wait(3, 5*time.Second)
	if p := e.parse(msgs[2]); p.Subject() != "[app] Build #3 queued on main" {
		t.Fatalf("single held mail: %q", p.Subject())
	}
}

// TestQuietHours holds mail that is not urgent until the end of the
// quiet hours, in the configured time zone; urgent mail goes at once.
func TestQuietHours(t *testing.T) {
	e := newEnv(t, plainSink+`    quiet_hours: "22:00-07:00"
    timezone: Europe/Paris
routes:
  - {name: all, to: [mail]}
`, envConfig{})
	paris, _ := time.LoadLocation("Europe/Paris")
	e.clock.Set(time.Date(2026, 3, 10, 23, 30, 0, 0, paris))
	s := e.sinks["mail"]
	ctx := context.Background()
	resps := e.mustSend(e.event(build{id: 1, number: 1}, 1, builds.Finished, builds.Passed, builds.StatusPassed))
	end := time.Date(2026, 3, 11, 7, 0, 0, 0, paris)
	if !strings.Contains(string(resps[0].Body), "held for the end of quiet hours until "+end.UTC().Format(time.RFC3339)) {
		t.Fatalf("response: %s", resps[0].Body)
	}
	e.mustSend(e.event(build{id: 2, number: 2}, 2, builds.Finished, builds.Failed, builds.StatusBroken))
	msgs, _ := e.smtp.Wait(1, 5*time.Second)
	if len(msgs) != 1 || e.parse(msgs[0]).Subject() != "[app] Build #2 broken on main" {
		t.Fatalf("urgent mail: %+v", msgs)
	}
	e.clock.Set(end.Add(-time.Minute))
	s.FlushDue(ctx)
	if len(e.smtp.Messages()) != 1 {
		t.Fatal("held mail sent before the end of quiet hours")
	}
	e.clock.Set(end)
	if err := s.FlushDue(ctx); err != nil {
		t.Fatal(err)
	}
	msgs, _ = e.smtp.Wait(2, 5*time.Second)
	if len(msgs) != 2 || e.parse(msgs[1]).Subject() != "[app] Build #1 passed on main" {
		t.Fatalf("after quiet hours: %d mails", len(msgs))
	}
}

// TestDigestEndingInQuietHoursWaits: a digest due during quiet hours
// waits for their end unless it holds something urgent.
func TestDigestEndingInQuietHoursWaits(t *testing.T) {
	e := newEnv(t, plainSink+`    quiet_hours: "22:00-07:00"
    digest: 15m
routes:
  - {name: all, to: [mail]}
`, envConfig{})
	e.clock.Set(time.Date(2026, 3, 10, 21, 50, 0, 0, time.UTC))
	e.mustSend(e.event(build{id: 1, number: 1}, 1, builds.Finished, builds.Passed, builds.StatusPassed))
	e.clock.Set(time.Date(2026, 3, 10, 22, 10, 0, 0, time.UTC))
	s := e.sinks["mail"]
	s.FlushDue(context.Background())
	if len(e.smtp.Messages()) != 0 {
		t.Fatal("digest sent in quiet hours")
	}
	next, ok, _ := e.db.NextMailRelease(context.Background(), "mail")
	if !ok || !next.Equal(time.Date(2026, 3, 11, 7, 0, 0, 0, time.UTC)) {
		t.Fatalf("postponed to %s", next)
	}
}

// TestFlusherRunsAndStops runs the sink's own flusher on the real clock.
func TestFlusherRunsAndStops(t *testing.T) {
	e := newEnv(t, plainSink+"routes:\n  - {name: all, to: [mail], }\n", envConfig{})
	c, _ := func() (*sinks.Config, error) {
		for _, c := range e.rules.Sinks() {
			if c.Name == "mail" {
				return c, nil
			}
		}
		return nil, nil
	}()
	s, err := NewSink(c, Options{Store: e.db, Poll: time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	d := e.deliveries(e.event(build{id: 1, number: 1}, 1, builds.Queued, "", builds.StatusQueued))[0]
	d.Params["digest"] = "300ms"
	start := time.Now()
	if _, err := s.Send(context.Background(), delivery.Attempt{Delivery: d, ID: "msg_1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.smtp.Wait(1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 300*time.Millisecond || took > 3*time.Second {
		t.Fatalf("digest of 300ms sent after %s", took)
	}
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not stop the flusher")
	}
}

func TestConfigChecks(t *testing.T) {
	base := "sinks:\n  m:\n    type: email\n    host: 127.0.0.1\n    from: ci@example.com\n    to: [a@example.com]\n"
	for _, c := range []struct{ extra, route, says string }{
		{"    quiet_hours: 22-7\n", "", "quiet_hours"},
		{"    quiet_hours: \"22:00-07:00\"\n    timezone: Mars/Olympus\n", "", "timezone"},
		{"    urgent: [broke]\n", "", "urgent"},
		{"    digest: 9000h\n", "", "digest"},
		{"", "      - {sink: m, quiet_hours: \"25:00-07:00\"}\n", "quiet_hours"},
		{"", "      - {sink: m, to: [owner]}\n", "owner_emails"},
		{"    owner_emails: {admin: nobody}\n", "", "owner_emails"},
		{"    retry_schedule: [later]\n", "", "retry_schedule"},
	} {
		route := c.route
		if route == "" {
			route = "      - m\n"
		}
		src := base + c.extra + "routes:\n  - name: r\n    to:\n" + route
		_, err := routes.Parse("r.yaml", []byte(src), routes.Options{Logger: slog.New(slog.DiscardHandler)})
		if err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v", src, err)
		}
	}
	// tls: none is for loopback, unless allowed.
	remote := strings.Replace(base, "127.0.0.1", "smtp.example.com", 1) + "    tls: none\n"
	if _, err := routes.Parse("r.yaml", []byte(remote+"routes:\n  - {name: r, to: [m]}\n"), routes.Options{}); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("tls none to a remote host: %v", err)
	}
	if _, err := routes.Parse("r.yaml", []byte(remote+"    allow_insecure: true\nroutes:\n  - {name: r, to: [m]}\n"), routes.Options{}); err != nil {
		t.Errorf("allow_insecure: %v", err)
	}
}

func TestQuietHoursPeriods(t *testing.T) {
	paris, _ := time.LoadLocation("Europe/Paris")
	night, _ := parseQuietHours("22:00-07:00", "Europe/Paris")
	lunch, _ := parseQuietHours("12:00-13:30", "")
	for _, c := range []struct {
		q    *quietHours
		at   time.Time
		want time.Time
	}{
		{night, time.Date(2026, 3, 10, 21, 59, 0, 0, paris), time.Time{}},
		{night, time.Date(2026, 3, 10, 22, 0, 0, 0, paris), time.Date(2026, 3, 11, 7, 0, 0, 0, paris)},
		{night, time.Date(2026, 3, 11, 6, 59, 59, 0, paris), time.Date(2026, 3, 11, 7, 0, 0, 0, paris)},
		{night, time.Date(2026, 3, 11, 7, 0, 0, 0, paris), time.Time{}},
		// The night the clocks go forward.
		{night, time.Date(2026, 3, 28, 23, 0, 0, 0, paris), time.Date(2026, 3, 29, 7, 0, 0, 0, paris)},
		{lunch, time.Date(2026, 3, 10, 12, 30, 0, 0, time.UTC), time.Date(2026, 3, 10, 13, 30, 0, 0, time.UTC)},
		{lunch, time.Date(2026, 3, 10, 13, 30, 0, 0, time.UTC), time.Time{}},
	} {
		got, ok := c.q.end(c.at)
		if ok != !c.want.IsZero() || !got.Equal(c.want) {
			t.Errorf("%s: got %s %v, want %s", c.at, got, ok, c.want)
		}
	}
	for _, bad := range []string{"", "22:00", "22:00-22:00", "7-8", "24:00-01:00", "22:0-07:00"} {
		if _, err := parseQuietHours(bad, ""); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// testLogger logs through t.Log, seen when a test fails.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
