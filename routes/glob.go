package routes

import (
	"fmt"
	"regexp"
	"strings"
)

// A glob matches names: `*` any run of characters but `/`, `**` any run
// of characters, `?` one character but `/`, `[abc]`, `[a-z]` and
// `[!abc]` one character of (or not of) a set, `\` quotes the next
// character. A leading `!` makes the pattern exclude what it matches.
type glob struct {
	src  string
	neg  bool
	kind globKind
	lit  string
	re   *regexp.Regexp
}

type globKind int

const (
	globExact     globKind = iota // lit
	globPrefix                    // lit followed by *: no / after the prefix
	globPrefixAny                 // lit followed by **
	globRegexp
)

func compileGlob(p string) (glob, error) {
	g := glob{src: p}
	if strings.HasPrefix(p, "!") {
		g.neg = true
		p = p[1:]
	}
	if p == "" {
		return g, fmt.Errorf("empty pattern")
	}
	var re strings.Builder
	var lit strings.Builder
	re.WriteString("^")
	meta := false
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch c {
		case '\\':
			if i+1 == len(p) {
				return g, fmt.Errorf("pattern %q ends with a lone \\", g.src)
			}
			i++
			re.WriteString(regexp.QuoteMeta(p[i : i+1]))
			if !meta {
				lit.WriteByte(p[i])
			}
		case '*':
			if i+1 < len(p) && p[i+1] == '*' {
				re.WriteString(".*")
				i++
				if !meta && i+1 == len(p) {
					g.kind, g.lit = globPrefixAny, lit.String()
				}
			} else {
				re.WriteString("[^/]*")
				if !meta && i+1 == len(p) {
					g.kind, g.lit = globPrefix, lit.String()
				}
			}
			meta = true
		case '?':
			re.WriteString("[^/]")
			meta = true
		case '[':
			end := strings.IndexByte(p[i+1:], ']')
			if end == 0 && i+2 < len(p) { // "[]…]": a ] first is literal
				if e2 := strings.IndexByte(p[i+2:], ']'); e2 >= 0 {
					end = e2 + 1
				} else {
					end = -1
				}
			}
			if end < 0 {
				return g, fmt.Errorf("pattern %q has an unclosed [", g.src)
			}
			class := p[i+1 : i+1+end]
			if class == "" || class == "!" || class == "^" {
				return g, fmt.Errorf("pattern %q has an empty [] set", g.src)
			}
			re.WriteString("[")
			if class[0] == '!' || class[0] == '^' {
				re.WriteString("^/")
				class = class[1:]
			}
			for j := 0; j < len(class); j++ {
				switch ch := class[j]; ch {
				case '\\', '[', ']', '^':
					re.WriteByte('\\')
					re.WriteByte(ch)
				default:
					re.WriteByte(ch)
				}
			}
			re.WriteString("]")
			i += end + 1
			meta = true
		default:
			re.WriteString(regexp.QuoteMeta(p[i : i+1]))
			if !meta {
				lit.WriteByte(c)
			}
		}
	}
	re.WriteString("$")
	if !meta {
		g.kind, g.lit = globExact, lit.String()
		return g, nil
	}
	if g.kind == globPrefix || g.kind == globPrefixAny {
		return g, nil
	}
	r, err := regexp.Compile(re.String())
	if err != nil {
		return g, fmt.Errorf("pattern %q: %v", g.src, err)
	}
	g.kind, g.re = globRegexp, r
	return g, nil
}

func (g *glob) match(s string) bool {
	switch g.kind {
	case globExact:
		return s == g.lit
	case globPrefix:
		return strings.HasPrefix(s, g.lit) && !strings.Contains(s[len(g.lit):], "/")
	case globPrefixAny:
		return strings.HasPrefix(s, g.lit)
	}
	return g.re.MatchString(s)
}

// globList matches when a name matches one of its patterns (or it has
// only exclusions) and none of its exclusions.
type globList struct {
	pats   []glob
	hasPos bool
	src    []string
}

func (l *globList) match(s string) bool {
	ok := !l.hasPos
	for i := range l.pats {
		g := &l.pats[i]
		if g.neg {
			if g.match(s) {
				return false
			}
		} else if !ok && g.match(s) {
			ok = true
		}
	}
	return ok
}

func (l *globList) String() string {
	if len(l.src) == 1 {
		return fmt.Sprintf("%q", l.src[0])
	}
	q := make([]string, len(l.src))
	for i, s := range l.src {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
