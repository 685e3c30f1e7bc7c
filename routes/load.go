package routes

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/sinks"
)

// Options tune loading.
type Options struct {
	// LookupEnv resolves ${ENV} references (default os.LookupEnv).
	LookupEnv func(string) (string, bool)
	// ReadFile reads file: references (default os.ReadFile).
	ReadFile func(string) ([]byte, error)
	// Dir is where relative file: paths start (default: the directory of
	// the rules file for Load, the working directory for Parse).
	Dir string
	// SkipSecrets checks the syntax of ${ENV} and file: references without
	// resolving them (`rules check --skip-secrets` in CI).
	SkipSecrets bool
	// Logger receives runtime problems: a template or an if: expression
	// that fails on a real event (default slog.Default()).
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.LookupEnv == nil {
		o.LookupEnv = os.LookupEnv
	}
	if o.ReadFile == nil {
		o.ReadFile = os.ReadFile
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// ImplicitRoute is the Route of the delivery every build-state-changed
// event gets on its project owner's private-user-<id> channel.
const ImplicitRoute = "(user channel)"

// BuiltinSink is the name of the pusher sink the implicit user-channel
// delivery uses when the file configures no pusher sink.
const BuiltinSink = "realtime"

// KnownEvents lists the event types routes can match.
var KnownEvents = []string{event.TypeBuildStateChanged, event.TypeBuildLog, event.TypeEndpointDisabled,
	event.TypeAPIUsage, event.TypeUsageThreshold, event.TypeSystemAlert, event.TypeSystemRecovered}

// MatchKeys are the keys of a route's match: block.
var MatchKeys = []string{"event", "project", "branch", "state", "result", "status", "author", "if"}

// NotifyModes are the values of a route's notify:.
var NotifyModes = []string{"always", "change", "never"}

var (
	sinkNameRe  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
	topKeys     = []string{"version", "sinks", "routes", "alerts"}
	routeKeys   = []string{"name", "match", "notify", "to"}
	buildOnly   = map[string]bool{"project": true, "branch": true, "state": true, "result": true, "status": true, "author": true}
	states      = []string{string(builds.Queued), string(builds.Started), string(builds.Finished)}
	results     = []string{string(builds.Passed), string(builds.Failed), string(builds.Errored), string(builds.Canceled)}
	allStatuses = func() []string {
		out := make([]string, len(builds.AllStatuses))
		for i, s := range builds.AllStatuses {
			out[i] = string(s)
		}
		return out
	}()
)

// Load reads and compiles a rules file. A file with problems is refused
// with Errors, every problem located in the file.
func Load(path string, opts Options) (*Rules, error) {
	data, err := readRules(path)
	if err != nil {
		return nil, Errors{{File: path, Message: err.Error()}}
	}
	if opts.Dir == "" {
		opts.Dir = filepath.Dir(path)
	}
	return Parse(path, data, opts)
}

func readRules(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read the rules file: %w", err)
	}
	defer f.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(&limitReader{f: f, n: MaxFileSize + 1}); err != nil {
		return nil, fmt.Errorf("cannot read the rules file: %w", err)
	}
	return b.Bytes(), nil
}

type limitReader struct {
	f *os.File
	n int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, fmt.Errorf("larger than %d bytes", MaxFileSize)
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.f.Read(p)
	l.n -= int64(n)
	return n, err
}

// Parse compiles rules from data; name is the file name used in errors.
func Parse(name string, data []byte, opts Options) (*Rules, error) {
	opts.setDefaults()
	el := &errList{file: name}
	root := parseYAML(data, el)
	if root == nil {
		return nil, el.sorted()
	}
	l := &loader{
		el:    el,
		opts:  opts,
		tmpls: &templates{},
		res:   &sinks.Resolver{LookupEnv: opts.LookupEnv, ReadFile: opts.ReadFile, Dir: opts.Dir, SkipSecrets: opts.SkipSecrets},
		r:     &Rules{name: name, byName: map[string]*sinkInst{}, logger: opts.Logger},
	}
	l.file(root)
	if len(el.errs) > 0 {
		return nil, el.sorted()
	}
	return l.r, nil
}

// Builtin returns the rules in force without a rules file: only the
// implicit user-channel delivery on the built-in realtime sink.
func Builtin() *Rules {
	r, err := Parse("(built-in)", []byte("routes: []\n"), Options{})
	if err != nil {
		panic("routes: built-in rules: " + err.Error())
	}
	return r
}

type loader struct {
	el    *errList
	opts  Options
	tmpls *templates
	res   *sinks.Resolver
	r     *Rules
}

func (l *loader) errf(n *yaml.Node, path, format string, args ...any) {
	l.el.add(n.Line, n.Column, path, format, args...)
}

func (l *loader) file(root *yaml.Node) {
	if root.Kind != yaml.MappingNode {
		l.errf(root, "", "the rules file must be a mapping with sinks: and routes:, got %s", kindName(root))
		return
	}
	var sinksN, routesN, alertsN *yaml.Node
	for _, p := range pairs(root) {
		k, v := p[0], p[1]
		switch k.Value {
		case "version":
			if v.Kind != yaml.ScalarNode || v.Value != "1" {
				l.errf(v, "version", "only version 1 is known")
			}
		case "sinks":
			sinksN = v
		case "routes":
			routesN = v
		case "alerts":
			alertsN = v
		default:
			if strings.HasPrefix(k.Value, "x-") {
				continue // free-form, to hold anchors (&name) for reuse with *name or <<
			}
			l.unknownKey(k, "", "top-level key", topKeys)
		}
	}
	if sinksN != nil {
		l.sinks(sinksN)
	}
	l.userSink()
	if routesN != nil {
		l.routes(routesN)
	}
	if alertsN != nil {
		l.alerts(alertsN)
	}
}

func (l *loader) unknownKey(k *yaml.Node, path, what string, known []string) {
	p := join(path, k.Value)
	if s := sinks.Suggest(k.Value, known); s != "" {
		l.errf(k, p, "unknown %s %q (did you mean %q?)", what, k.Value, s)
		return
	}
	l.errf(k, p, "unknown %s %q (known: %s)", what, k.Value, strings.Join(known, ", "))
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// sinkInst is one configured sink.
type sinkInst struct {
	name    string
	cfg     *sinks.Config
	typ     *sinks.Type
	builtin bool
	bad     bool // its configuration has errors: routes to it are not compiled
}

func (l *loader) sinks(n *yaml.Node) {
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		l.errf(n, "sinks", "expected a mapping of sink names to sinks, got %s", kindName(n))
		return
	}
	var typeNames []string
	for _, t := range sinks.Types() {
		typeNames = append(typeNames, t.Name)
	}
	for _, p := range pairs(n) {
		k, v := p[0], p[1]
		path := "sinks." + k.Value
		if !sinkNameRe.MatchString(k.Value) {
			l.errf(k, path, "a sink name has 1 to 64 letters, digits, _ . - and starts with a letter or digit")
		}
		inst := &sinkInst{name: k.Value, bad: true}
		l.r.sinks = append(l.r.sinks, inst)
		l.r.byName[k.Value] = inst
		if v.Kind != yaml.MappingNode {
			l.errf(v, path, "a sink is a mapping with a type (%s) and its settings, got %s", strings.Join(typeNames, ", "), kindName(v))
			continue
		}
		var typeN *yaml.Node
		for _, q := range pairs(v) {
			if q[0].Value == "type" {
				typeN = q[1]
			}
		}
		if typeN == nil {
			l.errf(v, path, "missing type (one of %s)", strings.Join(typeNames, ", "))
			continue
		}
		t, ok := sinks.Lookup(typeN.Value)
		if !ok || typeN.Kind != yaml.ScalarNode {
			msg := fmt.Sprintf("unknown sink type %q", typeN.Value)
			if s := sinks.Suggest(typeN.Value, typeNames); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			} else {
				msg += " (known: " + strings.Join(typeNames, ", ") + ")"
			}
			l.errf(typeN, path+".type", "%s", msg)
			continue
		}
		if k.Value == BuiltinSink && t.Name != "pusher" {
			l.errf(k, path, "the name %q is reserved for a pusher sink (the built-in sink of the user channels)", BuiltinSink)
		}
		cfg, errs := t.Decode(k.Value, v, l.res)
		for _, e := range errs {
			l.el.add(e.Line, e.Column, join(path, e.Path), "%s", e.Message)
		}
		for _, w := range cfg.Warnings {
			l.r.warnings = append(l.r.warnings, (&Error{File: l.el.file, Line: w.Line, Column: w.Column,
				Path: join(path, w.Path), Message: w.Message}).Error())
		}
		inst.cfg, inst.typ, inst.bad = cfg, cfg.TypeSpec(), len(errs) > 0
		if !inst.bad {
			l.checkSinkTemplates(inst, path)
		}
	}
}

