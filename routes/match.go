package routes

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
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
	outHint  atomic.Int32
	// users caches the user-channel targets by owner id.
	users     sync.Map
	userCount atomic.Int64
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
	name   string
	role   sinks.Role
	static string
	// staticBytes is static as a body, allocated once.
	staticBytes []byte
	r           renderer
	items       []renderer
	fallback    renderer
	path        string
	line        int
	col         int
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
	parts   exprParts
	envOK   bool
	vm      vm.VM
	buf     bytes.Buffer
	lw      limitedWriter
	memo    []memoEntry
	// index finds deliveries by (sink, target) once there are many.
	index map[dkey]int
	// author and authorEmail are the build's, lower-cased once.
	author, authorEmail string
	authorOK            bool
}

type dkey struct{ sink, target string }

// seenLinear is how many deliveries are searched one by one before
// they are indexed.
const seenLinear = 16

// seen returns the index of the delivery of out to (sink, target), or -1.
// The caller appends the new delivery right after a -1.
func (x *evalCtx) seen(out []sinks.Delivery, sink, target string) int {
	if len(out) < seenLinear {
		for i := range out {
			if out[i].Target == target && out[i].Sink == sink {
				return i
			}
		}
		return -1
	}
	if x.index == nil {
		x.index = make(map[dkey]int, 2*seenLinear)
	}
	if len(x.index) == 0 {
		for i := range out {
			x.index[dkey{out[i].Sink, out[i].Target}] = i
		}
	}
	if i, ok := x.index[dkey{sink, target}]; ok {
		return i
	}
	x.index[dkey{sink, target}] = len(out)
	return -1
}

// memoEntry is a body or subject already rendered for the event: several
// targets using one template share one rendering.
type memoEntry struct {
	r   renderer
	out []byte
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
	x.memo = x.memo[:0]
	x.authorOK = false
	clear(x.index)
	return x
}

func (x *evalCtx) release() {
	x.ev, x.data, x.json, x.env = nil, TemplateData{}, nil, exprEnv{}
	clear(x.memo)
	if x.buf.Cap() > 64<<10 {
		x.buf = bytes.Buffer{}
	}
	ctxPool.Put(x)
}

// eventJSON is the event as JSON (json.Marshal), once per event.
func (x *evalCtx) eventJSON() ([]byte, error) {
	if !x.jsonOK {
		out, err := marshalEnvelope(x.ev)
		// Full slice expression: an append by a reader copies.
		x.json, x.jsonErr, x.jsonOK = out[:len(out):len(out)], err, true
	}
	return x.json, x.jsonErr
}

// renderShared renders a body or subject once per event; the result is
// shared by the deliveries that use it and must not be modified.
func (x *evalCtx) renderShared(s *slot) ([]byte, error) {
	switch {
	case s.r == nil && s.items == nil:
		return s.staticBytes, nil
	case s.r == nil:
		x.buf.Reset()
		if err := s.render(x, &x.buf); err != nil {
			return nil, err
		}
		return bytes.Clone(x.buf.Bytes()), nil
	}
	if _, ok := s.r.(eventJSONRenderer); ok {
		return x.eventJSON()
	}
	for i := range x.memo {
		if x.memo[i].r == s.r {
			return x.memo[i].out, nil
		}
	}
	x.buf.Reset()
	if err := s.r.render(x, &x.buf); err != nil {
		return nil, err
	}
	out := bytes.Clone(x.buf.Bytes())
	out = out[:len(out):len(out)]
	x.memo = append(x.memo, memoEntry{r: s.r, out: out})
	return out, nil
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
	ID   string    `expr:"id"`
	Type string    `expr:"type"`
	Seq  int64     `expr:"seq"`
	Time time.Time `expr:"time"`
	// The parts are pointers, so that reading build.x does not copy the
	// build; they are never nil (zero for an absent part).
	Build    *exprBuild     `expr:"build"`
	Job      *exprJob       `expr:"job"`
	Project  *exprProject   `expr:"project"`
	Previous *exprPrevious  `expr:"previous"`
	Data     map[string]any `expr:"data"`
}

