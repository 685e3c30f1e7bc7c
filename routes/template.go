package routes

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"reflect"
	"strings"
	texttemplate "text/template"
	"text/template/parse"
	"time"
	"unicode/utf8"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/event"
)

// TemplateData is what a template's dot holds. Field names are Go's:
// {{.Build.Number}}, {{.Build.AuthorEmail}}, {{.Project.Name}},
// {{.Event.Type}}, {{.Data.some_key}}. Build, Job, Project and Previous
// are nil for events other than build-state-changed; Data is the event's
// data decoded from JSON (nil when it has none).
type TemplateData struct {
	Event    *event.Envelope
	Build    *event.Build
	Job      *event.Job
	Project  *event.Project
	Previous *event.Previous
	Data     map[string]any
}

// Funcs is the function set of templates, besides text/template's own:
//
//	json V          V as JSON (strings quoted): {{json .Event}}, {{json .Build.Message}}
//	upper S, lower S, trim S
//	firstLine S     S up to its first line break (commit subjects)
//	short S         the first 7 characters (commit SHAs)
//	trunc N S       S cut to N characters, ending with … when cut
//	duration MS     a duration in milliseconds (int or *int) as 1m12s; "" for nil
//	default D V     V, or D when V is empty or nil
//	join SEP LIST   the list's items joined by SEP
//	replace OLD NEW S
//	icon STATUS     an emoji for a build status (✅ passed, 💥 broken, …)
//	slack S         S with & < > escaped for Slack mrkdwn
//	timefmt LAYOUT T  a time (or *time) in Go layout, e.g. "2006-01-02 15:04"
var Funcs = map[string]any{
	"json":      toJSON,
	"upper":     strings.ToUpper,
	"lower":     strings.ToLower,
	"trim":      strings.TrimSpace,
	"firstLine": firstLine,
	"short":     func(s string) string { return truncRunes(s, 7, "") },
	"trunc":     func(n int, s string) string { return truncRunes(s, n, "…") },
	"duration":  duration,
	"default":   dflt,
	"join":      joinList,
	"replace":   func(old, new, s string) string { return strings.ReplaceAll(s, old, new) },
	"icon":      icon,
	"slack":     slackEscape,
	"timefmt":   timefmt,
}

func toJSON(v any) (string, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "", err
	}
	return strings.TrimSuffix(b.String(), "\n"), nil
}

func firstLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}

func truncRunes(s string, n int, ellipsis string) string {
	if n < 0 {
		n = 0
	}
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	if ellipsis != "" && n > 0 {
		n--
	}
	i := 0
	for j := range s {
		if i == n {
			return s[:j] + ellipsis
		}
		i++
	}
	return s
}

func duration(v any) string {
	var ms int64
	switch x := v.(type) {
	case nil:
		return ""
	case *int64:
		if x == nil {
			return ""
		}
		ms = *x
	case int64:
		ms = x
	case int:
		ms = int64(x)
	case float64:
		ms = int64(x)
	case time.Duration:
		return x.Round(time.Second).String()
	default:
		return fmt.Sprint(v)
	}
	d := time.Duration(ms) * time.Millisecond
	if d >= time.Second {
		d = d.Round(time.Second)
	}
	return d.String()
}

func dflt(def, v any) any {
	if v == nil {
		return def
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Pointer, reflect.Interface:
		if rv.IsNil() {
			return def
		}
	case reflect.String, reflect.Slice, reflect.Map:
		if rv.Len() == 0 {
			return def
		}
	}
	return v
}

func joinList(sep string, list any) string {
	switch l := list.(type) {
	case []string:
		return strings.Join(l, sep)
	case []any:
		parts := make([]string, len(l))
		for i, x := range l {
			parts[i] = fmt.Sprint(x)
		}
		return strings.Join(parts, sep)
	case nil:
		return ""
	}
	return fmt.Sprint(list)
}

var icons = map[builds.Status]string{
	builds.StatusQueued: "⏳", builds.StatusStarted: "▶️", builds.StatusPassed: "✅",
	builds.StatusFixed: "🎉", builds.StatusFailed: "❌", builds.StatusBroken: "💥",
	builds.StatusStillFailing: "🔥", builds.StatusErrored: "⚠️", builds.StatusCanceled: "⏹️",
}

func icon(v any) string {
	var s builds.Status
	switch x := v.(type) {
	case builds.Status:
		s = x
	case string:
		s = builds.Status(x)
	}
	if i, ok := icons[s]; ok {
		return i
	}
	return "•"
}

var slackReplacer = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")

func slackEscape(s string) string { return slackReplacer.Replace(s) }

func timefmt(layout string, v any) string {
	switch t := v.(type) {
	case time.Time:
		return t.Format(layout)
	case *time.Time:
		if t == nil {
			return ""
		}
		return t.Format(layout)
	}
	return ""
}

