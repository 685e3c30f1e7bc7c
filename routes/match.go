package routes

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/expr-lang/expr/vm"
	"gopkg.in/yaml.v3"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/sinks"
)

// Rules are a compiled rules file. They are immutable: a reload makes new
// Rules, and any number of goroutines may match events at once.
type Rules struct {
	name     string
	sinks    []*sinkInst
	byName   map[string]*sinkInst
	routes   []*route
	user     *sinkInst
	warnings []string
	logger   *slog.Logger
}

// route is one compiled route.
type route struct {
	name     string
	index    int
	line     int
	events   []string
	anyEvent bool
	project  *globList
	branch   *globList
	author   *globList
	states   []string
	results  []string
	statuses []string
	notify   notifyMode
	cond     *vm.Program
	condSrc  string
	to       []*target
}

func (rt *route) needsBuild() bool {
	return rt.project != nil || rt.branch != nil || rt.author != nil ||
		rt.states != nil || rt.results != nil || rt.statuses != nil
}

func (rt *route) eventTypes() []string {
	if rt.anyEvent {
		return KnownEvents
	}
	return rt.events
}

// target is one compiled `to:` entry.
type target struct {
	path     string
	line     int
	col      int
	sink     *sinkInst
	params   []*slot
	body     *slot
	subject  *slot
	static   bool
	sParams  map[string]string
	sTarget  string
	sTargErr error
}

// slot is one rendered part of a delivery: a parameter, the body or the
// subject.
type slot struct {
	name     string
	role     sinks.Role
	static   string
	r        renderer
	items    []renderer
	fallback renderer
	path     string
	line     int
	col      int
}

func (s *slot) isStatic() bool { return s.r == nil && s.items == nil }

// render writes the slot's text for the event.
func (s *slot) render(x *evalCtx, w *bytes.Buffer) error {
	switch {
	case s.r != nil:
		return s.r.render(x, w)
	case s.items != nil:
		for i, it := range s.items {
			if i > 0 {
				w.WriteString(", ")
			}
			if err := it.render(x, w); err != nil {
				return err
			}
		}
		return nil
	}
	w.WriteString(s.static)
	return nil
}

// evalCtx holds what is computed at most once per event: the template
// data, the event's JSON, the expression environment.
type evalCtx struct {
	ev      *event.Envelope
	data    TemplateData
	json    []byte
	jsonErr error
	jsonOK  bool
	env     exprEnv
	envOK   bool
	vm      vm.VM
	buf     bytes.Buffer
}

var ctxPool = sync.Pool{New: func() any { return new(evalCtx) }}

func newCtx(ev *event.Envelope) *evalCtx {
	x := ctxPool.Get().(*evalCtx)
	x.ev = ev
	x.data = TemplateData{Event: ev, Build: ev.Build, Job: ev.Job, Project: ev.Project, Previous: ev.Previous}
	if len(ev.Data) > 0 {
		var m map[string]any
		if json.Unmarshal(ev.Data, &m) == nil {
			x.data.Data = m
		}
	}
	x.json, x.jsonErr, x.jsonOK, x.envOK = nil, nil, false, false
	return x
}

func (x *evalCtx) release() {
	x.ev, x.data, x.json, x.env = nil, TemplateData{}, nil, exprEnv{}
	if x.buf.Cap() > 64<<10 {
		x.buf = bytes.Buffer{}
	}
	ctxPool.Put(x)
}

func (x *evalCtx) eventJSON() ([]byte, error) {
	if !x.jsonOK {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		x.jsonErr = enc.Encode(x.ev)
		x.json, x.jsonOK = bytes.TrimSuffix(b.Bytes(), []byte("\n")), true
	}
	return x.json, x.jsonErr
}

// renderText renders a slot into a new string.
func (x *evalCtx) renderText(s *slot) (string, error) {
	x.buf.Reset()
	if err := s.render(x, &x.buf); err != nil {
		return "", err
	}
	return x.buf.String(), nil
}

// exprEnv is what an `if:` expression sees. Names follow the event's JSON:
// build.branch, build.status, project.name, previous.result, data.x.
// Fields of an absent part are zero ("" and 0).
type exprEnv struct {
	ID       string         `expr:"id"`
	Type     string         `expr:"type"`
	Seq      int64          `expr:"seq"`
	Time     time.Time      `expr:"time"`
	Build    exprBuild      `expr:"build"`
	Job      exprJob        `expr:"job"`
	Project  exprProject    `expr:"project"`
	Previous exprPrevious   `expr:"previous"`
	Data     map[string]any `expr:"data"`
}

