package routes

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"text/template/parse"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

// A fast template evaluates the common subset of text/template directly,
// without text/template's per-action reflection (field lookups by name,
// function calls through reflect.Call), which costs a microsecond or more
// per action. The subset: text, {{pipeline}}, if/with/else, field chains
// from the dot, constants, the functions of Funcs except join, and eq, ne
// and not. A template outside the subset is not compiled; at run time,
// anything out of the ordinary (a nil pointer, a missing map key, an
// argument of an unexpected type) gives errSlow and the caller renders
// with text/template, so results and errors are text/template's. Each fast
// template is also checked against text/template on every sample event
// before it is used.
type fastTemplate struct {
	root []fnode
}

// errSlow: this evaluation is outside the fast subset.
var errSlow = errors.New("outside the fast template subset")

type fnodeKind int

const (
	fText fnodeKind = iota
	fAction
	fIf
	fWith
)

type fnode struct {
	kind        fnodeKind
	text        string
	pipe        *fpipe
	list, else_ []fnode
	// plain: the action's value has a static type printed without
	// Error or String methods, checked at compile time.
	plain bool
}

type fpipe struct{ cmds []fcmd }

// fcmd is one command of a pipeline: an operand, or a function call whose
// last argument is the previous command's value when there is one.
type fcmd struct {
	op   *farg
	fn   fnCode
	args []farg
}

// fnCode names a function of the subset, resolved at compile time.
type fnCode int

const (
	fnNone fnCode = iota
	fnJSON
	fnUpper
	fnLower
	fnTrim
	fnFirstLine
	fnShort
	fnTrunc
	fnDuration
	fnDefault
	fnReplace
	fnIcon
	fnSlack
	fnTimefmt
	fnEq
	fnNe
	fnNot
)

type fargKind int

const (
	aField fargKind = iota
	aDot
	aString
	aInt
	aBool
)

type farg struct {
	kind  fargKind
	steps []fstep
	s     string
	i     int64
	b     bool
}

// fstep is one field of a chain: deref pointers, then a struct field, a
// map key, or (for interface-typed values) a dynamic map lookup.
type fstep struct {
	deref   int
	index   []int
	mapKey  reflect.Value
	dynamic string
}

// fval is a value in a fast evaluation: a string (function results and
// constants, without boxing) or a reflect.Value.
type fval struct {
	rv    reflect.Value
	s     string
	isStr bool
}

var (
	stringType   = reflect.TypeOf("")
	boolType     = reflect.TypeOf(true)
	anyType      = reflect.TypeOf((*any)(nil)).Elem()
	timeType     = reflect.TypeOf(time.Time{})
	errorType    = reflect.TypeOf((*error)(nil)).Elem()
	stringerType = reflect.TypeOf((*fmt.Stringer)(nil)).Elem()
	dataType     = reflect.TypeOf(&TemplateData{})
)

// fastFuncs are the functions the fast evaluator calls, with their code
// and result type for static typing.
var fastFuncs = map[string]struct {
	code fnCode
	typ  reflect.Type
}{
	"json": {fnJSON, stringType}, "upper": {fnUpper, stringType}, "lower": {fnLower, stringType},
	"trim": {fnTrim, stringType}, "firstLine": {fnFirstLine, stringType}, "short": {fnShort, stringType},
	"trunc": {fnTrunc, stringType}, "duration": {fnDuration, stringType}, "default": {fnDefault, anyType},
	"replace": {fnReplace, stringType}, "icon": {fnIcon, stringType}, "slack": {fnSlack, stringType},
	"timefmt": {fnTimefmt, stringType}, "eq": {fnEq, boolType}, "ne": {fnNe, boolType}, "not": {fnNot, boolType},
}

// compileFast compiles a parsed text template, or returns nil when it is
// outside the subset.
func compileFast(root *parse.ListNode) *fastTemplate {
	c := fastCompiler{}
	nodes, ok := c.list(root, dataType)
	if !ok {
		return nil
	}
	return &fastTemplate{root: nodes}
}

type fastCompiler struct{}

