package routes

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/event"
	// The log sink type, which every test file here uses.
	_ "github.com/buildbridge/buildbridge/sinks/log"
)

const testWHSec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

var testEnv = map[string]string{"T": "xoxb-test-token", "S": testWHSec, "PW": "smtp-password"}

func testOptions() Options {
	return Options{LookupEnv: func(k string) (string, bool) { v, ok := testEnv[k]; return v, ok },
		Logger: slog.New(slog.DiscardHandler)}
}

func mustParse(t testing.TB, src string) *Rules {
	t.Helper()
	r, err := Parse("rules.yaml", []byte(src), testOptions())
	if err != nil {
		t.Fatalf("rules refused:\n%v\n--- source:\n%s", err, src)
	}
	return r
}

const testSinks = `
sinks:
  l: {type: log}
  s: {type: slack, token: "${T}", channel: "#builds"}
  p: {type: pusher}
  m: {type: email, host: smtp.example.com, from: ci@example.com, to: team@example.com}
  h: {type: webhook, url: "https://hooks.example.com/x", secret: "${S}"}
`

// build makes a build-state-changed event. prev is the previous finished
// build's result ("" for none).
type build struct {
	project, branch string
	state           builds.State
	result, prev    builds.Result
	author, email   string
	durationMS      int64
}

func (b build) event() event.Envelope {
	if b.project == "" {
		b.project = "app"
	}
	if b.branch == "" {
		b.branch = "main"
	}
	if b.state == "" {
		b.state = builds.Finished
	}
	if b.author == "" {
		b.author, b.email = "Ann Example", "ann@example.com"
	}
	start := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	end := start.Add(time.Duration(b.durationMS) * time.Millisecond)
	tr := builds.Transition{EventID: "evt_" + b.project + "_" + b.branch, Seq: 1, Time: end, To: b.state,
		Build: builds.Build{ID: 7, Number: 12, State: b.state, Result: b.result, Branch: b.branch,
			Ref: "refs/heads/" + b.branch, SHA: "abcdef0123456789", Author: b.author, AuthorEmail: b.email,
			Message: "change"},
		Project: builds.ProjectRef{ID: 3, Name: b.project, OwnerID: 5}}
	if b.state != builds.Queued {
		tr.Build.StartedAt = &start
	}
	if b.state == builds.Finished {
		tr.Build.FinishedAt = &end
	}
	if b.prev != "" {
		tr.Previous = &builds.Previous{Number: 11, Result: b.prev}
	}
	return event.FromTransition(tr, "https://ci.example/builds/")
}

func other(typ, data string) event.Envelope {
	return event.Envelope{ID: "evt_" + typ, Type: typ, Time: time.Now(), Data: json.RawMessage(data)}
}