type exprBuild struct {
	ID          int64     `expr:"id"`
	Number      int64     `expr:"number"`
	State       string    `expr:"state"`
	Success     bool      `expr:"success"`
	Result      string    `expr:"result"`
	Status      string    `expr:"status"`
	Ref         string    `expr:"ref"`
	Branch      string    `expr:"branch"`
	SHA         string    `expr:"sha"`
	Author      string    `expr:"author"`
	AuthorEmail string    `expr:"author_email"`
	Message     string    `expr:"message"`
	Reason      string    `expr:"reason"`
	URL         string    `expr:"url"`
	StartedAt   time.Time `expr:"started_at"`
	FinishedAt  time.Time `expr:"finished_at"`
	DurationMS  int64     `expr:"duration_ms"`
}

type exprJob struct {
	ID   int64  `expr:"id"`
	Name string `expr:"name"`
}

type exprProject struct {
	ID      int64  `expr:"id"`
	Name    string `expr:"name"`
	OwnerID int64  `expr:"owner_id"`
}

type exprPrevious struct {
	BuildNumber int64  `expr:"build_number"`
	Result      string `expr:"result"`
}

func (x *evalCtx) exprEnv() *exprEnv {
	if x.envOK {
		return &x.env
	}
	ev := x.ev
	e := exprEnv{ID: ev.ID, Type: ev.Type, Seq: ev.Seq, Time: ev.Time, Data: x.data.Data}
	if b := ev.Build; b != nil {
		e.Build = exprBuild{ID: b.ID, Number: b.Number, State: string(b.State), Result: string(b.Result),
			Status: string(b.Status), Ref: b.Ref, Branch: b.Branch, SHA: b.SHA, Author: b.Author,
			AuthorEmail: b.AuthorEmail, Message: b.Message, Reason: b.Reason, URL: b.URL}
		if b.Success != nil {
			e.Build.Success = *b.Success
		}
		if b.StartedAt != nil {
			e.Build.StartedAt = *b.StartedAt
		}
		if b.FinishedAt != nil {
			e.Build.FinishedAt = *b.FinishedAt
		}
		if b.DurationMS != nil {
			e.Build.DurationMS = *b.DurationMS
		}
	}
	if j := ev.Job; j != nil {
		e.Job = exprJob{ID: j.ID, Name: j.Name}
	}
	if p := ev.Project; p != nil {
		e.Project = exprProject{ID: p.ID, Name: p.Name, OwnerID: p.OwnerID}
	}
	if p := ev.Previous; p != nil {
		if p.BuildNumber != nil {
			e.Previous.BuildNumber = *p.BuildNumber
		}
		if p.Result != nil {
			e.Previous.Result = string(*p.Result)
		}
	}
	x.env, x.envOK = e, true
	return &x.env
}

