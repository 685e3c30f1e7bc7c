package sinks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func node(t *testing.T, src string) *yaml.Node {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
		t.Fatal(err)
	}
	return doc.Content[0]
}

func env(m map[string]string) *Resolver {
	return &Resolver{LookupEnv: func(k string) (string, bool) { v, ok := m[k]; return v, ok }, ReadFile: os.ReadFile}
}

func decode(t *testing.T, typ, src string, r *Resolver) (*Config, []*ConfigError) {
	t.Helper()
	tp, ok := Lookup(typ)
	if !ok {
		t.Fatalf("type %s not registered", typ)
	}
	return tp.Decode("s", node(t, src), r)
}

func errText(errs []*ConfigError) string {
	var b strings.Builder
	for _, e := range errs {
		b.WriteString(e.Error())
		b.WriteString("\n")
	}
	return b.String()
}

const whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

func TestBuiltinTypesRegistered(t *testing.T) {
	for _, name := range []string{"pusher", "slack", "email", "webhook"} {
		tp, ok := Lookup(name)
		if !ok {
			t.Fatalf("%s not registered", name)
		}
		if tp.New != nil {
			t.Errorf("%s: the spec in package sinks has no implementation", name)
		}
		if err := tp.validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

type nopSink struct{ closed bool }

func (s *nopSink) Deliver(context.Context, Delivery) error { return nil }
func (s *nopSink) Close() error                            { s.closed = true; return nil }

func TestRegisterCompletesASpecOnce(t *testing.T) {
	spec := Type{Name: "test-completes", Settings: []Setting{{Name: "x", Kind: KindString}}}
	Register(spec)
	cfg, errs := spec.Decode("one", node(t, "type: test-completes\nx: y\n"), env(nil))
	if len(errs) > 0 {
		t.Fatal(errText(errs))
	}
	if _, err := New(cfg); !errors.Is(err, ErrNotImplemented) {
		t.Fatalf("New on a spec-only type: %v", err)
	}
	full, _ := Lookup("test-completes")
	full.New = func(c *Config) (Sink, error) { return &nopSink{}, nil }
	Register(full)
	s, err := New(cfg)
	if err != nil || s == nil {
		t.Fatalf("New after completion: %v", err)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("a second implementation of a type did not panic")
		}
	}()
	Register(full)
}

func TestRegisterRefusesBadSpecs(t *testing.T) {
	bad := []Type{
		{},
		{Name: "t1", Settings: []Setting{{Name: "type", Kind: KindString}}},
		{Name: "t2", Settings: []Setting{{Name: "a"}, {Name: "a"}}},
		{Name: "t3", Settings: []Setting{{Name: "n", Kind: KindInt, Default: "x"}}},
		{Name: "t4", Settings: []Setting{{Name: "e", Kind: KindEnum}}},
		{Name: "t5", Settings: []Setting{{Name: "s", Kind: KindSecret, Override: true}}},
		{Name: "t6", Settings: []Setting{{Name: "s", Kind: KindString, Role: RoleBody}}},
	}
	for i, tp := range bad {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("case %d: Register accepted %+v", i, tp)
				}
			}()
			Register(tp)
		}()
	}
}

