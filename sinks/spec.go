package sinks

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Kind is the type of a setting's value.
type Kind int

// The kinds of setting. Every scalar kind except the templates may use
// `${ENV_VAR}` references inside its value, or be a whole `file:PATH`
// reference (the file's content, without its trailing newline).
const (
	KindString Kind = iota
	// KindSecret is a string that is never printed (tokens, passwords, keys).
	KindSecret
	KindInt
	KindBool
	// KindDuration is written like 10s or 1m30s.
	KindDuration
	// KindEnum is one of Setting.Enum.
	KindEnum
	// KindURL is an absolute http:// or https:// URL.
	KindURL
	// KindStringList is a list of strings; a single string is a list of one.
	KindStringList
	// KindStringMap is a mapping of strings to strings (HTTP headers).
	KindStringMap
	// KindTemplate is a Go text/template.
	KindTemplate
	// KindHTMLTemplate is a Go html/template.
	KindHTMLTemplate
	// KindTemplateList is a list of one-line text/templates (a single string
	// is a list of one), rendered and joined with ", " (email recipients).
	KindTemplateList
)

var kindNames = [...]string{"string", "secret", "integer", "boolean", "duration", "enum", "URL",
	"list of strings", "mapping of strings", "template", "HTML template", "list of templates"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// IsTemplate reports whether the kind is one of the template kinds.
func (k Kind) IsTemplate() bool {
	return k == KindTemplate || k == KindHTMLTemplate || k == KindTemplateList
}

// Role says where a rendered template goes in the Delivery.
type Role int

// Template roles.
const (
	// RoleNone: not a template.
	RoleNone Role = iota
	// RoleBody: Delivery.Body.
	RoleBody
	// RoleSubject: Delivery.Subject.
	RoleSubject
	// RoleParam: Delivery.Params[setting name].
	RoleParam
)

// Setting declares one key a sink type accepts.
type Setting struct {
	Name string
	Kind Kind
	// Doc is a short description for the JSON Schema and errors.
	Doc string
	// Default is the value when the setting is not given, written as in
	// the rules file (a template's default is its text). Lists and
	// mappings have no default.
	Default string
	// Enum lists the accepted values of an Enum setting.
	Enum []string
	// Required settings must be given on the sink.
	Required bool
	// Override allows the setting per route, in the route's `to:` entry.
	Override bool
	// Param puts the effective value of a non-template setting in
	// Delivery.Params (lists joined with ", ").
	Param bool
	// Role is where a template's rendered text goes.
	Role Role
}

// Secret is a string that must not be printed: it formats, logs and
// marshals as "[redacted]". Reveal gives the value to the code that uses it.
type Secret struct{ v string }

// NewSecret wraps a value.
func NewSecret(v string) Secret { return Secret{v: v} }

// Reveal returns the secret's value.
func (s Secret) Reveal() string { return s.v }

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s.v == "" }

func (s Secret) String() string   { return "[redacted]" }
func (s Secret) GoString() string { return "sinks.Secret{[redacted]}" }

// MarshalJSON keeps the secret out of JSON.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"[redacted]"`), nil }

// LogValue keeps the secret out of logs.
func (s Secret) LogValue() slog.Value { return slog.StringValue("[redacted]") }

// Value is the decoded value of one setting, with where it was written.
type Value struct {
	setting      *Setting
	line, column int
	set          bool
	fromRef      bool
	unresolved   bool
	ref          string // the value as written, when it held a reference

	s      string
	secret Secret
	list   []string
	m      map[string]string
	i      int64
	b      bool
	d      time.Duration
}

// Setting is the declaration the value was decoded for.
func (v *Value) Setting() *Setting { return v.setting }

// Line and Column locate the value in the rules file (0 for a default).
func (v *Value) Line() int   { return v.line }
func (v *Value) Column() int { return v.column }

// IsSet reports whether the value was written in the file (not a default).
func (v *Value) IsSet() bool { return v.set }

