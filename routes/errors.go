package routes

import (
	"fmt"
	"sort"
	"strings"
)

// Error is one problem in a rules file, located by line, column and the
// path of the key it concerns ("routes[2].to[0]").
type Error struct {
	File         string
	Line, Column int
	Path         string
	Message      string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", e.Line, e.Column)
	}
	b.WriteString(": ")
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Message)
	return b.String()
}

// Errors is every problem found in a rules file, in file order. Load and
// Parse return it (as error) when the file is refused.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// errList collects errors while a file is read.
type errList struct {
	file string
	errs Errors
	seen map[string]bool
}

func (l *errList) add(line, col int, path, format string, args ...any) {
	e := &Error{File: l.file, Line: line, Column: col, Path: path, Message: fmt.Sprintf(format, args...)}
	key := e.Error()
	if l.seen == nil {
		l.seen = map[string]bool{}
	}
	if l.seen[key] {
		return
	}
	l.seen[key] = true
	l.errs = append(l.errs, e)
}

func (l *errList) sorted() Errors {
	sort.SliceStable(l.errs, func(i, j int) bool {
		a, b := l.errs[i], l.errs[j]
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
	return l.errs
}