// checkSinkTemplates compiles the templates written on a sink, so that a
// broken one is reported even when no route uses the sink.
func (l *loader) checkSinkTemplates(s *sinkInst, path string) {
	for i := range s.typ.Settings {
		st := &s.typ.Settings[i]
		v := s.cfg.Value(st.Name)
		if !st.Kind.IsTemplate() || !v.IsSet() {
			continue
		}
		srcs := []string{v.Text()}
		if st.Kind == sinks.KindTemplateList {
			srcs = v.List()
		}
		for _, src := range srcs {
			if _, err := l.tmpls.compile("t", src, st.Kind == sinks.KindHTMLTemplate); err != nil {
				l.el.add(v.Line(), v.Column(), join(path, st.Name), "%s", err)
				s.bad = true
			}
		}
	}
}

// userSink chooses the sink of the implicit user-channel delivery: the
// first pusher sink of the file, or the built-in "realtime" one.
func (l *loader) userSink() {
	for _, s := range l.r.sinks {
		if s.typ != nil && s.typ.Name == "pusher" {
			l.r.user = s
			return
		}
	}
	if _, taken := l.r.byName[BuiltinSink]; taken {
		return // reported as a reserved name, or bad
	}
	t, ok := sinks.Lookup("pusher")
	if !ok {
		panic("routes: the pusher sink type is not registered")
	}
	cfg, errs := t.Decode(BuiltinSink, &yaml.Node{Kind: yaml.MappingNode}, l.res)
	if len(errs) > 0 {
		panic("routes: built-in realtime sink: " + errs[0].Error())
	}
	s := &sinkInst{name: BuiltinSink, cfg: cfg, typ: cfg.TypeSpec(), builtin: true}
	l.r.sinks = append(l.r.sinks, s)
	l.r.byName[BuiltinSink] = s
	l.r.user = s
}