func TestMatchSemantics(t *testing.T) {
	finished := build{result: builds.Passed}.event()
	cases := []struct {
		name  string
		route string // the route's keys besides name and to
		ev    event.Envelope
		match bool
		why   string // part of the reason when not matched
	}{
		{"no match block: every build event", ``, finished, true, ""},
		{"default event type is build-state-changed", ``, other("api-usage", `{}`), false, `event type "api-usage" is not build-state-changed`},
		{"event *", "match: {event: '*'}", other("api-usage", `{}`), true, ""},
		{"event list", "match: {event: [api-usage, system-alert]}", other("system-alert", `{}`), true, ""},
		{"event list excludes builds", "match: {event: [api-usage]}", finished, false, "is not api-usage"},

		{"project exact", "match: {project: app}", finished, true, ""},
		{"project exact, other project", "match: {project: app}", build{project: "web"}.event(), false, `project "web" does not match "app"`},
		{"project glob", "match: {project: 'lib-*'}", build{project: "lib-core"}.event(), true, ""},
		{"project glob list", "match: {project: [web, 'lib-*']}", build{project: "app"}.event(), false, `does not match ["web", "lib-*"]`},

		{"branch * stops at /", "match: {branch: 'release/*'}", build{branch: "release/1.2"}.event(), true, ""},
		{"branch * does not cross /", "match: {branch: 'release/*'}", build{branch: "release/1.2/hotfix"}.event(), false, "does not match"},
		{"branch ** crosses /", "match: {branch: 'release/**'}", build{branch: "release/1.2/hotfix"}.event(), true, ""},
		{"branch exclusion", "match: {branch: ['**', '!main']}", build{branch: "main"}.event(), false, "does not match"},
		{"branch exclusion lets others through", "match: {branch: ['**', '!main']}", build{branch: "feature/x"}.event(), true, ""},
		{"branch only exclusions", "match: {branch: '!wip/**'}", build{branch: "feature/x"}.event(), true, ""},
		{"branch ?", "match: {branch: 'v?'}", build{branch: "v2"}.event(), true, ""},
		{"branch set", "match: {branch: '[0-9]*'}", build{branch: "1.x"}.event(), true, ""},
		{"branch negated set", "match: {branch: '[!0-9]*'}", build{branch: "1.x"}.event(), false, "does not match"},
		{"branch escaped *", `match: {branch: 'a\*'}`, build{branch: "a*"}.event(), true, ""},
		{"branch escaped * is literal", `match: {branch: 'a\*'}`, build{branch: "ab"}.event(), false, "does not match"},

		{"state", "match: {state: FINISHED}", finished, true, ""},
		{"state lower case accepted", "match: {state: finished}", finished, true, ""},
		{"state other", "match: {state: [QUEUED, STARTED]}", finished, false, "state FINISHED is not one of QUEUED, STARTED"},
		{"result", "match: {result: [failed, errored]}", build{result: builds.Errored}.event(), true, ""},
		{"result of a queued build", "match: {result: failed}", build{state: builds.Queued}.event(), false, "no result yet"},
		{"status", "match: {status: broken}", build{result: builds.Failed, prev: builds.Passed}.event(), true, ""},
		{"status other", "match: {status: broken}", build{result: builds.Failed, prev: builds.Failed}.event(), false, "status still_failing is not broken"},

		{"author email glob", "match: {author: '*@example.com'}", finished, true, ""},
		{"author name, case-insensitive", "match: {author: 'ANN*'}", finished, true, ""},
		{"author other", "match: {author: 'bob*'}", finished, false, `author "Ann Example" <ann@example.com> does not match "bob*"`},

		{"notify always (default) on a green build", "notify: always", finished, true, ""},
		{"notify change: broken", "notify: change", build{result: builds.Failed, prev: builds.Passed}.event(), true, ""},
		{"notify change: fixed", "notify: change", build{result: builds.Passed, prev: builds.Failed}.event(), true, ""},
		{"notify change: fixed after errored", "notify: change", build{result: builds.Passed, prev: builds.Errored}.event(), true, ""},
		{"notify change: errored after a pass", "notify: change", build{result: builds.Errored, prev: builds.Passed}.event(), true, ""},
		{"notify change: still failing", "notify: change", build{result: builds.Failed, prev: builds.Failed}.event(), false, "not a change"},
		{"notify change: errored after failed", "notify: change", build{result: builds.Errored, prev: builds.Failed}.event(), false, "not a change"},
		{"notify change: still passing", "notify: change", build{result: builds.Passed, prev: builds.Passed}.event(), false, "not a change"},
		{"notify change: first build failing", "notify: change", build{result: builds.Failed}.event(), true, ""},
		{"notify change: first build passing", "notify: change", build{result: builds.Passed}.event(), false, "not a change"},
		{"notify change: canceled", "notify: change", build{result: builds.Canceled, prev: builds.Passed}.event(), false, "not a change"},
		{"notify change: started", "notify: change", build{state: builds.Started, prev: builds.Passed}.event(), false, "not a change"},
		{"notify change does not apply to other events", "notify: change\nmatch: {event: api-usage}", other("api-usage", `{}`), true, ""},
		{"notify never", "notify: never", build{result: builds.Failed, prev: builds.Passed}.event(), false, "notify: never"},

		{"if true", "match: {if: 'build.duration_ms > 60000'}", build{result: builds.Passed, durationMS: 72000}.event(), true, ""},
		{"if false", "match: {if: 'build.duration_ms > 60000'}", build{result: builds.Passed, durationMS: 1000}.event(), false, "if: build.duration_ms > 60000 is false"},
		{"if on previous", `match: {if: 'previous.result == "passed" && build.result != "passed"'}`, build{result: builds.Failed, prev: builds.Passed}.event(), true, ""},
		{"if on project and branch", `match: {if: 'project.name in ["app", "web"] && build.branch startsWith "ma"'}`, finished, true, ""},
		{"if with a regexp", `match: {if: 'build.message matches "^ch"'}`, finished, true, ""},
		{"if on data", "match: {event: api-usage, if: 'data.count > 100'}", other("api-usage", `{"count": 150}`), true, ""},
		{"if on data, false", "match: {event: api-usage, if: 'data.count > 100'}", other("api-usage", `{"count": 5}`), false, "is false"},
		{"if failing at runtime does not match", "match: {event: api-usage, if: 'data.count > 100'}", other("api-usage", `{"count": "many"}`), false, "fails on this event"},
		{"conditions apply in order", "match: {project: web, branch: nope}", finished, false, "project"},
		{"build keys on an event without a build", "match: {event: '*', branch: main}", other("system-alert", `{}`), false, "the event has no build"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := testSinks + "routes:\n  - name: r\n    to: [l]\n" + indent(c.route, "    ")
			r := mustParse(t, src)
			x := r.Explain(c.ev)
			rr := x.Routes[len(x.Routes)-1]
			if rr.Matched != c.match || (!c.match && !strings.Contains(rr.Reason, c.why)) {
				t.Fatalf("matched %v (%q), want %v (%q)", rr.Matched, rr.Reason, c.match, c.why)
			}
			ds := r.Match(c.ev)
			got := 0
			for _, d := range ds {
				if d.Route == "r" {
					got++
				}
			}
			if (got == 1) != c.match {
				t.Fatalf("Match gave %d deliveries for the route, Explain said %v", got, c.match)
			}
		})
	}
}