// FromReference reports whether the value came (at least partly) from an
// ${ENV} or file: reference. Such values are treated as secrets: they are
// never printed.
func (v *Value) FromReference() bool { return v.fromRef }

// Unresolved reports a reference left unresolved (Resolver.SkipSecrets):
// the value is a placeholder and was not validated.
func (v *Value) Unresolved() bool { return v.unresolved }

// Reference is the value as written in the file when it held a
// reference ("${SLACK_TOKEN}"), or "".
func (v *Value) Reference() string { return v.ref }

// Text is the value of a String, Enum, URL or template setting (the
// template's source); for a secret, its revealed value.
func (v *Value) Text() string {
	if v.setting != nil && v.setting.Kind == KindSecret {
		return v.secret.v
	}
	return v.s
}

// Secret is the value of a Secret setting.
func (v *Value) Secret() Secret { return v.secret }

// List is the value of a StringList or TemplateList setting.
func (v *Value) List() []string { return v.list }

// Map is the value of a StringMap setting.
func (v *Value) Map() map[string]string { return v.m }

// Int, Bool and Duration are the values of settings of those kinds.
func (v *Value) Int() int64              { return v.i }
func (v *Value) Bool() bool              { return v.b }
func (v *Value) Duration() time.Duration { return v.d }

// ParamText is the value as it goes in Delivery.Params: lists joined
// with ", ", numbers and booleans formatted.
func (v *Value) ParamText() string {
	switch v.setting.Kind {
	case KindStringList, KindTemplateList:
		return strings.Join(v.list, ", ")
	case KindInt:
		return strconv.FormatInt(v.i, 10)
	case KindBool:
		return strconv.FormatBool(v.b)
	case KindDuration:
		return v.d.String()
	case KindSecret:
		return "[redacted]"
	}
	return v.s
}

// ConfigError is a problem in a sink's configuration, located in the file.
// Path is relative to the sink ("token", "headers.Authorization").
type ConfigError struct {
	Line, Column int
	Path         string
	Message      string
}

func (e *ConfigError) Error() string {
	if e.Path == "" {
		return fmt.Sprintf("%d:%d: %s", e.Line, e.Column, e.Message)
	}
	return fmt.Sprintf("%d:%d: %s: %s", e.Line, e.Column, e.Path, e.Message)
}

// Config is the decoded configuration of one sink instance.
type Config struct {
	// Name is the sink's name in the rules file, Type its type.
	Name string
	Type string
	// Line and Column locate the sink's definition (0 for a built-in).
	Line, Column int
	// Warnings are problems that do not stop loading (secrets written
	// inline instead of as references).
	Warnings []*ConfigError

	typ    *Type
	values map[string]*Value
}

// String names the sink without any of its settings.
func (c *Config) String() string { return fmt.Sprintf("sink %q (%s)", c.Name, c.Type) }

// LogValue logs the sink by name and type only.
func (c *Config) LogValue() slog.Value {
	return slog.GroupValue(slog.String("name", c.Name), slog.String("type", c.Type))
}

// Value is the effective value of a setting: as written, or its default.
// It is nil for a setting the type does not declare.
func (c *Config) Value(name string) *Value {
	if v, ok := c.values[name]; ok {
		return v
	}
	s := c.typ.Setting(name)
	if s == nil {
		return nil
	}
	v, _ := s.defaultValue()
	return v
}

// IsSet reports whether the setting was written in the file.
func (c *Config) IsSet(name string) bool { _, ok := c.values[name]; return ok }

