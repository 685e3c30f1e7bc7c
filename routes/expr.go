package routes

import (
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"time"

	"github.com/expr-lang/expr"
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
	fe, ok := err.(*file.Error)
	if !ok {
		return n.Line, n.Column, "invalid expression: " + err.Error()
	}
	msg := "invalid expression: " + exprMessage(fe.Message)
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
