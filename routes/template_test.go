package routes

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	texttemplate "text/template"
	"time"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/sinks"
)

func TestFuncs(t *testing.T) {
	ms := int64(72_500)
	when := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct{ src, want string }{
		{`{{json .}}`, `{"a":"<b>","n":1}`},
		{`{{json "x\"y"}}`, `"x\"y"`},
		{`{{upper "ab"}} {{lower "AB"}} [{{trim "  x "}}]`, `AB ab [x]`},
		{`{{firstLine "one\ntwo"}}|{{firstLine "one\r\ntwo"}}`, `one|one`},
		{`{{short "0123456789"}} {{short "abc"}}`, `0123456 abc`},
		{`{{trunc 5 "abcdefgh"}} {{trunc 5 "abc"}} {{"héllo wörld" | trunc 4}}`, `abcd… abc hél…`},
		{`{{duration .ms}} {{duration .nilms}} {{duration 900}} {{duration 3600000}}`, `1m13s  900ms 1h0m0s`},
		{`{{default "none" ""}} {{default "none" "x"}} {{default "none" .nilms}}`, `none x none`},
		{`{{join ", " .list}}`, `a, b`},
		{`{{replace "-" "_" "a-b-c"}}`, `a_b_c`},
		{`{{icon "broken"}}{{icon "passed"}}{{icon "nope"}}`, `💥✅•`},
		{`{{slack "a <b> & c"}}`, `a &lt;b&gt; &amp; c`},
		{`{{timefmt "2006-01-02 15:04" .when}} {{timefmt "15:04" .whenp}}`, `2026-01-02 03:04 03:04`},
	}
	data := map[string]any{"a": "<b>", "n": 1}
	for _, c := range cases {
		tm, err := texttemplate.New("t").Funcs(Funcs).Parse(c.src)
		if err != nil {
			t.Fatalf("%s: %v", c.src, err)
		}
		var dot any = data
		if !strings.Contains(c.src, "json .") {
			dot = map[string]any{"ms": &ms, "nilms": (*int64)(nil), "list": []string{"a", "b"}, "when": when, "whenp": &when}
		}
		var b bytes.Buffer
		if err := tm.Execute(&b, dot); err != nil {
			t.Fatalf("%s: %v", c.src, err)
		}
		if b.String() != c.want {
			t.Errorf("%s = %q, want %q", c.src, b.String(), c.want)
		}
	}
}

// TestDefaultTemplates renders every type's defaults against every sample
// event and checks what they say.
func TestDefaultTemplates(t *testing.T) {
	r := mustParse(t, testSinks+`
routes:
  - name: all
    match: {event: "*"}
    to: [l, s, {sink: p, channel: wall}, m, h]
`)
	for _, ev := range sampleEvents(KnownEvents) {
		ds := r.Match(ev)
		want := 5
		if ev.Type == event.TypeBuildStateChanged {
			want = 6
		}
		if len(ds) != want {
			t.Fatalf("%s %s: %d deliveries, want %d", ev.Type, ev.ID, len(ds), want)
		}
		for _, d := range ds {
			if len(d.Body) == 0 || d.ContentType == "" {
				t.Errorf("%s/%s: empty body or content type", ev.ID, d.Sink)
			}
			if d.SinkType == "email" && (d.Subject == "" || d.Params["html"] != "") {
				t.Errorf("%s: email subject %q html %q", ev.ID, d.Subject, d.Params["html"])
			}
			if strings.Contains(string(d.Body), "<no value>") || strings.Contains(string(d.Body), "<nil>") {
				t.Errorf("%s/%s: body shows a missing value: %q", ev.ID, d.Sink, d.Body)
			}
		}
	}
	ev := SampleEvent()
	ds := r.Match(ev)
	by := map[string]sinks.Delivery{}
	for _, d := range ds[1:] {
		by[d.Sink] = d
	}
	checks := []struct{ sink, got, want string }{
		{"l", string(by["l"].Body), "build-state-changed app #42 main broken"},
		{"s", string(by["s"].Body), "💥 *app* #42 broken on `main` by Ann Example in 1m12s\n0123456 Fix the thing\n<https://buildbridge.example/builds/9|Open build>"},
		{"m", by["m"].Subject, "[app] Build #42 broken on main"},
		{"p", by["p"].Params["event"], "build-state-changed"},
		{"h", by["h"].ContentType, "application/json"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: %q, want %q", c.sink, c.got, c.want)
		}
	}
	if !strings.Contains(string(by["m"].Body), "Commit:   0123456 Fix the thing") {
		t.Errorf("email text %q", by["m"].Body)
	}
	for _, s := range []string{"p", "h"} {
		var got, want map[string]any
		raw, _ := json.Marshal(ev)
		json.Unmarshal(raw, &want)
		if err := json.Unmarshal(by[s].Body, &got); err != nil {
			t.Fatalf("%s body is not JSON: %v", s, err)
		}
		if g, w := mustJSON(got), mustJSON(want); g != w {
			t.Errorf("%s body is not the event:\n%s\n%s", s, g, w)
		}
	}
}