// Text, Secret, Int, Bool, Duration, List and Map return the effective
// value of a setting (zero for an undeclared one).
func (c *Config) Text(name string) string {
	if v := c.Value(name); v != nil {
		return v.Text()
	}
	return ""
}
func (c *Config) Secret(name string) Secret {
	if v := c.Value(name); v != nil {
		return v.secret
	}
	return Secret{}
}
func (c *Config) Int(name string) int64 {
	if v := c.Value(name); v != nil {
		return v.i
	}
	return 0
}
func (c *Config) Bool(name string) bool {
	if v := c.Value(name); v != nil {
		return v.b
	}
	return false
}
func (c *Config) Duration(name string) time.Duration {
	if v := c.Value(name); v != nil {
		return v.d
	}
	return 0
}
func (c *Config) List(name string) []string {
	if v := c.Value(name); v != nil {
		return v.list
	}
	return nil
}
func (c *Config) Map(name string) map[string]string {
	if v := c.Value(name); v != nil {
		return v.m
	}
	return nil
}

// Errorf makes an error located at the setting (or at the sink when the
// setting was not written). Never pass a secret or referenced value.
func (c *Config) Errorf(name, format string, args ...any) *ConfigError {
	e := &ConfigError{Line: c.Line, Column: c.Column, Path: name, Message: fmt.Sprintf(format, args...)}
	if v, ok := c.values[name]; ok {
		e.Line, e.Column = v.line, v.column
	}
	return e
}

// TypeSpec is the type the configuration was decoded for.
func (c *Config) TypeSpec() *Type { return c.typ }

// Overrides are the per-route settings of a route's `to:` entry.
type Overrides map[string]*Value

// Effective is the value of a setting for one route: the route's
// override, else the sink's value, else the default.
func (c *Config) Effective(o Overrides, name string) *Value {
	if v, ok := o[name]; ok {
		return v
	}
	return c.Value(name)
}

// TargetHash names a destination that must not be printed (a URL from a
// secret reference) by a short stable hash of it.
func TargetHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:8])
}

// Resolver resolves `${ENV}` and `file:` references while decoding.
type Resolver struct {
	// LookupEnv finds environment variables (os.LookupEnv when nil).
	LookupEnv func(string) (string, bool)
	// ReadFile reads file: references (required unless SkipSecrets).
	ReadFile func(string) ([]byte, error)
	// Dir is the directory relative file: paths start from.
	Dir string
	// SkipSecrets checks the references' syntax without resolving them;
	// such values are placeholders and are not validated.
	SkipSecrets bool
}

// maxSecretFile bounds what a file: reference reads.
const maxSecretFile = 64 << 10

// Decode decodes and validates the mapping that configures one sink
// named name. The `type` key is skipped. Every problem is returned, each
// located by the node it comes from.
func (t *Type) Decode(name string, n *yaml.Node, r *Resolver) (*Config, []*ConfigError) {
	c := &Config{Name: name, Type: t.Name, Line: n.Line, Column: n.Column, typ: t, values: map[string]*Value{}}
	var errs []*ConfigError
	if n.Kind != yaml.MappingNode {
		return c, []*ConfigError{{Line: n.Line, Column: n.Column, Message: "a sink must be a mapping with a type and its settings"}}
	}
	written := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, vn := n.Content[i], deref(n.Content[i+1])
		written[k.Value] = true
		if k.Value == "type" {
			continue
		}
		s := t.Setting(k.Value)
		if s == nil {
			errs = append(errs, &ConfigError{Line: k.Line, Column: k.Column, Path: k.Value,
				Message: unknownKey("setting", k.Value, "for a "+t.Name+" sink", t.settingNames(false), "type")})
			continue
		}
		v, verrs := s.decode(k.Value, vn, r)
		errs = append(errs, verrs...)
		if v != nil {
			c.values[s.Name] = v
			if s.Kind == KindSecret && !v.fromRef {
				c.Warnings = append(c.Warnings, &ConfigError{Line: vn.Line, Column: vn.Column, Path: s.Name,
					Message: "secret written inline; use ${ENV_VAR} or file:PATH so it stays out of the file"})
			}
		}
	}
	for i := range t.Settings {
		s := &t.Settings[i]
		if s.Required && !written[s.Name] {
			errs = append(errs, &ConfigError{Line: n.Line, Column: n.Column, Path: s.Name,
				Message: fmt.Sprintf("required setting missing (%s)", s.Doc)})
		}
	}
	if len(errs) == 0 && t.Check != nil {
		errs = append(errs, t.Check(c)...)
	}
	return c, errs
}