func (l *loader) routes(n *yaml.Node) {
	if isNull(n) {
		return
	}
	if n.Kind != yaml.SequenceNode {
		l.errf(n, "routes", "expected a list of routes, got %s", kindName(n))
		return
	}
	names := map[string]int{}
	for i, rn := range n.Content {
		path := fmt.Sprintf("routes[%d]", i)
		rt := l.route(path, i, rn)
		if rt == nil {
			continue
		}
		if first, ok := names[rt.name]; ok {
			l.errf(rn, path+".name", "route name %q already used (line %d)", rt.name, first)
		}
		names[rt.name] = rn.Line
		l.r.routes = append(l.r.routes, rt)
	}
}

// notifyMode is a route's notify: setting.
type notifyMode int

const (
	notifyAlways notifyMode = iota
	notifyChange
	notifyNever
)

func (l *loader) route(path string, index int, n *yaml.Node) *route {
	if n.Kind != yaml.MappingNode {
		l.errf(n, path, "a route is a mapping with name, match, notify and to, got %s", kindName(n))
		return nil
	}
	rt := &route{index: index, line: n.Line, events: []string{event.TypeBuildStateChanged}}
	var matchN, toN *yaml.Node
	for _, p := range pairs(n) {
		k, v := p[0], p[1]
		switch k.Value {
		case "name":
			if v.Kind != yaml.ScalarNode || isNull(v) || strings.TrimSpace(v.Value) == "" {
				l.errf(v, path+".name", "a route needs a name")
				continue
			}
			rt.name = v.Value
			if rt.name == ImplicitRoute {
				l.errf(v, path+".name", "%q is reserved", ImplicitRoute)
			}
		case "match":
			matchN = v
		case "notify":
			switch {
			case v.Kind == yaml.ScalarNode && v.Value == "always":
				rt.notify = notifyAlways
			case v.Kind == yaml.ScalarNode && v.Value == "change":
				rt.notify = notifyChange
			case v.Kind == yaml.ScalarNode && v.Value == "never":
				rt.notify = notifyNever
			default:
				msg := fmt.Sprintf("%q is not one of always, change, never", v.Value)
				if s := sinks.Suggest(v.Value, NotifyModes); s != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", s)
				}
				l.errf(v, path+".notify", "%s", msg)
			}
		case "to":
			toN = v
		default:
			if slicesContains(MatchKeys, k.Value) {
				l.errf(k, join(path, k.Value), "%s is a match key: put it under match:", k.Value)
				continue
			}
			l.unknownKey(k, path, "route key", routeKeys)
		}
	}
	if rt.name == "" {
		if !hasKey(n, "name") {
			l.errf(n, path, "a route needs a name")
		}
		rt.name = path
	}
	if matchN != nil {
		l.match(rt, path+".match", matchN)
	}
	if toN == nil {
		l.errf(n, path, "a route needs to: (the sinks it sends to)")
		return rt
	}
	l.to(rt, path+".to", toN)
	return rt
}

