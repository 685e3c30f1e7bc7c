package slack

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/routes"
	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/sinks/delivery"
	"github.com/buildbridge/buildbridge/sinks/slack/slacktest"
	"github.com/buildbridge/buildbridge/store"
)

const botToken = "xoxb-test-1234"

// env is a fake workspace, a store and rules whose slack sinks post to it.
type env struct {
	t     *testing.T
	slack *slacktest.Server
	db    *store.DB
	rules *routes.Rules
	sinks map[string]*Sink
}

func newEnv(t *testing.T, rules string, vars map[string]string) *env {
	t.Helper()
	e := &env{t: t, slack: slacktest.NewServer(botToken), sinks: map[string]*Sink{}}
	t.Cleanup(e.slack.Close)
	var err error
	e.db, err = store.Open(context.Background(), store.Config{DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.db.Close() })
	vars = withDefaults(vars, map[string]string{"SLACK_TOKEN": botToken, "SLACK_API": e.slack.APIURL()})
	e.rules, err = routes.Parse("rules.yaml", []byte(rules), routes.Options{
		LookupEnv: func(k string) (string, bool) { v, ok := vars[k]; return v, ok },
		Logger:    slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("rules: %v", err)
	}
	for _, c := range e.rules.Sinks() {
		if c.Type != "slack" {
			continue
		}
		s, err := NewSink(c, Options{Store: e.db, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		e.sinks[c.Name] = s
		t.Cleanup(func() { s.Close() })
	}
	return e
}

func withDefaults(m, defaults map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range defaults {
		out[k] = v
	}
	for k, v := range m {
		out[k] = v
	}
	return out
}

// deliveries are the slack deliveries the rules make of an event.
func (e *env) deliveries(ev event.Envelope) []sinks.Delivery {
	var out []sinks.Delivery
	for _, d := range e.rules.Match(ev) {
		if d.SinkType == "slack" {
			out = append(out, d)
		}
	}
	return out
}

// send delivers an event's slack deliveries and returns the results.
func (e *env) send(ev event.Envelope) []error {
	e.t.Helper()
	var errs []error
	for _, d := range e.deliveries(ev) {
		_, err := e.sinks[d.Sink].Send(context.Background(), delivery.Attempt{Delivery: d, Number: 1})
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		e.t.Fatalf("no slack delivery for %s %s", ev.Type, ev.ID)
	}
	return errs
}

func (e *env) mustSend(ev event.Envelope) {
	e.t.Helper()
	for _, err := range e.send(ev) {
		if err != nil {
			e.t.Fatalf("deliver %s: %v", ev.ID, err)
		}
	}
}

func (e *env) noProblems() {
	e.t.Helper()
	if p := e.slack.Problems(); len(p) > 0 {
		e.t.Fatalf("Slack would have complained: %v", p)
	}
}

// build makes the events of a build: state and result, with seq.
type build struct {
	id, number int64
	branch     string
	email      string
}

func (b build) event(seq int64, state builds.State, result builds.Result, status builds.Status) event.Envelope {
	if b.branch == "" {
		b.branch = "main"
	}
	if b.email == "" {
		b.email = "ann@example.com"
	}
	eb := &event.Build{ID: b.id, Number: b.number, State: state, Result: result, Status: status,
		Ref: "refs/heads/" + b.branch, Branch: b.branch, SHA: "0123456789abcdef0123456789abcdef01234567",
		Author: "Ann Example", AuthorEmail: b.email, Message: "Fix the thing\n\nLonger text",
		URL: "https://ci.example.com/builds/" + strconv.FormatInt(b.id, 10)}
	if state == builds.Finished {
		ok := result == builds.Passed
		eb.Success = &ok
		ms := int64(72000)
		eb.DurationMS = &ms
		if result == builds.Errored {
			eb.Reason = "step test: exit status 2"
		}
	}
	return event.Envelope{ID: "evt_" + strconv.FormatInt(b.id, 10) + "_" + strconv.FormatInt(seq, 10), Type: event.TypeBuildStateChanged,
		Time: time.Now(), Seq: seq, Build: eb, Job: &event.Job{ID: 1, Name: "app"},
		Project: &event.Project{ID: 1, Name: "app", OwnerID: 1}, Previous: &event.Previous{}}
}

const tokenRules = `
sinks:
  team:
    type: slack
    token: ${SLACK_TOKEN}
    api_url: ${SLACK_API}
    channel: "#builds"
    username: buildbridge
    icon_emoji: ":construction:"
routes:
  - name: all
    to: [team]
`

// TestBuildMessageIsEditedInPlace follows a build through its three
// events: one message, posted then updated with the stored ts, coloured
// by status, with the build's buttons, and a thread reply that mentions
// the author looked up by email.
func TestBuildMessageIsEditedInPlace(t *testing.T) {
	e := newEnv(t, tokenRules, nil)
	ch := e.slack.AddChannel("builds", true)
	e.slack.AddUser(slacktest.User{ID: "U0ANN", Name: "ann", Email: "Ann@Example.com"})
	b := build{id: 41, number: 7}

	e.mustSend(b.event(1, builds.Queued, "", builds.StatusQueued))
	msgs := e.slack.Messages(ch)
	if len(msgs) != 1 || msgs[0].Username != "buildbridge" || msgs[0].IconEmoji != ":construction:" {
		t.Fatalf("after QUEUED: %+v", msgs)
	}
	if !strings.Contains(msgs[0].Texts(), "*app* #7 queued on `main`") || msgs[0].Attachments[0]["color"] != "#9e9e9e" {
		t.Fatalf("QUEUED message: %q %v", msgs[0].Texts(), msgs[0].Attachments[0]["color"])
	}
	if msgs[0].Button(RebuildActionID) != nil {
		t.Fatal("a queued build has a Rebuild button")
	}
	e.mustSend(b.event(2, builds.Started, "", builds.StatusStarted))
	e.mustSend(b.event(3, builds.Finished, builds.Failed, builds.StatusBroken))
	msgs = e.slack.Messages(ch)
	if len(msgs) != 2 {
		t.Fatalf("want the build's message and its thread reply, got %d messages", len(msgs))
	}
	m, reply := msgs[0], msgs[1]
	if m.Edits != 2 || e.slack.Count("chat.update") != 2 {
		t.Fatalf("edits %d, chat.update calls %d", m.Edits, e.slack.Count("chat.update"))
	}
	text := m.Texts()
	for _, want := range []string{"💥 *app* #7 broken on `main` by Ann Example in 1m12s", "0123456 Fix the thing", "Open build", "Rebuild"} {
		if !strings.Contains(text, want) {
			t.Errorf("FINISHED message lacks %q:\n%s", want, text)
		}
	}
	if m.Attachments[0]["color"] != "#d50200" || m.Attachments[0]["fallback"] == "" {
		t.Errorf("attachment: %v", m.Attachments[0])
	}
	if btn := m.Button(RebuildActionID); btn == nil || btn["value"] != "41" {
		t.Errorf("Rebuild button: %v", btn)
	}
	if btn := m.Button("buildbridge_open"); btn == nil || btn["url"] != "https://ci.example.com/builds/41" {
		t.Errorf("Open build button: %v", btn)
	}
	if strings.Contains(text, "<@U0ANN>") {
		t.Error("the edited message mentions the author: nobody would be notified")
	}
	if reply.ThreadTS != m.TS || !strings.HasPrefix(reply.Text, "<@U0ANN> 💥 build #7 of *app* broken on `main` at 0123456") {
		t.Errorf("thread reply: %+v", reply)
	}
	stored, err := e.db.SlackMessage(context.Background(), "team", "#builds", 41)
	if err != nil || stored.Channel != ch || stored.TS != m.TS || stored.Seq != 3 || stored.ReplyTS != reply.TS {
		t.Fatalf("stored: %+v %v", stored, err)
	}

	// An older event (a redelivery) never overwrites the newer state, and
	// the FINISHED event again replies no second time.
	e.mustSend(b.event(1, builds.Queued, "", builds.StatusQueued))
	e.mustSend(b.event(3, builds.Finished, builds.Failed, builds.StatusBroken))
	msgs = e.slack.Messages(ch)
	if len(msgs) != 2 || !strings.Contains(msgs[0].Texts(), "broken") || msgs[0].Edits != 3 {
		t.Fatalf("after redeliveries: %d messages, edits %d: %s", len(msgs), msgs[0].Edits, msgs[0].Texts())
	}

	// Another build is another message; the author's lookup is cached.
	b2 := build{id: 42, number: 8}
	e.mustSend(b2.event(4, builds.Finished, builds.Failed, builds.StatusStillFailing))
	if n := len(e.slack.Messages(ch)); n != 4 {
		t.Fatalf("after a second build: %d messages", n)
	}
	if n := e.slack.Count("users.lookupByEmail"); n != 1 {
		t.Errorf("users.lookupByEmail called %d times", n)
	}
	// A passing build mentions nobody and replies nothing.
	b3 := build{id: 43, number: 9}
	e.mustSend(b3.event(5, builds.Finished, builds.Passed, builds.StatusFixed))
	msgs = e.slack.Messages(ch)
	if last := msgs[len(msgs)-1]; last.ThreadTS != "" || last.Attachments[0]["color"] != "#2eb886" {
		t.Errorf("fixed build: %+v", last)
	}
	e.noProblems()
}

// TestMentionsAndLayouts: the mentions mapping wins over the lookup; without
// thread replies the mention is in the message; the text layout and a
// Block Kit JSON template.
func TestMentionsAndLayouts(t *testing.T) {
	e := newEnv(t, `
sinks:
  team:
    type: slack
    token: ${SLACK_TOKEN}
    api_url: ${SLACK_API}
    channel: "#builds"
    thread_on_failure: false
    mentions:
      ann@example.com: U0MAPPED
routes:
  - name: all
    match: {branch: main}
    to: [team]
  - name: plain
    match: {branch: plain}
    to:
      - sink: team
        channel: "#plain"
        layout: text
  - name: kit
    match: {branch: kit}
    to:
      - sink: team
        channel: "#kit"
        template: '{"text": {{json (printf "%s #%d" .Project.Name .Build.Number)}}, "blocks": [{"type": "header", "text": {"type": "plain_text", "text": {{json .Build.Status}}}}]}'
  - name: bad-kit
    match: {branch: bad}
    to:
      - sink: team
        channel: "#kit"
        template: '{"text": "x", "blocks": [{"type": "header", "text": {"type": "mrkdwn", "text": "not plain"}}]}'
`, nil)
	builds_ := e.slack.AddChannel("builds", true)
	plain := e.slack.AddChannel("plain", true)
	kit := e.slack.AddChannel("kit", true)
	e.slack.AddUser(slacktest.User{ID: "U0LOOKUP", Email: "ann@example.com"})

	e.mustSend(build{id: 1, number: 1}.event(1, builds.Finished, builds.Errored, builds.StatusErrored))
	m := e.slack.Messages(builds_)
	if len(m) != 1 || !strings.Contains(m[0].Texts(), "<@U0MAPPED> your commit 0123456") || e.slack.Count("users.lookupByEmail") != 0 {
		t.Fatalf("mapped mention: %+v, lookups %d", m, e.slack.Count("users.lookupByEmail"))
	}

	e.mustSend(build{id: 2, number: 2, branch: "plain"}.event(2, builds.Finished, builds.Failed, builds.StatusFailed))
	m = e.slack.Messages(plain)
	if len(m) != 1 || len(m[0].Attachments) != 0 || len(m[0].Blocks) != 0 ||
		!strings.HasPrefix(m[0].Text, "❌ *app* #2 failed on `plain`") || !strings.HasSuffix(m[0].Text, "<@U0MAPPED> your commit 0123456 is in this build") {
		t.Fatalf("text layout: %+v", m)
	}

	e.mustSend(build{id: 3, number: 3, branch: "kit"}.event(3, builds.Finished, builds.Passed, builds.StatusPassed))
	m = e.slack.Messages(kit)
	if len(m) != 1 || m[0].Text != "app #3" || len(m[0].Blocks) != 1 || m[0].Blocks[0]["type"] != "header" {
		t.Fatalf("Block Kit template: %+v", m)
	}

	errs := e.send(build{id: 4, number: 4, branch: "bad"}.event(4, builds.Finished, builds.Passed, builds.StatusPassed))
	var de *delivery.Error
	if !errors.As(errs[0], &de) || !de.Permanent || !strings.Contains(errs[0].Error(), "invalid_blocks") || !strings.Contains(errs[0].Error(), "must be plain_text") {
		t.Fatalf("invalid Block Kit: %v", errs[0])
	}
	e.noProblems()
}

// TestErrorsAreClassified: what Slack answers decides between retrying,
// retrying after Retry-After, and failing with what to fix.
func TestErrorsAreClassified(t *testing.T) {
	e := newEnv(t, tokenRules, nil)
	ch := e.slack.AddChannel("builds", true)
	ev := func(id int64) event.Envelope {
		return build{id: id, number: id}.event(id, builds.Queued, "", builds.StatusQueued)
	}
	check := func(name string, err error, permanent bool, retryAfter time.Duration, says string) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s: no error", name)
		}
		var de *delivery.Error
		isDE := errors.As(err, &de)
		if permanent != (isDE && de.Permanent) || (retryAfter > 0 && (!isDE || de.RetryAfter != retryAfter)) || !strings.Contains(err.Error(), says) {
			t.Fatalf("%s: %v (permanent %v, retry after %v)", name, err, isDE && de.Permanent, de)
		}
	}

	e.slack.Fail("chat.postMessage", slacktest.Failure{Status: 429, RetryAfter: 7})
	check("rate limit", e.send(ev(1))[0], false, 7*time.Second, "rate limited")
	e.slack.Fail("chat.postMessage", slacktest.Failure{Status: 503})
	check("503", e.send(ev(1))[0], false, 0, "HTTP 503")
	e.slack.Fail("chat.postMessage", slacktest.Failure{Error: "internal_error"})
	check("internal_error", e.send(ev(1))[0], false, 0, "internal_error")
	e.mustSend(ev(1))

	// A rate limit on the update of an existing message.
	e.slack.Fail("chat.update", slacktest.Failure{Status: 429, RetryAfter: 3})
	check("update rate limit", e.send(build{id: 1, number: 1}.event(2, builds.Started, "", builds.StatusStarted))[0], false, 3*time.Second, "chat.update")

	// Wrong channel, bot not in the channel, archived, token refused.
	e.slack.AddChannel("private", false)
	gone := e.slack.AddChannel("old", true)
	e.slack.ArchiveChannel(gone)
	for _, c := range []struct{ channel, says string }{
		{"#nowhere", "channel_not_found for \"#nowhere\": check the channel name"},
		{"#private", "not_in_channel"},
		{"#old", "archived"},
	} {
		d := e.deliveries(ev(9))[0]
		d.Params = map[string]string{"channel": c.channel}
		d.Target = c.channel
		_, err := e.sinks["team"].Send(context.Background(), delivery.Attempt{Delivery: d})
		check(c.channel, err, true, 0, c.says)
	}
	bad := newEnv(t, tokenRules, map[string]string{"SLACK_TOKEN": "xoxb-wrong", "SLACK_API": e.slack.APIURL()})
	check("wrong token", bad.send(ev(10))[0], true, 0, "refused the bot token (invalid_auth)")
	e.slack.Fail("chat.postMessage", slacktest.Failure{Error: "missing_scope"})
	check("missing scope", e.send(ev(11))[0], true, 0, "missing_scope")

	// A deleted message: the next event posts a new one.
	if err := e.db.SaveSlackMessage(context.Background(), store.SlackMessage{Sink: "team", Target: "#builds", BuildID: 20, Channel: ch, TS: "1.000001", Seq: 1}); err != nil {
		t.Fatal(err)
	}
	e.mustSend(build{id: 20, number: 20}.event(2, builds.Started, "", builds.StatusStarted))
	stored, _ := e.db.SlackMessage(context.Background(), "team", "#builds", 20)
	if stored.TS == "1.000001" || stored.Seq != 2 {
		t.Fatalf("after message_not_found: %+v", stored)
	}
	e.noProblems()
}

// TestIncomingWebhook posts each event as a new message to the hook;
// a removed hook disables the endpoint, a rate limit waits.
func TestIncomingWebhook(t *testing.T) {
	srv := slacktest.NewServer(botToken)
	defer srv.Close()
	ch := srv.AddChannel("builds", true)
	hook := srv.NewWebhook(ch)
	e := newEnv(t, `
sinks:
  hook:
    type: slack
    webhook_url: ${HOOK}
    username: ci
    mentions:
      ann@example.com: U0ANN
routes:
  - name: all
    to: [hook]
`, map[string]string{"HOOK": hook})
	e.slack = srv
	b := build{id: 5, number: 5}
	e.mustSend(b.event(1, builds.Queued, "", builds.StatusQueued))
	e.mustSend(b.event(2, builds.Finished, builds.Failed, builds.StatusBroken))
	msgs := srv.Messages(ch)
	if len(msgs) != 2 || msgs[1].Via != "webhook" || msgs[1].Username != "ci" || !strings.Contains(msgs[1].Texts(), "<@U0ANN>") {
		t.Fatalf("webhook messages: %+v", msgs)
	}
	srv.Fail("webhook", slacktest.Failure{Status: 429, RetryAfter: 2})
	err := e.send(b.event(3, builds.Finished, builds.Failed, builds.StatusBroken))[0]
	var de *delivery.Error
	if !errors.As(err, &de) || de.RetryAfter != 2*time.Second {
		t.Fatalf("webhook rate limit: %v", err)
	}
	srv.RemoveWebhooks()
	err = e.send(b.event(3, builds.Finished, builds.Failed, builds.StatusBroken))[0]
	if !errors.As(err, &de) || !de.Gone || !strings.Contains(err.Error(), "no_service") || strings.Contains(err.Error(), hook) {
		t.Fatalf("removed webhook: %v", err)
	}
	if p := srv.Problems(); len(p) > 0 {
		t.Fatal(p)
	}
}

// TestRateLimitGoesBackToTheEngine runs the delivery engine on a real
// store: a 429 with Retry-After 1 makes the engine wait at least that
// long, then the message goes out.
func TestRateLimitGoesBackToTheEngine(t *testing.T) {
	e := newEnv(t, strings.Replace(tokenRules, `    icon_emoji: ":construction:"`, `    icon_emoji: ":construction:"
    retry_schedule: [0s, 10m, 10m]`, 1), nil)
	ch := e.slack.AddChannel("builds", true)
	eng, err := delivery.New(delivery.Config{Store: e.db, Logger: slog.New(slog.DiscardHandler),
		NewSink: func(c *sinks.Config) (sinks.Sink, error) {
			if c.Type != "slack" {
				return sinks.New(c) // the user channel's pusher sink: not part of this test
			}
			return NewSink(c, Options{Store: e.db})
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
	e.slack.Fail("chat.postMessage", slacktest.Failure{Status: 429, RetryAfter: 1})
	b := build{id: 8, number: 8}
	for i, st := range []builds.State{builds.Queued, builds.Started} {
		status := builds.StatusQueued
		if st == builds.Started {
			status = builds.StatusStarted
		}
		if err := eng.Enqueue(context.Background(), e.deliveries(b.event(int64(i+1), st, "", status))); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.slack.Count("chat.update") < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("not delivered: %+v", e.slack.Requests())
		}
		time.Sleep(20 * time.Millisecond)
	}
	var limited, posted time.Time
	for _, r := range e.slack.Requests() {
		switch {
		case r.Method == "chat.postMessage" && r.Status == 429:
			limited = r.Time
		case r.Method == "chat.postMessage" && r.Error == "":
			posted = r.Time
		}
	}
	if wait := posted.Sub(limited); wait < time.Second {
		t.Fatalf("posted %s after the 429 with Retry-After: 1", wait)
	}
	if msgs := e.slack.Messages(ch); len(msgs) != 1 || msgs[0].Edits != 1 {
		t.Fatalf("messages: %+v", msgs)
	}
	e.noProblems()
}

func TestConfigChecks(t *testing.T) {
	for _, c := range []struct{ rules, says string }{
		{"token: x\n    channel: '#b'\n    mentions: {ann@example.com: nobody}", "not a Slack user id"},
		{"token: x\n    channel: '#b'\n    mentions: {ann: U0ANN}", "not an email address"},
		{"webhook_url: http://hooks.example.com/x", "not an https URL"},
		{"token: x\n    channel: '#b'\n    retry_schedule: [soon]", "retry_schedule"},
	} {
		_, err := routes.Parse("r.yaml", []byte("sinks:\n  s:\n    type: slack\n    "+c.rules+"\nroutes:\n  - {name: r, to: [s]}\n"),
			routes.Options{Logger: slog.New(slog.DiscardHandler)})
		if err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%q: %v", c.rules, err)
		}
	}
	// A webhook to loopback over http is fine (tests, a local relay).
	if _, err := routes.Parse("r.yaml", []byte("sinks:\n  s:\n    type: slack\n    webhook_url: http://127.0.0.1:9/hooks/x\nroutes:\n  - {name: r, to: [s]}\n"),
		routes.Options{Logger: slog.New(slog.DiscardHandler)}); err != nil {
		t.Errorf("loopback webhook: %v", err)
	}
}