// DecodeOverrides decodes the per-route settings of a `to:` entry. Keys
// in ignore (such as "sink") belong to the caller and are skipped.
func (t *Type) DecodeOverrides(n *yaml.Node, r *Resolver, ignore ...string) (Overrides, []*ConfigError) {
	o := Overrides{}
	var errs []*ConfigError
	if n.Kind != yaml.MappingNode {
		return o, []*ConfigError{{Line: n.Line, Column: n.Column, Message: "expected a mapping"}}
	}
next:
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, vn := n.Content[i], deref(n.Content[i+1])
		for _, ig := range ignore {
			if k.Value == ig {
				continue next
			}
		}
		s := t.Setting(k.Value)
		switch {
		case s == nil:
			errs = append(errs, &ConfigError{Line: k.Line, Column: k.Column, Path: k.Value,
				Message: unknownKey("key", k.Value, "for a "+t.Name+" sink in to:", t.settingNames(true), ignore...)})
			continue
		case !s.Override:
			errs = append(errs, &ConfigError{Line: k.Line, Column: k.Column, Path: k.Value,
				Message: fmt.Sprintf("%s cannot be set per route; set it on the sink (per-route keys for %s: %s)",
					k.Value, t.Name, strings.Join(t.settingNames(true), ", "))})
			continue
		}
		v, verrs := s.decode(k.Value, vn, r)
		errs = append(errs, verrs...)
		if v != nil {
			o[s.Name] = v
		}
	}
	return o, errs
}

// settingNames lists the type's setting names (only overridable ones when
// overrides is set).
func (t *Type) settingNames(overrides bool) []string {
	var out []string
	for _, s := range t.Settings {
		if !overrides || s.Override {
			out = append(out, s.Name)
		}
	}
	return out
}

// OverrideNames lists the settings a route may override for this type.
func (t *Type) OverrideNames() []string { return t.settingNames(true) }

func unknownKey(what, key, where string, names []string, extra ...string) string {
	cands := append(append([]string(nil), names...), extra...)
	msg := fmt.Sprintf("unknown %s %q %s", what, key, where)
	if s := Suggest(key, cands); s != "" {
		return msg + fmt.Sprintf(" (did you mean %q?)", s)
	}
	sort.Strings(cands)
	return msg + " (known: " + strings.Join(cands, ", ") + ")"
}

func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 8; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

// defaultValue is the value of a setting that was not written.
func (s *Setting) defaultValue() (*Value, error) {
	v := &Value{setting: s}
	if s.Default == "" {
		return v, nil
	}
	switch s.Kind {
	case KindStringList, KindStringMap:
		return nil, errors.New("lists and mappings have no default")
	case KindTemplateList:
		v.list = []string{s.Default}
		return v, nil
	}
	if err := s.parseScalar(v, s.Default); err != nil {
		return nil, err
	}
	return v, nil
}