// isChange reports whether a finished build changed between passing and
// not passing against the previous finished build of its branch; a first
// build is a change when it did not pass. Canceled builds never are.
func isChange(ev *event.Envelope) bool {
	b := ev.Build
	if b.State != builds.Finished || b.Result == builds.Canceled || b.Result == "" {
		return false
	}
	var prev builds.Result
	if ev.Previous != nil && ev.Previous.Result != nil {
		prev = *ev.Previous.Result
	}
	if prev == "" {
		return b.Result != builds.Passed
	}
	return (b.Result == builds.Passed) != (prev == builds.Passed)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func listText(list []string) string {
	if len(list) == 1 {
		return list[0]
	}
	return "one of " + strings.Join(list, ", ")
}

// check tells whether the route matches the event; with why set, the
// second result says which condition failed first.
func (rt *route) check(x *evalCtx, why bool, log *slog.Logger) (bool, string) {
	ev := x.ev
	no := func(format string, args ...any) (bool, string) {
		if !why {
			return false, ""
		}
		return false, fmt.Sprintf(format, args...)
	}
	if !rt.anyEvent && !contains(rt.events, ev.Type) {
		return no("event type %q is not %s", ev.Type, listText(rt.events))
	}
	b := ev.Build
	if b == nil {
		if rt.needsBuild() {
			return no("the event has no build")
		}
	} else {
		if rt.project != nil {
			name := ""
			if ev.Project != nil {
				name = ev.Project.Name
			}
			if !rt.project.match(name) {
				return no("project %q does not match %s", name, rt.project)
			}
		}
		if rt.branch != nil && !rt.branch.match(b.Branch) {
			return no("branch %q does not match %s", b.Branch, rt.branch)
		}
		if rt.states != nil && !contains(rt.states, string(b.State)) {
			return no("state %s is not %s", b.State, listText(rt.states))
		}
		if rt.results != nil && !contains(rt.results, string(b.Result)) {
			if b.Result == "" {
				return no("the build has no result yet (state %s); result must be %s", b.State, listText(rt.results))
			}
			return no("result %s is not %s", b.Result, listText(rt.results))
		}
		if rt.statuses != nil && !contains(rt.statuses, string(b.Status)) {
			return no("status %s is not %s", b.Status, listText(rt.statuses))
		}
		if rt.author != nil && !rt.author.match(strings.ToLower(b.Author)) && !rt.author.match(strings.ToLower(b.AuthorEmail)) {
			return no("author %q <%s> does not match %s", b.Author, b.AuthorEmail, rt.author)
		}
		if rt.notify == notifyChange && !isChange(ev) {
			return no("notify: change, and this build is not a change (state %s, status %s)", b.State, b.Status)
		}
	}
	if rt.notify == notifyNever {
		return no("notify: never")
	}
	if rt.cond != nil {
		out, err := x.vm.Run(rt.cond, x.exprEnv())
		if err != nil {
			log.Warn("rules: if: expression failed", "route", rt.name, "event_id", ev.ID, "err", err)
			return no("if: %s fails on this event: %v", rt.condSrc, err)
		}
		if ok, _ := out.(bool); !ok {
			return no("if: %s is false", strings.TrimSpace(rt.condSrc))
		}
	}
	return true, ""
}

// Explanation says what the rules do with one event: `rules test`.
type Explanation struct {
	// Routes has the implicit user-channel delivery first, then every
	// route in file order.
	Routes []RouteResult
	// Deliveries is what Match returns for the event.
	Deliveries []sinks.Delivery
}

// RouteResult is what one route did with the event.
type RouteResult struct {
	Name string
	// Index is the route's position in the file; -1 for the implicit
	// user-channel delivery.
	Index   int
	Matched bool
	// Reason is the first condition that failed, when not matched.
	Reason  string
	Targets []TargetResult
}

// TargetResult is what one `to:` entry of a matched route gave.
type TargetResult struct {
	Sink   string
	Target string
	// Delivery indexes Explanation.Deliveries; -1 when nothing was
	// delivered (Note says why: a duplicate, a render error).
	Delivery int
	Note     string
}

// Match returns the deliveries of an event: the implicit user-channel
// delivery of a build-state-changed event, then those of every matching
// route in file order, each (sink, target) once.
func (r *Rules) Match(ev event.Envelope) []sinks.Delivery {
	return r.run(&ev, nil)
}

// Explain matches an event like Match and says why each route matched or
// not, and what each target got.
func (r *Rules) Explain(ev event.Envelope) *Explanation {
	x := &Explanation{}
	x.Deliveries = r.run(&ev, x)
	return x
}

func (r *Rules) run(ev *event.Envelope, ex *Explanation) []sinks.Delivery {
	x := newCtx(ev)
	defer x.release()
	var out []sinks.Delivery
	out = r.implicit(x, out, ex)
	for _, rt := range r.routes {
		ok, why := rt.check(x, ex != nil, r.logger)
		var rr *RouteResult
		if ex != nil {
			ex.Routes = append(ex.Routes, RouteResult{Name: rt.name, Index: rt.index, Matched: ok, Reason: why})
			rr = &ex.Routes[len(ex.Routes)-1]
		}
		if !ok {
			continue
		}
		for _, t := range rt.to {
			out = r.deliver(x, rt, t, out, rr)
		}
	}
	return out
}

// implicit adds the delivery every build-state-changed event gets on its
// project owner's private-user channel.
func (r *Rules) implicit(x *evalCtx, out []sinks.Delivery, ex *Explanation) []sinks.Delivery {
	ev := x.ev
	rr := RouteResult{Name: ImplicitRoute, Index: -1}
	switch {
	case ev.Type != event.TypeBuildStateChanged:
		rr.Reason = fmt.Sprintf("only build-state-changed events go to the user channel (this is %q)", ev.Type)
	case ev.Project == nil:
		rr.Reason = "the event has no project, hence no owner"
	default:
		body, err := x.eventJSON()
		if err != nil {
			rr.Reason = "the event cannot be encoded: " + err.Error()
			r.logger.Error("rules: user channel: encoding the event", "event_id", ev.ID, "err", err)
			break
		}
		ch := event.UserChannel(ev.Project.OwnerID)
		d := sinks.Delivery{
			EventID: ev.ID, Event: *ev, Route: ImplicitRoute, Sink: r.user.name, SinkType: r.user.typ.Name,
			Target: ch + " " + event.TypeBuildStateChanged, Body: append([]byte(nil), body...),
			ContentType: "application/json",
			Params:      map[string]string{"channel": ch, "event": event.TypeBuildStateChanged},
		}
		rr.Matched = true
		rr.Targets = []TargetResult{{Sink: d.Sink, Target: d.Target, Delivery: len(out)}}
		out = append(out, d)
	}
	if ex != nil {
		ex.Routes = append(ex.Routes, rr)
	}
	return out
}

// resolve renders a target's parameters and computes its destination key.
// It returns the failing slot (nil for a Target error) with the error.
func (t *target) resolve(x *evalCtx) (map[string]string, string, *slot, error) {
	if t.static {
		if t.sTargErr != nil {
			return nil, "", nil, t.sTargErr
		}
		p := make(map[string]string, len(t.sParams))
		for k, v := range t.sParams {
			p[k] = v
		}
		return p, t.sTarget, nil, nil
	}
	p := make(map[string]string, len(t.params))
	for _, s := range t.params {
		v, err := x.renderText(s)
		if err != nil {
			return nil, "", s, err
		}
		if v != "" {
			p[s.name] = v
		}
	}
	key, err := t.targetKey(p)
	return p, key, nil, err
}

func (t *target) targetKey(p map[string]string) (string, error) {
	if t.sink.typ.Target == nil {
		return "default", nil
	}
	return t.sink.typ.Target(t.sink.cfg, p)
}

// renderPart renders the body or subject, falling back to the type's
// default template when the configured one fails on this event.
func (r *Rules) renderPart(x *evalCtx, rt *route, s *slot) ([]byte, string, error) {
	x.buf.Reset()
	err := s.render(x, &x.buf)
	if err == nil {
		return bytes.Clone(x.buf.Bytes()), "", nil
	}
	r.logger.Warn("rules: template failed; using the default", "route", rt.name, "template", s.path, "event_id", x.ev.ID, "err", err)
	note := fmt.Sprintf("%s failed (%v); the default was used", s.path, err)
	if s.fallback == nil {
		return nil, note, err
	}
	x.buf.Reset()
	if err2 := s.fallback.render(x, &x.buf); err2 != nil {
		return nil, note, err2
	}
	return bytes.Clone(x.buf.Bytes()), note, nil
}

func (r *Rules) deliver(x *evalCtx, rt *route, t *target, out []sinks.Delivery, rr *RouteResult) []sinks.Delivery {
	res := TargetResult{Sink: t.sink.name, Delivery: -1}
	defer func() {
		if rr != nil {
			rr.Targets = append(rr.Targets, res)
		}
	}()
	params, key, bad, err := t.resolve(x)
	if err != nil {
		where := t.path
		if bad != nil {
			where = bad.path
		}
		res.Note = fmt.Sprintf("not delivered: %s: %v", where, err)
		r.logger.Warn("rules: target failed on an event; not delivered", "route", rt.name, "to", where, "event_id", x.ev.ID, "err", err)
		return out
	}
	res.Target = key
	for i := range out {
		if out[i].Sink == t.sink.name && out[i].Target == key {
			res.Note = fmt.Sprintf("duplicate of the delivery from route %q", out[i].Route)
			return out
		}
	}
	d := sinks.Delivery{EventID: x.ev.ID, Event: *x.ev, Route: rt.name, Sink: t.sink.name,
		SinkType: t.sink.typ.Name, Target: key, Params: params, ContentType: t.sink.typ.ContentType}
	if ct := params["content_type"]; ct != "" {
		d.ContentType = ct
	}
	if t.body != nil {
		body, note, err := r.renderPart(x, rt, t.body)
		if err != nil {
			res.Note = "not delivered: " + note
			return out
		}
		d.Body, res.Note = body, note
	}
	if t.subject != nil {
		subj, note, err := r.renderPart(x, rt, t.subject)
		if err != nil {
			res.Note = "not delivered: " + note
			return out
		}
		d.Subject = string(subj)
		if note != "" {
			res.Note = note
		}
	}
	res.Delivery = len(out)
	return append(out, d)
}

// target compiles one `to:` entry of a route and renders it against the
// sample events of the route's event types.
func (l *loader) target(rt *route, path string, n *yaml.Node, s *sinkInst, over sinks.Overrides) *target {
	t := &target{path: path, line: n.Line, col: n.Column, sink: s}
	ok := true
	for i := range s.typ.Settings {
		st := &s.typ.Settings[i]
		if st.Role == sinks.RoleNone && !st.Param {
			continue
		}
		v := s.cfg.Effective(over, st.Name)
		sl := &slot{name: st.Name, role: st.Role}
		switch {
		case over[st.Name] != nil:
			sl.path, sl.line, sl.col = path+"."+st.Name, v.Line(), v.Column()
		case s.cfg.IsSet(st.Name):
			sl.path, sl.line, sl.col = "sinks."+s.name+"."+st.Name, v.Line(), v.Column()
		default:
			sl.path, sl.line, sl.col = fmt.Sprintf("%s (default %s of %s)", path, st.Name, s.typ.Name), n.Line, n.Column
		}
		html := st.Kind == sinks.KindHTMLTemplate
		switch st.Kind {
		case sinks.KindTemplateList:
			for _, src := range v.List() {
				r, err := l.tmpls.compile("t", src, false)
				if err != nil {
					l.el.add(sl.line, sl.col, sl.path, "%s", err)
					ok = false
					continue
				}
				sl.items = append(sl.items, r)
			}
			if sl.items == nil {
				continue
			}
		case sinks.KindTemplate, sinks.KindHTMLTemplate:
			src := v.Text()
			if src == "" && st.Role == sinks.RoleParam {
				continue // unset channel, no HTML part: nothing to render
			}
			r, err := l.tmpls.compile("t", src, html)
			if err != nil {
				l.el.add(sl.line, sl.col, sl.path, "%s", err)
				ok = false
				continue
			}
			if lit, isLit := r.(literalRenderer); isLit {
				sl.static = string(lit)
			} else {
				sl.r = r
			}
			if v.IsSet() && st.Default != "" {
				if fb, err := l.tmpls.compile("t", st.Default, html); err == nil {
					sl.fallback = fb
				}
			}
		default:
			sl.static = v.ParamText()
			if sl.static == "" {
				continue
			}
		}
		switch st.Role {
		case sinks.RoleBody:
			t.body = sl
		case sinks.RoleSubject:
			t.subject = sl
		default:
			t.params = append(t.params, sl)
		}
	}
	if !ok {
		return nil
	}
	t.static = true
	for _, sl := range t.params {
		if !sl.isStatic() {
			t.static = false
		}
	}
	if t.static {
		t.sParams = map[string]string{}
		for _, sl := range t.params {
			t.sParams[sl.name] = sl.static
		}
		t.sTarget, t.sTargErr = t.targetKey(t.sParams)
		if t.sTargErr != nil {
			l.el.add(t.line, t.col, path, "%s", t.sTargErr)
			return nil
		}
	}
	for _, ev := range sampleEvents(rt.eventTypes()) {
		if !rt.couldReceive(&ev) {
			continue
		}
		if !l.trySample(t, &ev) {
			return nil
		}
	}
	return t
}

// couldReceive reports whether the route's fixed conditions (state,
// result, status, notify) let a sample event through: templates are
// rendered against the samples the route could receive.
func (rt *route) couldReceive(ev *event.Envelope) bool {
	b := ev.Build
	if b == nil {
		return !rt.needsBuild()
	}
	return (rt.states == nil || contains(rt.states, string(b.State))) &&
		(rt.results == nil || contains(rt.results, string(b.Result))) &&
		(rt.statuses == nil || contains(rt.statuses, string(b.Status))) &&
		(rt.notify != notifyChange || isChange(ev))
}

// trySample renders a target against one sample event and reports the
// first failure.
func (l *loader) trySample(t *target, ev *event.Envelope) bool {
	x := newCtx(ev)
	defer x.release()
	sample := fmt.Sprintf("rendering a sample %s event", ev.Type)
	if ev.Build != nil {
		sample = fmt.Sprintf("rendering a sample %s event (status %s)", ev.Type, ev.Build.Status)
	}
	_, _, bad, err := t.resolve(x)
	if err != nil {
		err = templateError(err)
		if bad != nil {
			l.el.add(bad.line, bad.col, bad.path, "%v (%s)", err, sample)
		} else {
			l.el.add(t.line, t.col, t.path, "%v (%s)", err, sample)
		}
		return false
	}
	for _, s := range []*slot{t.body, t.subject} {
		if s == nil {
			continue
		}
		x.buf.Reset()
		if err := s.render(x, &x.buf); err != nil {
			l.el.add(s.line, s.col, s.path, "%v (%s)", templateError(err), sample)
			return false
		}
	}
	return true
}