func hasKey(n *yaml.Node, key string) bool {
	for _, p := range pairs(n) {
		if p[0].Value == key {
			return true
		}
	}
	return false
}

func slicesContains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// scalars reads a scalar or a list of scalars.
func (l *loader) scalars(path string, n *yaml.Node) ([]string, []*yaml.Node) {
	items := []*yaml.Node{n}
	if n.Kind == yaml.SequenceNode {
		items = n.Content
	}
	var out []string
	var nodes []*yaml.Node
	for i, it := range items {
		p := path
		if n.Kind == yaml.SequenceNode {
			p = fmt.Sprintf("%s[%d]", path, i)
		}
		if it.Kind != yaml.ScalarNode || isNull(it) {
			l.errf(it, p, "expected a string, got %s", kindName(it))
			continue
		}
		out = append(out, it.Value)
		nodes = append(nodes, it)
	}
	if len(items) == 0 {
		l.errf(n, path, "must not be empty")
	}
	return out, nodes
}

func (l *loader) match(rt *route, path string, n *yaml.Node) {
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		l.errf(n, path, "expected a mapping of match keys (%s), got %s", strings.Join(MatchKeys, ", "), kindName(n))
		return
	}
	var buildKeys []*yaml.Node
	badEvent := false
	for _, p := range pairs(n) {
		k, v := p[0], p[1]
		kp := path + "." + k.Value
		switch k.Value {
		case "event":
			vals, nodes := l.scalars(kp, v)
			rt.events = nil
			for i, val := range vals {
				if val == "*" {
					rt.anyEvent = true
					continue
				}
				if !slicesContains(KnownEvents, val) {
					msg := fmt.Sprintf("unknown event type %q", val)
					if s := sinks.Suggest(val, KnownEvents); s != "" {
						msg += fmt.Sprintf(" (did you mean %q?)", s)
					} else {
						msg += " (known: " + strings.Join(KnownEvents, ", ") + `, or "*" for all)`
					}
					l.errf(nodes[i], kp, "%s", msg)
					badEvent = true
					continue
				}
				rt.events = append(rt.events, val)
			}
		case "project", "branch", "author":
			gl := l.globs(kp, v, k.Value == "author")
			switch k.Value {
			case "project":
				rt.project = gl
			case "branch":
				rt.branch = gl
			default:
				rt.author = gl
			}
			buildKeys = append(buildKeys, k)
		case "state":
			rt.states = l.enum(kp, v, states, true)
			buildKeys = append(buildKeys, k)
		case "result":
			rt.results = l.enum(kp, v, results, false)
			buildKeys = append(buildKeys, k)
		case "status":
			rt.statuses = l.enum(kp, v, allStatuses, false)
			buildKeys = append(buildKeys, k)
		case "if":
			if v.Kind != yaml.ScalarNode || isNull(v) || strings.TrimSpace(v.Value) == "" {
				l.errf(v, kp, "expected an expression")
				continue
			}
			rt.condSrc = v.Value
			prog, err := compileCond(v.Value)
			if err != nil {
				line, col, msg := exprErrorPos(v, err)
				l.el.add(line, col, kp, "%s", msg)
				continue
			}
			rt.cond, rt.condFast = prog, compileFastCond(prog)
		default:
			l.unknownKey(k, path, "match key", MatchKeys)
		}
	}
	if !badEvent && !rt.anyEvent && !slicesContains(rt.events, event.TypeBuildStateChanged) {
		for _, k := range buildKeys {
			l.errf(k, path+"."+k.Value, "%s only applies to %s events; add it to event:", k.Value, event.TypeBuildStateChanged)
		}
	}
}

