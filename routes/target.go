package routes

import (
	"bytes"
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/sinks"
)

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