func (c fastCompiler) list(l *parse.ListNode, dot reflect.Type) ([]fnode, bool) {
	if l == nil {
		return nil, true
	}
	var out []fnode
	for _, n := range l.Nodes {
		switch n := n.(type) {
		case *parse.TextNode:
			out = append(out, fnode{kind: fText, text: string(n.Text)})
		case *parse.CommentNode:
		case *parse.ActionNode:
			p, t, ok := c.pipe(n.Pipe, dot)
			if !ok {
				return nil, false
			}
			out = append(out, fnode{kind: fAction, pipe: p, plain: plainType(t)})
		case *parse.IfNode, *parse.WithNode:
			var b *parse.BranchNode
			kind := fIf
			if in, isIf := n.(*parse.IfNode); isIf {
				b = &in.BranchNode
			} else {
				b, kind = &n.(*parse.WithNode).BranchNode, fWith
			}
			p, t, ok := c.pipe(b.Pipe, dot)
			if !ok {
				return nil, false
			}
			inner := dot
			if kind == fWith {
				inner = t
			}
			list, ok1 := c.list(b.List, inner)
			els, ok2 := c.list(b.ElseList, dot)
			if !ok1 || !ok2 {
				return nil, false
			}
			out = append(out, fnode{kind: kind, pipe: p, list: list, else_: els})
		default:
			return nil, false
		}
	}
	return out, true
}

// pipe compiles a pipeline and returns the static type of its value.
func (c fastCompiler) pipe(p *parse.PipeNode, dot reflect.Type) (*fpipe, reflect.Type, bool) {
	if p == nil || len(p.Decl) > 0 || len(p.Cmds) == 0 {
		return nil, nil, false
	}
	out := &fpipe{}
	var t reflect.Type
	for i, cmd := range p.Cmds {
		if len(cmd.Args) == 0 {
			return nil, nil, false
		}
		if id, ok := cmd.Args[0].(*parse.IdentifierNode); ok {
			f, known := fastFuncs[id.Ident]
			if !known {
				return nil, nil, false
			}
			rt := f.typ
			fc := fcmd{fn: f.code}
			for _, a := range cmd.Args[1:] {
				arg, _, ok := c.arg(a, dot)
				if !ok {
					return nil, nil, false
				}
				fc.args = append(fc.args, arg)
			}
			out.cmds = append(out.cmds, fc)
			t = rt
			continue
		}
		if i > 0 || len(cmd.Args) != 1 {
			return nil, nil, false // an operand cannot take the piped value
		}
		arg, at, ok := c.arg(cmd.Args[0], dot)
		if !ok {
			return nil, nil, false
		}
		out.cmds = append(out.cmds, fcmd{op: &arg})
		t = at
	}
	if t != nil && t.Kind() == reflect.Interface && t.NumMethod() == 0 {
		t = anyType
	}
	return out, t, true
}

func (c fastCompiler) arg(n parse.Node, dot reflect.Type) (farg, reflect.Type, bool) {
	switch n := n.(type) {
	case *parse.DotNode:
		return farg{kind: aDot}, dot, true
	case *parse.FieldNode:
		steps, t, ok := chain(dot, n.Ident)
		return farg{kind: aField, steps: steps}, t, ok
	case *parse.StringNode:
		return farg{kind: aString, s: n.Text}, stringType, true
	case *parse.NumberNode:
		if !n.IsInt || strings.ContainsAny(n.Text, "'.eEpPxXoObB_") {
			return farg{}, nil, false
		}
		return farg{kind: aInt, i: n.Int64}, reflect.TypeOf(0), true
	case *parse.BoolNode:
		return farg{kind: aBool, b: n.True}, boolType, true
	}
	return farg{}, nil, false
}

// chain compiles a field chain on a value of static type t.
func chain(t reflect.Type, names []string) ([]fstep, reflect.Type, bool) {
	if t == nil {
		return nil, nil, false
	}
	var steps []fstep
	for _, name := range names {
		var st fstep
		if t.Kind() == reflect.Interface {
			if t.NumMethod() != 0 {
				return nil, nil, false
			}
			st.dynamic = name
			steps = append(steps, st)
			continue
		}
		for t.Kind() == reflect.Pointer {
			if _, ok := t.MethodByName(name); ok {
				return nil, nil, false // a method call
			}
			t = t.Elem()
			st.deref++
		}
		if _, ok := reflect.PointerTo(t).MethodByName(name); ok {
			return nil, nil, false
		}
		switch t.Kind() {
		case reflect.Struct:
			f, ok := t.FieldByName(name)
			if !ok || !f.IsExported() || len(f.Index) != 1 {
				return nil, nil, false
			}
			st.index = f.Index
			t = f.Type
		case reflect.Map:
			if t.Key() != stringType {
				return nil, nil, false
			}
			st.mapKey = reflect.ValueOf(name)
			t = t.Elem()
		default:
			return nil, nil, false
		}
		steps = append(steps, st)
	}
	return steps, t, true
}

// exec renders the template into w, or returns errSlow having written
// part of it (the caller truncates).
func (f *fastTemplate) exec(x *evalCtx, w *bytes.Buffer) error {
	return execList(f.root, fval{rv: reflect.ValueOf(&x.data)}, w)
}