func mustJSON(v any) string { b, _ := json.Marshal(v); return string(b) }

func TestTemplatesInRoutes(t *testing.T) {
	r := mustParse(t, testSinks+`
routes:
  - name: custom
    to:
      - sink: s
        channel: "#{{.Project.Name}}-ci"
        template: "{{.Build.Message | upper}} by {{.Build.Author}}"
      - sink: p
        channel: "private-project-{{.Project.ID}}"
        event: "build-{{.Build.Status}}"
        template: '{"n": {{.Build.Number}}}'
      - sink: m
        to: ["{{.Build.AuthorEmail}}"]
        subject: "{{.Build.Status}}: {{.Project.Name}}"
        template: "plain"
        html: "<p>{{.Build.Message}}</p>"
      - sink: h
        content_type: text/plain
        template: "{{.Build.Branch}}"
`)
	ev := build{result: builds.Failed, prev: builds.Passed, author: "Bob", email: "Bob@Example.com"}.event()
	ev.Build.Message = "<script>"
	ds := r.Match(ev)[1:]
	if len(ds) != 4 {
		t.Fatalf("%d deliveries", len(ds))
	}
	want := []struct{ target, body, extra string }{
		{"#app-ci", "<SCRIPT> by Bob", ""},
		{"private-project-3 build-broken", `{"n": 12}`, ""},
		{"bob@example.com", "plain", "<p>&lt;script&gt;</p>"},
		{"https://hooks.example.com/x", "main", "text/plain"},
	}
	for i, w := range want {
		d := ds[i]
		if d.Target != w.target || string(d.Body) != w.body {
			t.Errorf("%d: %q %q, want %q %q", i, d.Target, d.Body, w.target, w.body)
		}
	}
	if ds[2].Params["html"] != want[2].extra || ds[2].Subject != "broken: app" {
		t.Errorf("email html %q subject %q", ds[2].Params["html"], ds[2].Subject)
	}
	if ds[3].ContentType != "text/plain" {
		t.Errorf("webhook content type %q", ds[3].ContentType)
	}
}

// TestRuntimeTemplateFailure: a template that renders on the samples but
// fails on a real event falls back to the type's default; a parameter
// that fails drops the delivery. Both are logged and explained.
func TestRuntimeTemplateFailure(t *testing.T) {
	var logs bytes.Buffer
	opts := testOptions()
	opts.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	r, err := Parse("rules.yaml", []byte(testSinks+`
routes:
  - name: body
    match: {event: api-usage}
    to:
      - sink: s
        template: '{{if eq .Data.message "sample"}}ok{{else}}{{index .Data.items 0}}{{end}}'
  - name: param
    match: {event: api-usage}
    to:
      - sink: p
        channel: '{{if eq .Data.message "sample"}}ok{{else}}{{index .Data.items 0}}{{end}}'
`), opts)
	if err != nil {
		t.Fatal(err)
	}
	x := r.Explain(other("api-usage", `{"message":"real"}`))
	if len(x.Deliveries) != 1 {
		t.Fatalf("%d deliveries: %+v", len(x.Deliveries), x.Deliveries)
	}
	if got := string(x.Deliveries[0].Body); !strings.HasPrefix(got, "*api-usage*") {
		t.Errorf("fallback body %q", got)
	}
	body, param := x.Routes[1].Targets[0], x.Routes[2].Targets[0]
	if !strings.Contains(body.Note, "the default was used") || body.Delivery != 0 {
		t.Errorf("body note %+v", body)
	}
	if !strings.HasPrefix(param.Note, "not delivered: routes[1].to[0].channel") || param.Delivery != -1 {
		t.Errorf("param note %+v", param)
	}
	for _, w := range []string{"template failed; using the default", "target failed on an event; not delivered"} {
		if !strings.Contains(logs.String(), w) {
			t.Errorf("log lacks %q:\n%s", w, logs.String())
		}
	}
}

func TestTemplateErrorText(t *testing.T) {
	ts := &templates{}
	_, err := ts.compile("t", "a\n{{foo}}", false)
	if err == nil || err.Error() != `template line 2: function "foo" not defined` {
		t.Errorf("parse error: %v", err)
	}
	r, _ := ts.compile("t", "{{.Build.Number}}", false)
	ev := other("api-usage", `{}`)
	x := newCtx(&ev)
	defer x.release()
	err = templateError(r.render(x, &bytes.Buffer{}))
	if err == nil || !strings.HasPrefix(err.Error(), "template line 1: at <.Build.Number>: nil pointer evaluating") {
		t.Errorf("exec error: %v", err)
	}
}