// renderer renders one template for one event.
type renderer interface {
	render(x *evalCtx, w *bytes.Buffer) error
}

// MaxRender bounds one rendered message.
const MaxRender = 1 << 20

// errTooLarge stops a template whose output passes MaxRender.
var errTooLarge = fmt.Errorf("rendered message larger than %d bytes", MaxRender)

// limitedWriter fails writes past MaxRender bytes.
type limitedWriter struct {
	b *bytes.Buffer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n+len(p) > MaxRender {
		return 0, errTooLarge
	}
	l.n += len(p)
	return l.b.Write(p)
}

type textRenderer struct{ t *texttemplate.Template }

func (r textRenderer) render(x *evalCtx, w *bytes.Buffer) error {
	x.lw = limitedWriter{b: w}
	return r.t.Execute(&x.lw, &x.data)
}

type htmlRenderer struct{ t *htmltemplate.Template }

func (r htmlRenderer) render(x *evalCtx, w *bytes.Buffer) error {
	x.lw = limitedWriter{b: w}
	return r.t.Execute(&x.lw, &x.data)
}

// maxRangeLiteral bounds {{range N}}: a template must not loop for long.
const maxRangeLiteral = 1000

// checkTree refuses what could make one render take long.
func checkTree(n parse.Node) error {
	switch n := n.(type) {
	case *parse.ListNode:
		if n == nil {
			return nil
		}
		for _, c := range n.Nodes {
			if err := checkTree(c); err != nil {
				return err
			}
		}
	case *parse.RangeNode:
		if p := n.Pipe; p != nil && len(p.Cmds) > 0 {
			for _, arg := range p.Cmds[len(p.Cmds)-1].Args {
				if num, ok := arg.(*parse.NumberNode); ok && (!num.IsInt || num.Int64 > maxRangeLiteral) {
					return fmt.Errorf("range over %s: at most %d", num.Text, maxRangeLiteral)
				}
			}
		}
		return checkBranch(&n.BranchNode)
	case *parse.IfNode:
		return checkBranch(&n.BranchNode)
	case *parse.WithNode:
		return checkBranch(&n.BranchNode)
	}
	return nil
}

func checkBranch(b *parse.BranchNode) error {
	if err := checkTree(b.List); err != nil {
		return err
	}
	if b.ElseList != nil {
		return checkTree(b.ElseList)
	}
	return nil
}

// literalRenderer is a template without actions.
type literalRenderer string

func (r literalRenderer) render(_ *evalCtx, w *bytes.Buffer) error {
	w.WriteString(string(r))
	return nil
}

// eventJSONRenderer is {{json .Event}}, the default body of pusher and
// webhook sinks: the event is marshalled once per event, not per target.
type eventJSONRenderer struct{}

func (eventJSONRenderer) render(x *evalCtx, w *bytes.Buffer) error {
	b, err := x.eventJSON()
	if err != nil {
		return err
	}
	w.Write(b)
	return nil
}

// eventTypeRenderer is {{.Event.Type}}, the default pusher event name.
type eventTypeRenderer struct{}

func (eventTypeRenderer) render(x *evalCtx, w *bytes.Buffer) error {
	w.WriteString(x.ev.Type)
	return nil
}

// sameOnSamples checks a fast template against text/template on every
// sample event: same output, or errSlow where text/template fails.
func sameOnSamples(f *fastTemplate, slow textRenderer) bool {
	for _, ev := range allSamples {
		x := newCtx(&ev)
		var a, b bytes.Buffer
		errS := slow.render(x, &a)
		errF := f.exec(x, &b)
		x.release()
		switch {
		case errF == errSlow:
		case errF != nil, errS != nil, !bytes.Equal(a.Bytes(), b.Bytes()):
			return false
		}
	}
	return true
}

var allSamples = sampleEvents(KnownEvents)

// templates compiles templates once per source within one load.
type templates struct {
	cache map[string]renderer
}

func compact(src string) string { return strings.Join(strings.Fields(src), "") }

// compile compiles a template source; html selects html/template.
func (ts *templates) compile(name, src string, html bool) (renderer, error) {
	key := fmt.Sprintf("%t\x00%s", html, src)
	if r, ok := ts.cache[key]; ok {
		return r, nil
	}
	var r renderer
	switch {
	case !html && !strings.Contains(src, "{{"):
		r = literalRenderer(src)
	case !html && compact(src) == "{{json.Event}}":
		r = eventJSONRenderer{}
	case !html && compact(src) == "{{.Event.Type}}":
		r = eventTypeRenderer{}
	case html:
		t, err := htmltemplate.New(name).Funcs(htmltemplate.FuncMap(Funcs)).Parse(src)
		if err != nil {
			return nil, templateError(err)
		}
		if err := checkTree(t.Tree.Root); err != nil {
			return nil, fmt.Errorf("template: %w", err)
		}
		r = htmlRenderer{t}
	default:
		t, err := texttemplate.New(name).Funcs(texttemplate.FuncMap(Funcs)).Parse(src)
		if err != nil {
			return nil, templateError(err)
		}
		if err := checkTree(t.Tree.Root); err != nil {
			return nil, fmt.Errorf("template: %w", err)
		}
		r = textRenderer{t}
		if f := compileFast(t.Tree.Root); f != nil && sameOnSamples(f, textRenderer{t}) {
			r = fastRenderer{fast: f, slow: textRenderer{t}}
		}
	}
	if ts.cache == nil {
		ts.cache = map[string]renderer{}
	}
	ts.cache[key] = r
	return r, nil
}