func indent(s, prefix string) string {
	if s == "" {
		return ""
	}
	lines := strings.Split(s, "\n")
	for i := range lines {
		lines[i] = prefix + lines[i]
	}
	return strings.Join(lines, "\n") + "\n"
}

func TestSeveralRoutesToOneTarget(t *testing.T) {
	r := mustParse(t, testSinks+`
routes:
  - name: first
    to: [s, l]
  - name: second
    to:
      - s                       # same channel as first: dropped
      - {sink: s, channel: "#ops"}
      - {sink: l, level: warn}  # the log sink has one target: dropped
  - name: third
    match: {branch: main}
    to:
      - {sink: s, channel: "#builds", template: "other text"}   # same target as first
      - {sink: p, channel: "private-user-{{.Project.OwnerID}}"} # same as the user channel
      - {sink: p, channel: "private-user-{{.Project.OwnerID}}", event: "build-finished"}
      - {sink: m, to: ["TEAM@example.com"]}
      - {sink: m, to: ["{{.Build.AuthorEmail}}", team@example.com]}
      - h
      - h
`)
	ev := build{result: builds.Failed, prev: builds.Passed}.event()
	x := r.Explain(ev)
	var got []string
	for _, d := range x.Deliveries {
		got = append(got, d.Route+"|"+d.Sink+"|"+d.Target)
	}
	want := []string{
		"(user channel)|p|private-user-5 build-state-changed",
		"first|s|#builds",
		"first|l|default",
		"second|s|#ops",
		"third|p|private-user-5 build-finished",
		"third|m|team@example.com",
		"third|m|ann@example.com,team@example.com",
		"third|h|https://hooks.example.com/x",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("deliveries:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The first route's message wins for a shared target.
	if !strings.Contains(string(x.Deliveries[1].Body), "#12") {
		t.Errorf("slack body %q is not the default template's", x.Deliveries[1].Body)
	}
	notes := 0
	for _, rr := range x.Routes {
		for _, tr := range rr.Targets {
			if strings.HasPrefix(tr.Note, "duplicate of the delivery from route") {
				notes++
			}
		}
	}
	if notes != 5 {
		t.Errorf("%d duplicate notes, want 5: %+v", notes, x.Routes)
	}
}

func TestImplicitUserChannel(t *testing.T) {
	ev := build{result: builds.Passed}.event()
	t.Run("built-in realtime sink when the file has no pusher sink", func(t *testing.T) {
		r := mustParse(t, "sinks:\n  l: {type: log}\nroutes: []\n")
		ds := r.Match(ev)
		if len(ds) != 1 {
			t.Fatalf("%d deliveries", len(ds))
		}
		d := ds[0]
		if d.Sink != BuiltinSink || d.SinkType != "pusher" || d.Route != ImplicitRoute ||
			d.Params["channel"] != "private-user-5" || d.Params["event"] != "build-state-changed" ||
			d.Target != "private-user-5 build-state-changed" || d.ContentType != "application/json" || d.EventID != ev.ID {
			t.Fatalf("implicit delivery %+v", d)
		}
		want, _ := json.Marshal(ev)
		var a, b any
		json.Unmarshal(want, &a)
		if err := json.Unmarshal(d.Body, &b); err != nil || fmt.Sprint(a) != fmt.Sprint(b) {
			t.Fatalf("body is not the event's JSON:\n%s\n%s", d.Body, want)
		}
		if names := r.Sinks(); len(names) != 2 || names[1].Name != BuiltinSink {
			t.Fatalf("the built-in sink is not listed for the delivery engine: %v", names)
		}
	})
	t.Run("first pusher sink of the file", func(t *testing.T) {
		r := mustParse(t, "sinks:\n  wall: {type: pusher}\n  other: {type: pusher}\nroutes: []\n")
		if ds := r.Match(ev); len(ds) != 1 || ds[0].Sink != "wall" || r.UserSink() != "wall" {
			t.Fatalf("deliveries %+v", ds)
		}
		if _, ok := r.Sink(BuiltinSink); ok {
			t.Fatal("built-in sink added although the file has a pusher sink")
		}
	})
	t.Run("empty routes and no sinks", func(t *testing.T) {
		r := mustParse(t, "routes: []\n")
		if ds := r.Match(ev); len(ds) != 1 {
			t.Fatalf("%d deliveries", len(ds))
		}
		if ds := Builtin().Match(ev); len(ds) != 1 || ds[0].Sink != BuiltinSink {
			t.Fatalf("built-in rules: %+v", ds)
		}
	})
	t.Run("routes can use the built-in sink by name", func(t *testing.T) {
		r := mustParse(t, "routes:\n  - name: wall\n    to: [{sink: realtime, channel: 'private-project-{{.Project.ID}}'}]\n")
		if ds := r.Match(ev); len(ds) != 2 || ds[1].Target != "private-project-3 build-state-changed" {
			t.Fatalf("deliveries %+v", ds)
		}
	})
	t.Run("only build events, only with a project", func(t *testing.T) {
		r := mustParse(t, "routes: []\n")
		if ds := r.Match(other("api-usage", `{}`)); len(ds) != 0 {
			t.Fatalf("%+v", ds)
		}
		noProject := ev
		noProject.Project = nil
		if ds := r.Match(noProject); len(ds) != 0 {
			t.Fatalf("%+v", ds)
		}
	})
}

func TestNonBuildEventsThroughEveryDefault(t *testing.T) {
	r := mustParse(t, testSinks+`
routes:
  - name: ops
    match: {event: [system-alert, api-usage]}
    to: [l, s, {sink: p, channel: ops}, m, h]
`)
	ev := other("system-alert", `{"message":"disk full","node":"n1"}`)
	ds := r.Match(ev)
	if len(ds) != 5 {
		t.Fatalf("%d deliveries: %+v", len(ds), ds)
	}
	for _, d := range ds {
		if len(d.Body) == 0 {
			t.Errorf("%s: empty body", d.Sink)
		}
		if d.SinkType == "slack" && !strings.Contains(string(d.Body), `"disk full"`) {
			t.Errorf("slack body %q", d.Body)
		}
		if d.SinkType == "email" && !strings.Contains(d.Subject, "system-alert") {
			t.Errorf("email subject %q", d.Subject)
		}
	}
}
