package routes

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/expr-lang/expr/vm"

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
	alerts   []*Alert
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
	condFast fastCond
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
	if rt.condFast != nil {
		if !rt.condFast(x.exprEnv()) {
			return failIf, nil
		}
	} else if rt.cond != nil {
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
	if n := int32(len(out)); n > r.outHint.Load() && n <= 128 {
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
			Target: u.target, Body: body, BodyIsEvent: true, ContentType: "application/json", Params: u.params,
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
		_, isEvent := t.body.r.(eventJSONRenderer)
		d.BodyIsEvent = isEvent && note == ""
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