func (l *loader) globs(path string, n *yaml.Node, fold bool) *globList {
	vals, nodes := l.scalars(path, n)
	gl := &globList{src: vals}
	for i, v := range vals {
		if fold {
			v = strings.ToLower(v)
		}
		g, err := compileGlob(v)
		if err != nil {
			l.errf(nodes[i], path, "bad pattern: %s", err)
			continue
		}
		if !g.neg {
			gl.hasPos = true
		}
		gl.pats = append(gl.pats, g)
	}
	return gl
}

func (l *loader) enum(path string, n *yaml.Node, known []string, upper bool) []string {
	vals, nodes := l.scalars(path, n)
	var out []string
	for i, v := range vals {
		norm := strings.ToLower(v)
		if upper {
			norm = strings.ToUpper(v)
		}
		if !slicesContains(known, norm) {
			msg := fmt.Sprintf("%q is not one of %s", v, strings.Join(known, ", "))
			if s := sinks.Suggest(v, known); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			l.errf(nodes[i], path, "%s", msg)
			continue
		}
		out = append(out, norm)
	}
	return out
}

func (l *loader) to(rt *route, path string, n *yaml.Node) {
	items := []*yaml.Node{n}
	if n.Kind == yaml.SequenceNode {
		items = n.Content
		if len(items) == 0 {
			l.errf(n, path, "a route needs at least one sink")
		}
	}
	names := make([]string, 0, len(l.r.sinks))
	for _, s := range l.r.sinks {
		names = append(names, s.name)
	}
	sort.Strings(names)
	for i, it := range items {
		p := path
		if n.Kind == yaml.SequenceNode {
			p = fmt.Sprintf("%s[%d]", path, i)
		}
		var nameN *yaml.Node
		switch {
		case it.Kind == yaml.ScalarNode && !isNull(it):
			nameN = it
		case it.Kind == yaml.MappingNode:
			for _, q := range pairs(it) {
				if q[0].Value == "sink" {
					nameN = q[1]
				}
			}
			if nameN == nil {
				l.errf(it, p, "missing sink: (the name of a sink)")
				continue
			}
		default:
			l.errf(it, p, "expected a sink name or a mapping with sink: and overrides, got %s", kindName(it))
			continue
		}
		s, ok := l.r.byName[nameN.Value]
		if !ok || nameN.Kind != yaml.ScalarNode {
			msg := fmt.Sprintf("unknown sink %q", nameN.Value)
			if sg := sinks.Suggest(nameN.Value, names); sg != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", sg)
			} else if len(names) > 0 {
				msg += " (sinks: " + strings.Join(names, ", ") + ")"
			} else {
				msg += " (the file defines no sinks)"
			}
			l.errf(nameN, p, "%s", msg)
			continue
		}
		if s.bad || s.cfg == nil {
			continue // its own errors are reported
		}
		over := sinks.Overrides{}
		if it.Kind == yaml.MappingNode {
			var errs []*sinks.ConfigError
			over, errs = s.typ.DecodeOverrides(it, l.res, "sink")
			for _, e := range errs {
				l.el.add(e.Line, e.Column, join(p, e.Path), "%s", e.Message)
			}
			if len(errs) > 0 {
				continue
			}
		}
		if t := l.target(rt, p, it, s, over); t != nil {
			rt.to = append(rt.to, t)
		}
	}
}