func execList(nodes []fnode, dot fval, w *bytes.Buffer) error {
	for i := range nodes {
		n := &nodes[i]
		switch n.kind {
		case fText:
			w.WriteString(n.text)
		case fAction:
			v, err := evalPipe(n.pipe, dot)
			if err != nil {
				return err
			}
			if err := printVal(w, v, n.plain); err != nil {
				return err
			}
		case fIf, fWith:
			v, err := evalPipe(n.pipe, dot)
			if err != nil {
				return err
			}
			truth, ok := isTrueVal(v)
			if !ok {
				return errSlow
			}
			switch {
			case truth && n.kind == fWith:
				err = execList(n.list, v, w)
			case truth:
				err = execList(n.list, dot, w)
			default:
				err = execList(n.else_, dot, w)
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

func evalPipe(p *fpipe, dot fval) (fval, error) {
	if len(p.cmds) == 1 && p.cmds[0].op != nil {
		// The common case, {{.Field.Chain}}: no function call.
		v, err := evalArg(p.cmds[0].op, dot)
		if err == nil && !v.isStr && v.rv.Kind() == reflect.Interface && v.rv.NumMethod() == 0 {
			v.rv = v.rv.Elem()
		}
		return v, err
	}
	var v fval
	for i := range p.cmds {
		c := &p.cmds[i]
		var err error
		if c.op != nil {
			v, err = evalArg(c.op, dot)
		} else {
			args := make([]fval, 0, 4)
			for j := range c.args {
				a, err := evalArg(&c.args[j], dot)
				if err != nil {
					return fval{}, err
				}
				args = append(args, a)
			}
			if i > 0 {
				args = append(args, v)
			}
			v, err = call(c.fn, args)
		}
		if err != nil {
			return fval{}, err
		}
		// As text/template does: an interface{} value is replaced by what it holds.
		if !v.isStr && v.rv.Kind() == reflect.Interface && v.rv.NumMethod() == 0 {
			v.rv = v.rv.Elem()
		}
	}
	return v, nil
}

func evalArg(a *farg, dot fval) (fval, error) {
	switch a.kind {
	case aDot:
		return dot, nil
	case aString:
		return fval{s: a.s, isStr: true}, nil
	case aInt:
		return fval{rv: reflect.ValueOf(int(a.i))}, nil
	case aBool:
		return fval{rv: reflect.ValueOf(a.b)}, nil
	}
	if dot.isStr {
		return fval{}, errSlow
	}
	v := dot.rv
	for i := range a.steps {
		st := &a.steps[i]
		if st.dynamic != "" {
			// An interface-typed value: only maps with string keys.
			for v.Kind() == reflect.Interface || v.Kind() == reflect.Pointer {
				if v.IsNil() {
					return fval{}, errSlow
				}
				v = v.Elem()
			}
			if v.Kind() != reflect.Map || v.Type().Key() != stringType {
				return fval{}, errSlow
			}
			r := v.MapIndex(reflect.ValueOf(st.dynamic))
			if !r.IsValid() {
				return fval{}, errSlow
			}
			v = r
			continue
		}
		for j := 0; j < st.deref; j++ {
			if v.Kind() != reflect.Pointer || v.IsNil() {
				return fval{}, errSlow
			}
			v = v.Elem()
		}
		if st.index != nil {
			v = v.Field(st.index[0])
			continue
		}
		if v.Kind() != reflect.Map || v.IsNil() {
			return fval{}, errSlow
		}
		r := v.MapIndex(st.mapKey)
		if !r.IsValid() {
			return fval{}, errSlow
		}
		v = r
	}
	return fval{rv: v}, nil
}

// plainType reports whether values of static type t (after pointers)
// print without an Error or String method.
func plainType(t reflect.Type) bool {
	if t == nil || t.Kind() == reflect.Interface {
		return false
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.Kind() != reflect.Interface && !hasFormatMethod(t)
}

// printVal prints as text/template's printValue does; plain says the
// value's type needs no check for formatting methods.
func printVal(w *bytes.Buffer, v fval, plain bool) error {
	if v.isStr {
		w.WriteString(v.s)
		return nil
	}
	rv := v.rv
	if rv.Kind() == reflect.Pointer {
		for rv.Kind() == reflect.Pointer || rv.Kind() == reflect.Interface {
			if rv.IsNil() {
				return errSlow
			}
			rv = rv.Elem()
		}
	}
	if !rv.IsValid() {
		return errSlow
	}
	if !plain && hasFormatMethod(rv.Type()) {
		return errSlow
	}
	switch rv.Kind() {
	case reflect.String:
		w.WriteString(rv.String())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		w.Write(strconv.AppendInt(w.AvailableBuffer(), rv.Int(), 10))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		w.Write(strconv.AppendUint(w.AvailableBuffer(), rv.Uint(), 10))
	case reflect.Bool:
		w.WriteString(strconv.FormatBool(rv.Bool()))
	default:
		return errSlow
	}
	return nil
}

// formatMethods caches, per type, whether it or its pointer has an Error
// or String method, which text/template prints with.
var formatMethods sync.Map // reflect.Type → bool

func hasFormatMethod(t reflect.Type) bool {
	if v, ok := formatMethods.Load(t); ok {
		return v.(bool)
	}
	has := t.Implements(errorType) || t.Implements(stringerType) ||
		reflect.PointerTo(t).Implements(errorType) || reflect.PointerTo(t).Implements(stringerType)
	formatMethods.Store(t, has)
	return has
}

// isTrueVal is text/template's truth of a pipeline value.
func isTrueVal(v fval) (bool, bool) {
	if v.isStr {
		return v.s != "", true
	}
	rv := v.rv
	if rv.Kind() == reflect.Interface {
		if rv.IsNil() {
			return false, true
		}
		rv = rv.Elem()
	}
	if !rv.IsValid() {
		return false, true
	}
	switch rv.Kind() {
	case reflect.Array, reflect.Map, reflect.Slice, reflect.String:
		return rv.Len() > 0, true
	case reflect.Bool:
		return rv.Bool(), true
	case reflect.Pointer, reflect.Interface, reflect.Func, reflect.Chan:
		return !rv.IsNil(), true
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return rv.Int() != 0, true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return rv.Uint() != 0, true
	case reflect.Float32, reflect.Float64:
		return rv.Float() != 0, true
	case reflect.Struct:
		return true, true
	}
	return false, false
}

// str converts an argument for a string parameter as text/template does:
// a string, an interface holding one, or a pointer to one.
func str(v fval) (string, bool) {
	if v.isStr {
		return v.s, true
	}
	rv := v.rv
	if !rv.IsValid() {
		return "", false
	}
	if rv.Type() == stringType {
		return rv.String(), true
	}
	if (rv.Kind() == reflect.Interface || rv.Kind() == reflect.Pointer) && !rv.IsNil() && rv.Elem().Type() == stringType {
		return rv.Elem().String(), true
	}
	return "", false
}

// iface is the value a function parameter of type any receives.
func iface(v fval) (any, bool) {
	if v.isStr {
		return v.s, true
	}
	if !v.rv.IsValid() || !v.rv.CanInterface() {
		return nil, false
	}
	return v.rv.Interface(), true
}

func strResult(s string) (fval, error) { return fval{s: s, isStr: true}, nil }

// call calls one function of the subset; anything unexpected is errSlow.
func call(fn fnCode, args []fval) (fval, error) {
	switch fn {
	case fnUpper, fnLower, fnTrim, fnFirstLine, fnShort, fnSlack:
		if len(args) != 1 {
			return fval{}, errSlow
		}
		s, ok := str(args[0])
		if !ok {
			return fval{}, errSlow
		}
		switch fn {
		case fnUpper:
			return strResult(strings.ToUpper(s))
		case fnLower:
			return strResult(strings.ToLower(s))
		case fnTrim:
			return strResult(strings.TrimSpace(s))
		case fnFirstLine:
			return strResult(firstLine(s))
		case fnShort:
			return strResult(truncRunes(s, 7, ""))
		}
		return strResult(slackEscape(s))
	case fnTrunc:
		if len(args) != 2 || args[0].isStr || args[0].rv.Kind() != reflect.Int {
			return fval{}, errSlow
		}
		s, ok := str(args[1])
		if !ok {
			return fval{}, errSlow
		}
		return strResult(truncRunes(s, int(args[0].rv.Int()), "…"))
	case fnReplace:
		if len(args) != 3 {
			return fval{}, errSlow
		}
		o, ok1 := str(args[0])
		n, ok2 := str(args[1])
		s, ok3 := str(args[2])
		if !ok1 || !ok2 || !ok3 {
			return fval{}, errSlow
		}
		return strResult(strings.ReplaceAll(s, o, n))
	case fnIcon:
		if len(args) != 1 {
			return fval{}, errSlow
		}
		if args[0].isStr {
			return strResult(icon(args[0].s))
		}
		rv := args[0].rv
		if rv.Kind() == reflect.Interface && !rv.IsNil() {
			rv = rv.Elem()
		}
		switch {
		case rv.IsValid() && rv.Type() == reflect.TypeOf(builds.Status("")):
			return strResult(icon(builds.Status(rv.String())))
		case rv.IsValid() && rv.Type() == stringType:
			return strResult(icon(rv.String()))
		}
		return strResult(icon(nil))
	case fnDuration:
		if len(args) != 1 || args[0].isStr {
			return fval{}, errSlow
		}
		rv := args[0].rv
		if rv.Kind() == reflect.Interface && !rv.IsNil() {
			rv = rv.Elem()
		}
		if !rv.IsValid() {
			return strResult("")
		}
		if rv.Kind() == reflect.Pointer && rv.Type().Elem().Kind() == reflect.Int64 {
			if rv.IsNil() {
				return strResult("")
			}
			rv = rv.Elem()
		}
		if rv.Type() != reflect.TypeOf(int64(0)) && rv.Type() != reflect.TypeOf(0) {
			return fval{}, errSlow
		}
		return strResult(duration(rv.Int()))
	case fnJSON:
		if len(args) != 1 {
			return fval{}, errSlow
		}
		v, ok := iface(args[0])
		if !ok {
			return fval{}, errSlow
		}
		s, err := toJSON(v)
		if err != nil {
			return fval{}, errSlow
		}
		return strResult(s)
	case fnTimefmt:
		if len(args) != 2 {
			return fval{}, errSlow
		}
		layout, ok := str(args[0])
		if !ok || args[1].isStr {
			return fval{}, errSlow
		}
		rv := args[1].rv
		if rv.Kind() == reflect.Pointer && rv.Type().Elem() == timeType {
			if rv.IsNil() {
				return strResult("")
			}
			rv = rv.Elem()
		}
		if !rv.IsValid() || rv.Type() != timeType {
			return fval{}, errSlow
		}
		t, _ := rv.Interface().(time.Time)
		return strResult(t.Format(layout))
	case fnDefault:
		if len(args) != 2 {
			return fval{}, errSlow
		}
		def, v := args[0], args[1]
		if v.isStr {
			if v.s == "" {
				return def, nil
			}
			return v, nil
		}
		rv := v.rv
		if !rv.IsValid() {
			return def, nil
		}
		switch rv.Kind() {
		case reflect.Pointer, reflect.Interface:
			if rv.IsNil() {
				return def, nil
			}
		case reflect.String, reflect.Slice, reflect.Map:
			if rv.Len() == 0 {
				return def, nil
			}
		}
		return v, nil
	case fnNot:
		if len(args) != 1 {
			return fval{}, errSlow
		}
		t, ok := isTrueVal(args[0])
		if !ok {
			return fval{}, errSlow
		}
		return fval{rv: reflect.ValueOf(!t)}, nil
	case fnEq, fnNe:
		if len(args) != 2 {
			return fval{}, errSlow
		}
		eq, ok := basicEqual(args[0], args[1])
		if !ok {
			return fval{}, errSlow
		}
		return fval{rv: reflect.ValueOf(eq == (fn == fnEq))}, nil
	}
	return fval{}, errSlow
}

// basicEqual compares two strings or two integers; other comparisons are
// left to text/template.
func basicEqual(a, b fval) (bool, bool) {
	kindOf := func(v fval) (reflect.Value, bool) {
		if v.isStr {
			return reflect.Value{}, true
		}
		rv := v.rv
		if rv.Kind() == reflect.Interface && !rv.IsNil() {
			rv = rv.Elem()
		}
		return rv, false
	}
	ra, aStr := kindOf(a)
	rb, bStr := kindOf(b)
	sa, sb := a.s, b.s
	if !aStr {
		if !ra.IsValid() || ra.Kind() != reflect.String {
			if ra.IsValid() && rb.IsValid() && !bStr && isInt(ra) && isInt(rb) {
				return ra.Int() == rb.Int(), true
			}
			return false, false
		}
		sa = ra.String()
	}
	if !bStr {
		if !rb.IsValid() || rb.Kind() != reflect.String {
			return false, false
		}
		sb = rb.String()
	}
	return sa == sb, true
}

func isInt(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return true
	}
	return false
}

// fastRenderer renders with the fast template, and with text/template when
// the fast one cannot.
type fastRenderer struct {
	fast *fastTemplate
	slow textRenderer
}

func (r fastRenderer) render(x *evalCtx, w *bytes.Buffer) error {
	start := w.Len()
	err := r.fast.exec(x, w)
	if err == nil {
		if w.Len()-start > MaxRender {
			w.Truncate(start)
			return errTooLarge
		}
		return nil
	}
	w.Truncate(start)
	return r.slow.render(x, w)
}