// templateError drops the "template: NAME:" prefix of template errors,
// keeping the template line: "line 2: function "foo" not defined".
func templateError(err error) error {
	msg := err.Error()
	rest, ok := strings.CutPrefix(msg, "template: ")
	if !ok {
		rest, ok = strings.CutPrefix(msg, "html/template:")
	}
	if !ok {
		return err
	}
	// rest is "NAME:LINE: msg" or "NAME:LINE:COL: executing "NAME" at <.X>: msg".
	i := strings.Index(rest, ":")
	if i < 0 {
		return errors.New(rest)
	}
	rest = rest[i+1:]
	j := strings.Index(rest, ": ")
	if j < 0 {
		return errors.New(rest)
	}
	pos, m := rest[:j], rest[j+2:]
	if strings.HasPrefix(m, "executing \"") {
		if k := strings.Index(m[len("executing \""):], "\""); k >= 0 {
			m = strings.TrimSpace(m[len("executing \"")+k+1:])
		}
	}
	return fmt.Errorf("template line %s: %s", strings.SplitN(pos, ":", 2)[0], m)
}

// sampleEvents are the events every template is rendered against at
// load, so that a template that fails on a real event fails when the file
// is loaded: for build-state-changed, one build of each status; for the
// other types, one event with a small data body.
func sampleEvents(types []string) []event.Envelope {
	var out []event.Envelope
	for _, typ := range types {
		if typ != event.TypeBuildStateChanged {
			out = append(out, event.Envelope{ID: "evt_sample_" + typ, Type: typ,
				Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Seq: 1,
				Data: sampleData(typ)})
			continue
		}
		for _, st := range builds.AllStatuses {
			out = append(out, sampleBuild(st))
		}
	}
	return out
}

// sampleBuild is a build-state-changed event of a build of the status.
func sampleBuild(st builds.Status) event.Envelope {
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	end := start.Add(72 * time.Second)
	tr := builds.Transition{
		EventID: "evt_sample_" + string(st), Seq: 2, Time: end, From: builds.Started, To: builds.Finished,
		Build: builds.Build{ID: 9, Number: 42, State: builds.Finished,
			Ref: "refs/heads/main", Branch: "main", SHA: "0123456789abcdef0123456789abcdef01234567",
			Author: "Ann Example", AuthorEmail: "ann@example.com", Message: "Fix the thing\n\nLonger text.",
			StartedAt: &start, FinishedAt: &end},
		Project: builds.ProjectRef{ID: 3, Name: "app", OwnerID: 5},
	}
	prev := func(r builds.Result) { tr.Previous = &builds.Previous{Number: 41, Result: r} }
	switch st {
	case builds.StatusQueued:
		tr.From, tr.To, tr.Time, tr.Build.State = "", builds.Queued, start, builds.Queued
		tr.Build.StartedAt, tr.Build.FinishedAt = nil, nil
	case builds.StatusStarted:
		tr.From, tr.To, tr.Time, tr.Build.State = builds.Queued, builds.Started, start, builds.Started
		tr.Build.FinishedAt = nil
	case builds.StatusPassed:
		tr.Build.Result = builds.Passed
		prev(builds.Passed)
	case builds.StatusFixed:
		tr.Build.Result = builds.Passed
		prev(builds.Failed)
	case builds.StatusFailed:
		tr.Build.Result = builds.Failed
	case builds.StatusBroken:
		tr.Build.Result = builds.Failed
		prev(builds.Passed)
	case builds.StatusStillFailing:
		tr.Build.Result = builds.Failed
		prev(builds.Failed)
	case builds.StatusErrored:
		tr.Build.Result = builds.Errored
		prev(builds.Passed)
	case builds.StatusCanceled:
		tr.Build.Result = builds.Canceled
	}
	return event.FromTransition(tr, "https://buildbridge.example/builds/")
}

// SampleEvent is a build-state-changed event of a finished build that
// broke the main branch of project "app": what `rules test` uses without
// --event.
func SampleEvent() event.Envelope { return sampleBuild(builds.StatusBroken) }