// decode decodes the value node of one setting.
func (s *Setting) decode(path string, n *yaml.Node, r *Resolver) (*Value, []*ConfigError) {
	v := &Value{setting: s, line: n.Line, column: n.Column, set: true}
	fail := func(n *yaml.Node, p, format string, args ...any) (*Value, []*ConfigError) {
		return nil, []*ConfigError{{Line: n.Line, Column: n.Column, Path: p, Message: fmt.Sprintf(format, args...)}}
	}
	if isNull(n) {
		return fail(n, path, "needs a value (%s)", s.Kind)
	}
	switch s.Kind {
	case KindStringList, KindTemplateList:
		items := []*yaml.Node{n}
		if n.Kind == yaml.SequenceNode {
			items = n.Content
		}
		var errs []*ConfigError
		for i, it := range items {
			it = deref(it)
			p := path
			if n.Kind == yaml.SequenceNode {
				p = fmt.Sprintf("%s[%d]", path, i)
			}
			if it.Kind != yaml.ScalarNode || isNull(it) {
				errs = append(errs, &ConfigError{Line: it.Line, Column: it.Column, Path: p, Message: "expected a string"})
				continue
			}
			if s.Kind == KindTemplateList {
				v.list = append(v.list, it.Value)
				continue
			}
			text, ref, err := r.resolve(it.Value)
			if err != nil {
				errs = append(errs, &ConfigError{Line: it.Line, Column: it.Column, Path: p, Message: err.Error()})
				continue
			}
			v.noteRef(it.Value, ref)
			v.list = append(v.list, text)
		}
		if len(items) == 0 {
			errs = append(errs, &ConfigError{Line: n.Line, Column: n.Column, Path: path, Message: "must not be empty"})
		}
		return v, errs
	case KindStringMap:
		if n.Kind != yaml.MappingNode {
			return fail(n, path, "expected a mapping of names to strings")
		}
		v.m = map[string]string{}
		var errs []*ConfigError
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, vn := n.Content[i], deref(n.Content[i+1])
			p := path + "." + k.Value
			if vn.Kind != yaml.ScalarNode || isNull(vn) {
				errs = append(errs, &ConfigError{Line: vn.Line, Column: vn.Column, Path: p, Message: "expected a string"})
				continue
			}
			text, ref, err := r.resolve(vn.Value)
			if err != nil {
				errs = append(errs, &ConfigError{Line: vn.Line, Column: vn.Column, Path: p, Message: err.Error()})
				continue
			}
			v.noteRef(vn.Value, ref)
			v.m[k.Value] = text
		}
		return v, errs
	}
	if n.Kind != yaml.ScalarNode {
		return fail(n, path, "expected a %s, got a %s", s.Kind, nodeKind(n))
	}
	if s.Kind.IsTemplate() {
		v.s = n.Value
		return v, nil
	}
	text, ref, err := r.resolve(n.Value)
	if err != nil {
		return fail(n, path, "%s", err)
	}
	v.noteRef(n.Value, ref)
	if v.unresolved {
		// A placeholder: nothing to validate.
		if s.Kind == KindSecret {
			v.secret = Secret{v: text}
		}
		v.s = text
		return v, nil
	}
	if err := s.parseScalar(v, text); err != nil {
		if v.fromRef {
			// Never echo a referenced value: it may be a secret.
			return fail(n, path, "value of %s: %s", n.Value, redactedReason(s))
		}
		return fail(n, path, "%s", err)
	}
	return v, nil
}

func (v *Value) noteRef(written string, r refResult) {
	if r.ref {
		v.fromRef = true
		v.ref = written
	}
	if r.unresolved {
		v.unresolved = true
	}
}

func redactedReason(s *Setting) string {
	switch s.Kind {
	case KindURL:
		return "not an absolute http(s) URL (value not shown)"
	case KindEnum:
		return "not one of " + strings.Join(s.Enum, ", ") + " (value not shown)"
	case KindSecret:
		return "empty"
	}
	return "not a valid " + s.Kind.String() + " (value not shown)"
}

func nodeKind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	}
	return "scalar"
}