func TestDecodeErrors(t *testing.T) {
	cases := []struct {
		typ, src string
		want     []string
	}{
		{"slack", "type: slack\ntoken: ${T}\nchanel: '#x'\n", []string{`3:1: chanel: unknown setting "chanel" for a slack sink (did you mean "channel"?)`}},
		{"slack", "type: slack\n", []string{"token: a slack sink needs token"}},
		{"slack", "type: slack\ntoken: ${T}\nwebhook_url: ${U}\n", []string{"set token or webhook_url, not both"}},
		{"email", "type: email\nhost: h\nfrom: a@b.c\nport: x\n", []string{`4:7: port: "x" is not an integer`}},
		{"email", "type: email\nhost: h\nfrom: a@b.c\nport: 0\n", []string{"port: must be between 1 and 65535"}},
		{"email", "type: email\nhost: h\nfrom: a@b.c\ntls: startls\n", []string{`tls: "startls" is not one of starttls, tls, none (did you mean "starttls"?)`}},
		{"email", "type: email\nfrom: nobody\n", []string{"host: required setting missing"}},
		{"email", "type: email\nhost: h\nfrom: nobody\n", []string{`from: "nobody" is not an email address`}},
		{"email", "type: email\nhost: h\nfrom: a@b.c\nto: {a: b}\n", []string{"to: expected a string"}},
		{"webhook", "type: webhook\nurl: ftp://x\nsecret: ${S}\n", []string{`url: "ftp://x" is not an absolute http(s) URL`}},
		{"webhook", "type: webhook\nurl: https://x\nsecret: ${BAD}\n", []string{"secret: must be whsec_"}},
		{"webhook", "type: webhook\nurl: https://x\nsecret: ${S}\nheaders: {webhook-id: x, 'a b': c}\n", []string{"webhook-id is set by the webhook sink", `"a b" is not a valid header name`}},
		{"webhook", "type: webhook\nurl: https://x\nsecret: ${S}\ntimeout: soon\n", []string{`timeout: "soon" is not a duration`}},
		{"webhook", "type: webhook\nurl: [a]\nsecret: ${S}\n", []string{"url: expected a URL, got a list"}},
		{"webhook", "type: webhook\nurl: https://x\nsecret:\n", []string{"secret: needs a value"}},
		{"pusher", "type: pusher\nhost: p.example.com\n", []string{"app_id: required for an external", "key: required", "secret: required"}},
		{"pusher", "type: pusher\nkey: k\n", []string{"key: only used with an external server"}},
		{"pusher", "type: pusher\nsecure: maybe\n", []string{`secure: "maybe" is not true or false`}},
		{"slack", "type: slack\ntoken: ${NOPE}\n", []string{"token: environment variable NOPE is not set"}},
		{"slack", "type: slack\ntoken: ${1X}\n", []string{"${1X}: not a valid environment variable name"}},
		{"slack", "type: slack\ntoken: ${T\n", []string{"unclosed ${"}},
		{"slack", "type: slack\ntoken: 'file:'\n", []string{"file: reference without a path"}},
		{"slack", "type: slack\ntoken: file:/nonexistent/tok\n", []string{"cannot read /nonexistent/tok: no such file or directory"}},
		{"slack", "type: slack\ntoken: ${EMPTY}\n", []string{"token: value of ${EMPTY}: empty"}},
	}
	r := env(map[string]string{"T": "xoxb-1", "U": "https://hooks.slack.com/x", "S": whsec, "BAD": "nope", "EMPTY": ""})
	for _, c := range cases {
		_, errs := decode(t, c.typ, c.src, r)
		got := errText(errs)
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s %q:\n got %s\nwant %s", c.typ, c.src, got, w)
			}
		}
		if len(errs) != len(c.want) {
			t.Errorf("%s %q: %d errors, want %d:\n%s", c.typ, c.src, len(errs), len(c.want), got)
		}
	}
}

