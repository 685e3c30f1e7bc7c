package routes

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	texttemplate "text/template"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/sinks"
	logsink "github.com/buildbridge/buildbridge/sinks/log"
)

// fastCorpus are templates the fast evaluator must handle (fast: true)
// or leave to text/template (fast: false).
var fastCorpus = []struct {
	src  string
	fast bool
}{
	{sinks.SlackTemplate, true},
	{sinks.EmailSubject, true},
	{sinks.EmailText, true},
	{logsink.Template, true},
	{"{{.Project.Name}} #{{.Build.Number}} {{.Build.Status}} {{.Build.State}}", true},
	{"{{.Build.ID}} {{.Seq}}", false}, // .Seq is not a field of TemplateData: text/template fails
	{"{{.Event.Seq}} {{.Event.ID}} {{.Job.Name}} {{.Previous.BuildNumber}}", true},
	{"{{if eq .Build.Status \"broken\"}}B{{else if eq .Build.Status \"fixed\"}}F{{else}}-{{end}}", true},
	{"{{if ne .Build.Result \"passed\"}}bad{{end}}{{if not .Build.Success}}!{{end}}", true},
	{"{{if eq .Build.Number 12}}twelve{{end}}{{if eq .Build.Number \"x\"}}{{end}}", true},
	{"{{with .Build}}{{.Branch}}@{{short .SHA}}{{else}}none{{end}}", true},
	{"{{with .Previous}}{{with .Result}}{{.}}{{end}}{{end}}", true},
	{"{{.Build.DurationMS}} {{.Build.StartedAt}}", true},
	{"{{duration .Build.DurationMS}} {{timefmt \"15:04\" .Build.FinishedAt}} {{timefmt \"2006\" .Event.Time}}", true},
	{"{{default \"anon\" .Build.Author}} {{default \"-\" .Build.Reason}} {{default 0 .Build.DurationMS}}", true},
	{"{{json .Build}} {{json .Build.Message}} {{json .Data}} {{json .Project}}", true},
	{"{{.Data.message}} {{.Data.count}} {{.Data.nested.x}} {{.Data.missing}}", true},
	{"{{with .Data}}{{.message}}{{end}}", true},
	{"{{upper .Build.Message}} {{lower .Project.Name}} {{trim .Build.Message}} {{firstLine .Build.Message}}", true},
	{"{{upper .Build.Status}}", true}, // text/template refuses a builds.Status for a string
	{"{{.Build.Message | firstLine | trunc 10 | slack}} {{replace \"a\" \"b\" .Build.Branch}}", true},
	{"{{icon .Build.Status}}{{icon \"passed\"}}{{icon .Build.Number}}{{icon .Data.message}}", true},
	{"{{.Event.Time.Year}}", false},
	{"{{$x := .Build}}{{$x.Number}}", false},
	{"{{range .Data.list}}{{.}}{{end}}", false},
	{"{{printf \"%05d\" .Build.Number}}", false},
	{"{{join \",\" .Data.list}}", false},
	{"{{.Build.Nope}}", false},
	{"{{template \"x\"}}{{define \"x\"}}y{{end}}", false},
}

func variants() []event.Envelope {
	evs := append([]event.Envelope(nil), allSamples...)
	odd := build{result: builds.Failed, prev: builds.Passed, author: "Zoë <&> \"q\"", email: "z@x"}.event()
	odd.Build.Message = "ünïcode <b>bold</b> & \"quotes\"\nsecond line"
	odd.Build.Reason = "manual"
	odd.Data = json.RawMessage(`{"message":"m","count":2.5,"nested":{"x":[1,2]},"list":["a","b"]}`)
	evs = append(evs, odd)
	noProject := build{result: builds.Passed}.event()
	noProject.Project, noProject.Job, noProject.Previous = nil, nil, nil
	evs = append(evs, noProject, other("api-usage", `[1,2]`), other("api-usage", `{"message":null}`), other("system-alert", ``))
	return evs
}

func TestFastTemplateMatchesTextTemplate(t *testing.T) {
	for _, c := range fastCorpus {
		tm, err := texttemplate.New("t").Funcs(Funcs).Parse(c.src)
		if err != nil {
			t.Fatalf("%s: %v", c.src, err)
		}
		f := compileFast(tm.Tree.Root)
		if (f != nil) != c.fast {
			t.Errorf("%q: fast compile %v, want %v", c.src, f != nil, c.fast)
		}
		if f == nil {
			continue
		}
		slowOnly := 0
		for _, ev := range variants() {
			compareFast(t, c.src, f, textRenderer{tm}, ev)
			x := newCtx(&ev)
			if f.exec(x, &bytes.Buffer{}) == errSlow {
				slowOnly++
			}
			x.release()
		}
		if c.src == sinks.SlackTemplate && slowOnly > 0 {
			t.Errorf("the default Slack template fell back to text/template on %d events", slowOnly)
		}
	}
}

func compareFast(t testing.TB, src string, f *fastTemplate, slow textRenderer, ev event.Envelope) {
	x := newCtx(&ev)
	defer x.release()
	var a, b bytes.Buffer
	errS := slow.render(x, &a)
	errF := f.exec(x, &b)
	if errF == errSlow {
		return
	}
	if errF != nil || errS != nil || a.String() != b.String() {
		t.Fatalf("%q on %s:\ntext/template %q (%v)\nfast          %q (%v)", src, ev.ID, a.String(), errS, b.String(), errF)
	}
}

// FuzzFastTemplate compares the fast evaluator with text/template on
// arbitrary templates, messages and event data.
func FuzzFastTemplate(f *testing.F) {
	for _, c := range fastCorpus {
		f.Add(c.src, "msg <&> line\nnext", `{"message":"x","n":1}`)
	}
	f.Fuzz(func(t *testing.T, src, message, data string) {
		tm, err := texttemplate.New("t").Funcs(Funcs).Parse(src)
		if err != nil || checkTree(tm.Tree.Root) != nil {
			return
		}
		fast := compileFast(tm.Tree.Root)
		if fast == nil {
			return
		}
		ev := build{result: builds.Failed, prev: builds.Passed}.event()
		ev.Build.Message = message
		if json.Valid([]byte(data)) {
			ev.Data = json.RawMessage(data)
		}
		compareFast(t, src, fast, textRenderer{tm}, ev)
		compareFast(t, src, fast, textRenderer{tm}, other("api-usage", data))
	})
}

func TestFastTemplatesUsedForDefaults(t *testing.T) {
	r := mustParse(t, testSinks+"routes:\n  - name: r\n    to: [l, s, m]\n")
	for _, rt := range r.routes {
		for _, tg := range rt.to {
			for _, s := range append([]*slot{tg.body, tg.subject}, tg.params...) {
				if s == nil || s.r == nil {
					continue
				}
				if _, ok := s.r.(fastRenderer); !ok && !strings.Contains(s.path, "content_type") {
					t.Errorf("%s: %T, want the fast renderer", s.path, s.r)
				}
			}
		}
	}
}