// parseScalar parses text (already resolved) into v by the setting's kind.
func (s *Setting) parseScalar(v *Value, text string) error {
	switch s.Kind {
	case KindString, KindTemplate, KindHTMLTemplate:
		v.s = text
	case KindSecret:
		if text == "" {
			return errors.New("must not be empty")
		}
		v.secret = Secret{v: text}
	case KindInt:
		i, err := strconv.ParseInt(text, 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not an integer", text)
		}
		v.i = i
	case KindBool:
		switch strings.ToLower(text) {
		case "true":
			v.b = true
		case "false":
			v.b = false
		default:
			return fmt.Errorf("%q is not true or false", text)
		}
	case KindDuration:
		d, err := time.ParseDuration(text)
		if err != nil || d < 0 {
			return fmt.Errorf("%q is not a duration like 10s or 1m30s", text)
		}
		v.d = d
	case KindEnum:
		for _, e := range s.Enum {
			if text == e {
				v.s = text
				return nil
			}
		}
		msg := fmt.Sprintf("%q is not one of %s", text, strings.Join(s.Enum, ", "))
		if sg := Suggest(text, s.Enum); sg != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", sg)
		}
		return errors.New(msg)
	case KindURL:
		u, err := url.Parse(text)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%q is not an absolute http(s) URL", text)
		}
		v.s = text
	default:
		return fmt.Errorf("%s has no scalar form", s.Kind)
	}
	return nil
}

type refResult struct{ ref, unresolved bool }

// resolve expands the references of one written value.
func (r *Resolver) resolve(s string) (string, refResult, error) {
	if strings.HasPrefix(s, "file:") {
		path := strings.TrimSpace(s[len("file:"):])
		if path == "" {
			return "", refResult{}, errors.New("file: reference without a path")
		}
		if !filepath.IsAbs(path) {
			path = filepath.Join(r.Dir, path)
		}
		if r.SkipSecrets {
			return "[unresolved]", refResult{ref: true, unresolved: true}, nil
		}
		if r.ReadFile == nil {
			return "", refResult{}, errors.New("file: references are not available here")
		}
		b, err := r.ReadFile(path)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return "", refResult{}, fmt.Errorf("file: reference: cannot read %s: %v", path, err)
		}
		if len(b) > maxSecretFile {
			return "", refResult{}, fmt.Errorf("file: reference: %s is larger than %d bytes", path, maxSecretFile)
		}
		text := strings.TrimRight(string(b), "\r\n")
		if text == "" {
			return "", refResult{}, fmt.Errorf("file: reference: %s is empty", path)
		}
		return text, refResult{ref: true}, nil
	}
	if !strings.Contains(s, "$") {
		return s, refResult{}, nil
	}
	lookup := r.LookupEnv
	var out strings.Builder
	var res refResult
	for i := 0; i < len(s); {
		switch {
		case strings.HasPrefix(s[i:], "$${"):
			out.WriteString("${")
			i += 3
		case strings.HasPrefix(s[i:], "${"):
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return "", refResult{}, errors.New("unclosed ${ reference (write $${ for a literal ${)")
			}
			name := s[i+2 : i+end]
			if !validEnvName(name) {
				return "", refResult{}, fmt.Errorf("${%s}: not a valid environment variable name", name)
			}
			res.ref = true
			if r.SkipSecrets {
				res.unresolved = true
				out.WriteString("[unresolved]")
			} else {
				if lookup == nil {
					return "", refResult{}, errors.New("environment references are not available here")
				}
				val, ok := lookup(name)
				if !ok {
					return "", refResult{}, fmt.Errorf("environment variable %s is not set", name)
				}
				out.WriteString(val)
			}
			i += end + 1
		default:
			out.WriteByte(s[i])
			i++
		}
	}
	return out.String(), res, nil
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// Suggest returns the candidate closest to word when it is close enough
// to be a likely typo, or "".
func Suggest(word string, candidates []string) string {
	best, bestD := "", -1
	limit := 2
	if len(word) <= 4 {
		limit = 1
	}
	lw := strings.ToLower(word)
	for _, c := range candidates {
		d := distance(lw, strings.ToLower(c))
		if d <= limit && (bestD < 0 || d < bestD || (d == bestD && c < best)) {
			best, bestD = c, d
		}
	}
	if best == word {
		return ""
	}
	return best
}

// distance is the Levenshtein distance of a and b (runes), capped work for
// long inputs.
func distance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	if len(ra) > 64 || len(rb) > 64 {
		if a == b {
			return 0
		}
		return 1 << 20
	}
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}