// exprParts holds what exprEnv points to.
type exprParts struct {
	build    exprBuild
	job      exprJob
	project  exprProject
	previous exprPrevious
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
	ev, p := x.ev, &x.parts
	*p = exprParts{}
	x.env = exprEnv{ID: ev.ID, Type: ev.Type, Seq: ev.Seq, Time: ev.Time, Data: x.data.Data,
		Build: &p.build, Job: &p.job, Project: &p.project, Previous: &p.previous}
	if b := ev.Build; b != nil {
		p.build = exprBuild{ID: b.ID, Number: b.Number, State: string(b.State), Result: string(b.Result),
			Status: string(b.Status), Ref: b.Ref, Branch: b.Branch, SHA: b.SHA, Author: b.Author,
			AuthorEmail: b.AuthorEmail, Message: b.Message, Reason: b.Reason, URL: b.URL}
		if b.Success != nil {
			p.build.Success = *b.Success
		}
		if b.StartedAt != nil {
			p.build.StartedAt = *b.StartedAt
		}
		if b.FinishedAt != nil {
			p.build.FinishedAt = *b.FinishedAt
		}
		if b.DurationMS != nil {
			p.build.DurationMS = *b.DurationMS
		}
	}
	if j := ev.Job; j != nil {
		p.job = exprJob{ID: j.ID, Name: j.Name}
	}
	if pr := ev.Project; pr != nil {
		p.project = exprProject{ID: pr.ID, Name: pr.Name, OwnerID: pr.OwnerID}
	}
	if pv := ev.Previous; pv != nil {
		if pv.BuildNumber != nil {
			p.previous.BuildNumber = *pv.BuildNumber
		}
		if pv.Result != nil {
			p.previous.Result = string(*pv.Result)
		}
	}
	x.envOK = true
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

// failure names the first condition of a route an event fails.
type failure int

const (
	pass failure = iota
	failEvent
	failNoBuild
	failProject
	failBranch
	failState
	failResult
	failStatus
	failAuthor
	failChange
	failNever
	failIf
	failIfError
)

// check tells whether the route matches the event; with why set, the
// second result says which condition failed first. Matching allocates
// nothing; only the explanation is formatted.
func (rt *route) check(x *evalCtx, why bool, log *slog.Logger) (bool, string) {
	f, err := rt.firstFailure(x)
	if f == failIfError {
		log.Warn("rules: if: expression failed", "route", rt.name, "event_id", x.ev.ID, "err", err)
	}
	if f == pass {
		return true, ""
	}
	if !why {
		return false, ""
	}
	return false, rt.reason(x, f, err)
}

func (rt *route) firstFailure(x *evalCtx) (failure, error) {
	ev := x.ev
	if !rt.anyEvent && !contains(rt.events, ev.Type) {
		return failEvent, nil
	}
	if b := ev.Build; b == nil {
		if rt.needsBuild() {
			return failNoBuild, nil
		}
	} else {
		if rt.project != nil {
			name := ""
			if ev.Project != nil {
				name = ev.Project.Name
			}
			if !rt.project.match(name) {
				return failProject, nil
			}
		}
		switch {
		case rt.branch != nil && !rt.branch.match(b.Branch):
			return failBranch, nil
		case rt.states != nil && !contains(rt.states, string(b.State)):
			return failState, nil
		case rt.results != nil && !contains(rt.results, string(b.Result)):
			return failResult, nil
		case rt.statuses != nil && !contains(rt.statuses, string(b.Status)):
			return failStatus, nil
		case rt.author != nil && !rt.matchAuthor(x):
			return failAuthor, nil
		case rt.notify == notifyChange && !isChange(ev):
			return failChange, nil
		}
	}
	if rt.notify == notifyNever {
		return failNever, nil
	}
	if rt.cond != nil {
		out, err := x.vm.Run(rt.cond, x.exprEnv())
		if err != nil {
			return failIfError, err
		}
		if ok, _ := out.(bool); !ok {
			return failIf, nil
		}
	}
	return pass, nil
}

func (rt *route) matchAuthor(x *evalCtx) bool {
	if !x.authorOK {
		x.author, x.authorEmail = strings.ToLower(x.ev.Build.Author), strings.ToLower(x.ev.Build.AuthorEmail)
		x.authorOK = true
	}
	return rt.author.match(x.author) || rt.author.match(x.authorEmail)
}

// reason says in words why the event fails the route.
func (rt *route) reason(x *evalCtx, f failure, err error) string {
	ev, b := x.ev, x.ev.Build
	switch f {
	case failEvent:
		return fmt.Sprintf("event type %q is not %s", ev.Type, listText(rt.events))
	case failNoBuild:
		return "the event has no build"
	case failProject:
		name := ""
		if ev.Project != nil {
			name = ev.Project.Name
		}
		return fmt.Sprintf("project %q does not match %s", name, rt.project)
	case failBranch:
		return fmt.Sprintf("branch %q does not match %s", b.Branch, rt.branch)
	case failState:
		return fmt.Sprintf("state %s is not %s", b.State, listText(rt.states))
	case failResult:
		if b.Result == "" {
			return fmt.Sprintf("the build has no result yet (state %s); result must be %s", b.State, listText(rt.results))
		}
		return fmt.Sprintf("result %s is not %s", b.Result, listText(rt.results))
	case failStatus:
		return fmt.Sprintf("status %s is not %s", b.Status, listText(rt.statuses))
	case failAuthor:
		return fmt.Sprintf("author %q <%s> does not match %s", b.Author, b.AuthorEmail, rt.author)
	case failChange:
		return fmt.Sprintf("notify: change, and this build is not a change (state %s, status %s)", b.State, b.Status)
	case failNever:
		return "notify: never"
	case failIf:
		return fmt.Sprintf("if: %s is false", strings.TrimSpace(rt.condSrc))
	case failIfError:
		return fmt.Sprintf("if: %s fails on this event: %v", strings.TrimSpace(rt.condSrc), err)
	}
	return ""
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
	out := make([]sinks.Delivery, 0, r.outHint.Load())
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
	// Size the next event's slice from what events need, up to a bound.
	if n := int32(len(out)); n > r.outHint.Load() && n <= 64 {
		r.outHint.Store(n)
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
		u := r.userChannel(ev.Project.OwnerID)
		d := sinks.Delivery{
			EventID: ev.ID, Event: *ev, Route: ImplicitRoute, Sink: r.user.name, SinkType: r.user.typ.Name,
			Target: u.target, Body: body, ContentType: "application/json", Params: u.params,
		}
		rr.Matched = true
		if ex != nil {
			rr.Targets = []TargetResult{{Sink: d.Sink, Target: d.Target, Delivery: len(out)}}
		}
		out = append(out, d)
	}
	if ex != nil {
		ex.Routes = append(ex.Routes, rr)
	}
	return out
}

// userTarget is the destination of one user's channel.
type userTarget struct {
	target string
	params map[string]string // shared, read-only
}

// maxUserCache bounds the cache of user channels.
const maxUserCache = 100_000

// userChannel returns the channel of a project owner, cached.
func (r *Rules) userChannel(owner int64) *userTarget {
	if u, ok := r.users.Load(owner); ok {
		return u.(*userTarget)
	}
	ch := event.UserChannel(owner)
	u := &userTarget{target: ch + " " + event.TypeBuildStateChanged,
		params: map[string]string{"channel": ch, "event": event.TypeBuildStateChanged}}
	if r.userCount.Add(1) <= maxUserCache {
		r.users.Store(owner, u)
	}
	return u
}

// resolve renders a target's parameters and computes its destination key.
// It returns the failing slot (nil for a Target error) with the error.
func (t *target) resolve(x *evalCtx) (map[string]string, string, *slot, error) {
	if t.static {
		// Shared by every delivery of the target: read-only.
		return t.sParams, t.sTarget, nil, t.sTargErr
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
	out, err := x.renderShared(s)
	if err == nil {
		return out, "", nil
	}
	r.logger.Warn("rules: template failed; using the default", "route", rt.name, "template", s.path, "event_id", x.ev.ID, "err", err)
	note := fmt.Sprintf("%s failed (%v); the default was used", s.path, err)
	if s.fallback == nil {
		return nil, note, err
	}
	out, err = x.renderShared(&slot{r: s.fallback})
	if err != nil {
		return nil, note, err
	}
	return out, note, nil
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
	if i := x.seen(out, t.sink.name, key); i >= 0 {
		res.Note = fmt.Sprintf("duplicate of the delivery from route %q", out[i].Route)
		return out
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
			if lits, ok := literals(sl.items); ok {
				sl.items, sl.static = nil, strings.Join(lits, ", ")
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
				sl.staticBytes = []byte(lit)
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

func literals(rs []renderer) ([]string, bool) {
	out := make([]string, len(rs))
	for i, r := range rs {
		lit, ok := r.(literalRenderer)
		if !ok {
			return nil, false
		}
		out[i] = string(lit)
	}
	return out, true
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