func TestDecodeValuesAndReferences(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "pw"), []byte("s3cret-from-file\n"), 0o600)
	r := env(map[string]string{"HOST": "smtp.example.com", "PORT": "465", "USER": "ci"})
	r.Dir = dir
	c, errs := decode(t, "email", `
type: email
host: ${HOST}
port: ${PORT}
tls: tls
username: ${USER}@example.com
password: file:pw
from: "CI <ci@example.com>"
to: [a@example.com, "{{.Build.AuthorEmail}}"]
subject: "costs $${HOME} nothing"
`, r)
	if len(errs) > 0 {
		t.Fatal(errText(errs))
	}
	if c.Text("host") != "smtp.example.com" || c.Int("port") != 465 || c.Text("tls") != "tls" ||
		c.Text("username") != "ci@example.com" || c.Secret("password").Reveal() != "s3cret-from-file" {
		t.Fatalf("decoded %q %d %q %q", c.Text("host"), c.Int("port"), c.Text("tls"), c.Text("username"))
	}
	if !c.Value("host").FromReference() || c.Value("from").FromReference() {
		t.Error("FromReference wrong")
	}
	if got := c.List("to"); len(got) != 2 || got[1] != "{{.Build.AuthorEmail}}" {
		t.Errorf("to = %q", got)
	}
	// Templates are not interpolated: ${ stays for the template to print.
	if c.Text("subject") != "costs $${HOME} nothing" {
		t.Errorf("subject = %q", c.Text("subject"))
	}
	if c.Text("template") != EmailText || c.IsSet("template") {
		t.Error("default template not applied")
	}
	if len(c.Warnings) != 0 {
		t.Errorf("warnings for referenced secrets: %v", c.Warnings)
	}
	// A literal $${ in a plain setting is one literal ${.
	c2, errs := decode(t, "slack", "type: slack\ntoken: ${T}\nusername: 'a $${b}'\n", env(map[string]string{"T": "x"}))
	if len(errs) > 0 || c2.Text("username") != "a ${b}" {
		t.Fatalf("escape: %q %v", c2.Text("username"), errText(errs))
	}
}

func TestInlineSecretWarns(t *testing.T) {
	c, errs := decode(t, "slack", "type: slack\ntoken: xoxb-inline-value\nchannel: '#x'\n", env(nil))
	if len(errs) > 0 {
		t.Fatal(errText(errs))
	}
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0].Error(), "token: secret written inline") {
		t.Fatalf("warnings = %v", c.Warnings)
	}
	if strings.Contains(c.Warnings[0].Error(), "xoxb-inline-value") {
		t.Fatal("warning shows the secret")
	}
}

func TestSkipSecrets(t *testing.T) {
	r := &Resolver{SkipSecrets: true}
	c, errs := decode(t, "webhook", "type: webhook\nurl: ${URL}\nsecret: file:/run/secrets/hook\n", r)
	if len(errs) > 0 {
		t.Fatal(errText(errs))
	}
	if !c.Value("url").Unresolved() || !c.Value("secret").Unresolved() {
		t.Fatal("references should stay unresolved")
	}
	if _, errs := decode(t, "webhook", "type: webhook\nurl: ${1}\nsecret: x\n", r); len(errs) == 0 {
		t.Fatal("a malformed reference must still be an error")
	}
}

