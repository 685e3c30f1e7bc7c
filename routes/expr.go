package routes

import (
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"time"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/vm"
	"gopkg.in/yaml.v3"

	"github.com/buildbridge/buildbridge/sinks"
)

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

// exprErrorPos locates an expression error in the file when the
// expression is on one line, and says where it is in the expression.
func exprErrorPos(n *yaml.Node, err error) (int, int, string) {
	return exprErrorPosWith(n, err, exprMessage)
}

// exprErrorPosWith is exprErrorPos with the message rewritten by message.
func exprErrorPosWith(n *yaml.Node, err error, message func(string) string) (int, int, string) {
	fe, ok := err.(*file.Error)
	if !ok {
		return n.Line, n.Column, "invalid expression: " + err.Error()
	}
	msg := "invalid expression: " + message(fe.Message)
	if !strings.Contains(n.Value, "\n") {
		switch n.Style {
		case 0:
			return n.Line, n.Column + fe.Column, msg
		case yaml.DoubleQuotedStyle, yaml.SingleQuotedStyle:
			return n.Line, n.Column + 1 + fe.Column, msg
		}
	}
	return n.Line, n.Column, fmt.Sprintf("%s (expression line %d, column %d)", msg, fe.Line, fe.Column+1)
}

var (
	noField     = regexp.MustCompile(`type routes\.expr(\w+) has no field (\w+)`)
	unknownName = regexp.MustCompile(`^unknown name (\w+)`)
)

// exprMessage names the parts of the event as the expression does
// (build, project, …) rather than by their Go types, with a suggestion.
func exprMessage(msg string) string {
	m := noField.FindStringSubmatch(msg)
	if u := unknownName.FindStringSubmatch(msg); u != nil {
		m = []string{u[0], "Env", u[1]}
	}
	if m == nil {
		return msg
	}
	var typ reflect.Type
	switch m[1] {
	case "Build":
		typ = reflect.TypeOf(exprBuild{})
	case "Job":
		typ = reflect.TypeOf(exprJob{})
	case "Project":
		typ = reflect.TypeOf(exprProject{})
	case "Previous":
		typ = reflect.TypeOf(exprPrevious{})
	case "Env":
		typ = reflect.TypeOf(exprEnv{})
	default:
		return msg
	}
	var fields []string
	for i := 0; i < typ.NumField(); i++ {
		fields = append(fields, typ.Field(i).Tag.Get("expr"))
	}
	out := fmt.Sprintf("%s has no field %q", strings.ToLower(m[1]), m[2])
	if m[1] == "Env" {
		out = fmt.Sprintf("unknown name %q", m[2])
	}
	if s := sinks.Suggest(m[2], fields); s != "" {
		return out + fmt.Sprintf(" (did you mean %q?)", s)
	}
	return out + " (known: " + strings.Join(fields, ", ") + ")"
}

func compileCond(src string) (*vm.Program, error) {
	return expr.Compile(src, expr.Env(&exprEnv{}), expr.AsBool())
}

// A fast condition evaluates the common shape of `if:` expressions,
// comparisons of event fields with constants joined by &&, || and !,
// directly on the environment, without expr's VM and its reflection (a
// few hundred nanoseconds per expression). It is built from the program
// expr compiled and type-checked, only for that shape, and checked
// against expr's VM on every sample event before it is used.
type fastCond func(*exprEnv) bool

var (
	exprInts = map[string]func(*exprEnv) int64{
		"seq":                   func(e *exprEnv) int64 { return e.Seq },
		"build.id":              func(e *exprEnv) int64 { return e.Build.ID },
		"build.number":          func(e *exprEnv) int64 { return e.Build.Number },
		"build.duration_ms":     func(e *exprEnv) int64 { return e.Build.DurationMS },
		"job.id":                func(e *exprEnv) int64 { return e.Job.ID },
		"project.id":            func(e *exprEnv) int64 { return e.Project.ID },
		"project.owner_id":      func(e *exprEnv) int64 { return e.Project.OwnerID },
		"previous.build_number": func(e *exprEnv) int64 { return e.Previous.BuildNumber },
	}
	exprStrings = map[string]func(*exprEnv) string{
		"id":                 func(e *exprEnv) string { return e.ID },
		"type":               func(e *exprEnv) string { return e.Type },
		"build.state":        func(e *exprEnv) string { return e.Build.State },
		"build.result":       func(e *exprEnv) string { return e.Build.Result },
		"build.status":       func(e *exprEnv) string { return e.Build.Status },
		"build.ref":          func(e *exprEnv) string { return e.Build.Ref },
		"build.branch":       func(e *exprEnv) string { return e.Build.Branch },
		"build.sha":          func(e *exprEnv) string { return e.Build.SHA },
		"build.author":       func(e *exprEnv) string { return e.Build.Author },
		"build.author_email": func(e *exprEnv) string { return e.Build.AuthorEmail },
		"build.message":      func(e *exprEnv) string { return e.Build.Message },
		"build.reason":       func(e *exprEnv) string { return e.Build.Reason },
		"build.url":          func(e *exprEnv) string { return e.Build.URL },
		"job.name":           func(e *exprEnv) string { return e.Job.Name },
		"project.name":       func(e *exprEnv) string { return e.Project.Name },
		"previous.result":    func(e *exprEnv) string { return e.Previous.Result },
	}
	exprBools = map[string]func(*exprEnv) bool{
		"build.success": func(e *exprEnv) bool { return e.Build.Success },
	}
)