// TestSecretsNeverPrinted checks every way a secret could leak: errors,
// warnings, fmt, JSON and slog.
func TestSecretsNeverPrinted(t *testing.T) {
	const secret = "TOPSECRET-4f1c"
	r := env(map[string]string{"S": secret, "U": "https://" + secret + ".example.com/hook", "P": secret})
	c, errs := decode(t, "webhook", "type: webhook\nurl: ${U}\nsecret: ${S}\nheaders: {Authorization: 'Bearer ${P}'}\n", r)
	var out strings.Builder
	out.WriteString(errText(errs))
	fmt.Fprintf(&out, "%v %+v %#v %s\n", c, c, c.Secret("secret"), c.Secret("secret"))
	b, _ := json.Marshal(map[string]any{"s": c.Secret("secret")})
	out.Write(b)
	h := slog.NewTextHandler(&out, nil)
	slog.New(h).Info("x", "sink", c, "secret", c.Secret("secret"))
	tp, _ := Lookup("webhook")
	target, err := tp.Target(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	out.WriteString(target)
	// Errors about referenced values do not show them either.
	_, errs = decode(t, "webhook", "type: webhook\nurl: ${S}\nsecret: ${S}\n", r)
	out.WriteString(errText(errs))
	_, errs = decode(t, "email", "type: email\nhost: h\nfrom: ${S}\nport: ${S}\n", r)
	out.WriteString(errText(errs))
	if strings.Contains(out.String(), secret) {
		t.Fatalf("secret printed:\n%s", out.String())
	}
	if !strings.HasPrefix(target, "sha256:") {
		t.Errorf("target of a referenced URL = %q, want a hash", target)
	}
	if c.Secret("secret").Reveal() != secret {
		t.Error("Reveal lost the value")
	}
}

func TestOverrides(t *testing.T) {
	tp, _ := Lookup("slack")
	c, errs := tp.Decode("team", node(t, "type: slack\ntoken: ${T}\nchannel: '#builds'\n"), env(map[string]string{"T": "x"}))
	if len(errs) > 0 {
		t.Fatal(errText(errs))
	}
	o, errs := tp.DecodeOverrides(node(t, "sink: team\nchannel: '#ops'\n"), env(nil), "sink")
	if len(errs) > 0 {
		t.Fatal(errText(errs))
	}
	if c.Effective(o, "channel").Text() != "#ops" || c.Effective(nil, "channel").Text() != "#builds" {
		t.Fatal("Effective does not prefer the override")
	}
	if c.Effective(o, "template").Text() != SlackTemplate {
		t.Fatal("Effective does not fall back to the default")
	}
	_, errs = tp.DecodeOverrides(node(t, "sink: team\ntoken: x\nchanell: y\n"), env(nil), "sink")
	got := errText(errs)
	for _, w := range []string{"token cannot be set per route", `unknown key "chanell" for a slack sink in to: (did you mean "channel"?)`} {
		if !strings.Contains(got, w) {
			t.Errorf("got %s, want %s", got, w)
		}
	}
}

func TestTargets(t *testing.T) {
	r := env(map[string]string{"T": "x", "S": whsec})
	cases := []struct {
		typ, src string
		params   map[string]string
		want     string
		err      string
	}{
		{"pusher", "type: pusher", map[string]string{"channel": "private-project-3", "event": "build-state-changed"}, "private-project-3 build-state-changed", ""},
		{"pusher", "type: pusher", map[string]string{"event": "e"}, "", "no channel"},
		{"pusher", "type: pusher", map[string]string{"channel": "bad channel", "event": "e"}, "", `has the character ' '`},
		{"pusher", "type: pusher", map[string]string{"channel": strings.Repeat("a", 165), "event": "e"}, "", "longer than 164"},
		{"slack", "type: slack\ntoken: ${T}", map[string]string{"channel": "#ops"}, "#ops", ""},
		{"slack", "type: slack\ntoken: ${T}", map[string]string{}, "", "no channel"},
		{"slack", "type: slack\nwebhook_url: https://hooks.slack.com/services/x", map[string]string{}, "webhook", ""},
		{"email", "type: email\nhost: h\nfrom: a@b.c", map[string]string{"to": "B@x.org, a@y.org, b@x.org"}, "a@y.org,b@x.org", ""},
		{"email", "type: email\nhost: h\nfrom: a@b.c", map[string]string{"to": ""}, "", "no recipients"},
		{"email", "type: email\nhost: h\nfrom: a@b.c", map[string]string{"to": "not an address"}, "", "recipients"},
		{"webhook", "type: webhook\nurl: https://x.example/h\nsecret: ${S}", nil, "https://x.example/h", ""},
	}
	for _, c := range cases {
		cfg, errs := decode(t, c.typ, c.src, r)
		if len(errs) > 0 {
			t.Fatalf("%s: %s", c.src, errText(errs))
		}
		tp := cfg.TypeSpec()
		got, err := tp.Target(cfg, c.params)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s %v: err %v, want %q", c.typ, c.params, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s %v: %q, %v; want %q", c.typ, c.params, got, err, c.want)
		}
	}
}

func TestSuggest(t *testing.T) {
	cands := []string{"slack", "email", "webhook", "pusher", "log", "channel", "template"}
	for word, want := range map[string]string{"slak": "slack", "emial": "email", "webhok": "webhook",
		"chanel": "channel", "templte": "template", "zzz": "", "slack": "", "Slack": "slack", "lgo": ""} {
		if got := Suggest(word, cands); got != want {
			t.Errorf("Suggest(%q) = %q, want %q", word, got, want)
		}
	}
}