// compileFastCond builds the fast form of a compiled condition, or nil.
func compileFastCond(p *vm.Program) fastCond {
	f := fastBool(p.Node())
	if f == nil {
		return nil
	}
	for _, ev := range allSamples {
		x := newCtx(&ev)
		out, err := x.vm.Run(p, x.exprEnv())
		want, _ := out.(bool)
		same := err == nil && f(x.exprEnv()) == want
		x.release()
		if !same {
			return nil
		}
	}
	return f
}

// fieldPath names a field read (build.branch, type), or "".
func fieldPath(n ast.Node) string {
	switch n := n.(type) {
	case *ast.IdentifierNode:
		return n.Value
	case *ast.MemberNode:
		id, ok1 := n.Node.(*ast.IdentifierNode)
		prop, ok2 := n.Property.(*ast.StringNode)
		if ok1 && ok2 && !n.Optional && !n.Method {
			return id.Value + "." + prop.Value
		}
	}
	return ""
}

func fastInt(n ast.Node) func(*exprEnv) int64 {
	if lit, ok := n.(*ast.IntegerNode); ok {
		v := int64(lit.Value)
		return func(*exprEnv) int64 { return v }
	}
	return exprInts[fieldPath(n)]
}

func fastString(n ast.Node) func(*exprEnv) string {
	if lit, ok := n.(*ast.StringNode); ok {
		v := lit.Value
		return func(*exprEnv) string { return v }
	}
	return exprStrings[fieldPath(n)]
}

func fastBool(n ast.Node) fastCond {
	switch n := n.(type) {
	case *ast.BoolNode:
		v := n.Value
		return func(*exprEnv) bool { return v }
	case *ast.UnaryNode:
		if n.Operator != "!" && n.Operator != "not" {
			return nil
		}
		if f := fastBool(n.Node); f != nil {
			return func(e *exprEnv) bool { return !f(e) }
		}
		return nil
	case *ast.BinaryNode:
		return fastBinary(n)
	}
	return exprBools[fieldPath(n)]
}

func fastBinary(n *ast.BinaryNode) fastCond {
	switch n.Operator {
	case "&&", "and", "||", "or":
		l, r := fastBool(n.Left), fastBool(n.Right)
		if l == nil || r == nil {
			return nil
		}
		if n.Operator == "&&" || n.Operator == "and" {
			return func(e *exprEnv) bool { return l(e) && r(e) }
		}
		return func(e *exprEnv) bool { return l(e) || r(e) }
	}
	if l, r := fastInt(n.Left), fastInt(n.Right); l != nil && r != nil {
		switch n.Operator {
		case "==":
			return func(e *exprEnv) bool { return l(e) == r(e) }
		case "!=":
			return func(e *exprEnv) bool { return l(e) != r(e) }
		case "<":
			return func(e *exprEnv) bool { return l(e) < r(e) }
		case "<=":
			return func(e *exprEnv) bool { return l(e) <= r(e) }
		case ">":
			return func(e *exprEnv) bool { return l(e) > r(e) }
		case ">=":
			return func(e *exprEnv) bool { return l(e) >= r(e) }
		}
		return nil
	}
	if l, r := fastString(n.Left), fastString(n.Right); l != nil && r != nil {
		switch n.Operator {
		case "==":
			return func(e *exprEnv) bool { return l(e) == r(e) }
		case "!=":
			return func(e *exprEnv) bool { return l(e) != r(e) }
		case "startsWith":
			return func(e *exprEnv) bool { return strings.HasPrefix(l(e), r(e)) }
		case "endsWith":
			return func(e *exprEnv) bool { return strings.HasSuffix(l(e), r(e)) }
		case "contains":
			return func(e *exprEnv) bool { return strings.Contains(l(e), r(e)) }
		}
		return nil
	}
	if l, r := fastBool(n.Left), fastBool(n.Right); l != nil && r != nil {
		switch n.Operator {
		case "==":
			return func(e *exprEnv) bool { return l(e) == r(e) }
		case "!=":
			return func(e *exprEnv) bool { return l(e) != r(e) }
		}
	}
	return nil
}
