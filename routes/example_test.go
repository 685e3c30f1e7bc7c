package routes

import (
	"encoding/json"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/sinks"
)

const examplePath = "../rules.example.yaml"

// ExampleEnv holds fake values for the secrets rules.example.yaml refers to.
var exampleEnv = map[string]string{
	"PUSHER_SECRET": "pusher-secret", "SLACK_BOT_TOKEN": "xoxb-example", "SMTP_PASSWORD": "smtp-password",
	"DEPLOY_WEBHOOK_SECRET": testWHSec, "DEPLOY_TOKEN": "deploy-token",
}

func loadExample(t *testing.T) *Rules {
	t.Helper()
	opts := testOptions()
	opts.LookupEnv = func(k string) (string, bool) { v, ok := exampleEnv[k]; return v, ok }
	r, err := Load(examplePath, opts)
	if err != nil {
		t.Fatalf("rules.example.yaml is refused:\n%v", err)
	}
	if w := r.Warnings(); len(w) > 0 {
		t.Errorf("rules.example.yaml has warnings: %v", w)
	}
	return r
}

func TestExampleLoads(t *testing.T) {
	r := loadExample(t)
	if r.UserSink() != "realtime" {
		t.Errorf("user sink %q", r.UserSink())
	}
	// It also checks without the secrets (rules check --skip-secrets).
	if _, err := Load(examplePath, Options{SkipSecrets: true}); err != nil {
		t.Fatalf("--skip-secrets: %v", err)
	}
	// And it refuses to load without them, naming each missing variable.
	_, err := Load(examplePath, Options{LookupEnv: func(string) (string, bool) { return "", false }})
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != len(exampleEnv) {
		t.Fatalf("without the environment: %v", err)
	}
}

// TestExampleDocumentsEverything proves that every sink type, setting,
// match key, notify mode and event type appears in rules.example.yaml.
func TestExampleDocumentsEverything(t *testing.T) {
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Sinks  map[string]map[string]any `yaml:"sinks"`
		Routes []struct {
			Match  map[string]any `yaml:"match"`
			Notify string         `yaml:"notify"`
			To     any            `yaml:"to"`
		} `yaml:"routes"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	usedTypes := map[string]bool{}
	for _, s := range doc.Sinks {
		usedTypes[s["type"].(string)] = true
	}
	usedKeys, usedNotify := map[string]bool{}, map[string]bool{"always": true} // always is the default
	for _, r := range doc.Routes {
		for k := range r.Match {
			usedKeys[k] = true
		}
		usedNotify[r.Notify] = true
	}
	for _, tp := range sinks.Types() {
		if strings.HasPrefix(tp.Name, "test-") {
			continue // registered by other tests of this binary
		}
		if !usedTypes[tp.Name] {
			t.Errorf("sink type %s is not used in the example", tp.Name)
		}
		for _, s := range tp.Settings {
			if !regexp.MustCompile(`\b` + s.Name + `\b`).Match(data) {
				t.Errorf("setting %s of %s is not in the example", s.Name, tp.Name)
			}
		}
	}
	for _, k := range MatchKeys {
		if !usedKeys[k] {
			t.Errorf("match key %s is not used in the example", k)
		}
	}
	for _, n := range NotifyModes {
		if !usedNotify[n] {
			t.Errorf("notify %s is not used in the example", n)
		}
	}
	for _, e := range KnownEvents {
		if !strings.Contains(string(data), e) {
			t.Errorf("event type %s is not in the example", e)
		}
	}
	for _, s := range builds.AllStatuses {
		if !strings.Contains(string(data), string(s)) {
			t.Errorf("status %s is not in the example", s)
		}
	}
	for f := range Funcs {
		if !regexp.MustCompile(`\b` + f + `\b`).Match(data) {
			t.Errorf("template function %s is not in the example", f)
		}
	}
}

func TestExampleRoutesDoWhatTheySay(t *testing.T) {
	r := loadExample(t)
	routesOf := func(b build) []string {
		var out []string
		for _, d := range r.Match(b.event()) {
			out = append(out, d.Route+">"+d.Sink)
		}
		return out
	}
	cases := []struct {
		b    build
		want []string
	}{
		{build{result: builds.Failed, prev: builds.Passed}, []string{"(user channel)>realtime",
			"main-breaks-and-fixes>team-slack", "main-breaks-and-fixes>email", "audit-everything>audit"}},
		{build{result: builds.Passed, prev: builds.Passed, durationMS: 1000}, []string{"(user channel)>realtime",
			"deploy-and-wall>deploy-hook", "deploy-and-wall>realtime", "deploy-and-wall>pusher-cloud", "audit-everything>audit"}},
		{build{branch: "feature/x", result: builds.Failed, email: "bob@example.com", author: "Bob"}, []string{"(user channel)>realtime",
			"tell-the-author>email", "audit-everything>audit"}},
		{build{project: "legacy", result: builds.Canceled}, []string{"(user channel)>realtime", "canceled>audit"}},
	}
	for _, c := range cases {
		got := routesOf(c.b)
		if strings.Join(got, " ") != strings.Join(c.want, " ") {
			t.Errorf("%+v:\n got %v\nwant %v", c.b, got, c.want)
		}
	}
}

func TestSchema(t *testing.T) {
	b, err := Schema()
	if err != nil {
		t.Fatal(err)
	}
	var s struct {
		Schema string `json:"$schema"`
		Defs   map[string]struct {
			Properties map[string]json.RawMessage `json:"properties"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	for _, tp := range []string{"pusher", "slack", "email", "webhook", "log"} {
		def, ok := s.Defs["sink_"+tp]
		if !ok {
			t.Fatalf("no schema for %s", tp)
		}
		spec, _ := sinks.Lookup(tp)
		for _, st := range spec.Settings {
			if _, ok := def.Properties[st.Name]; !ok {
				t.Errorf("%s.%s missing from the schema", tp, st.Name)
			}
		}
	}
	for _, k := range MatchKeys {
		if _, ok := s.Defs["match"].Properties[k]; !ok {
			t.Errorf("match.%s missing from the schema", k)
		}
	}
	if !strings.Contains(s.Schema, "2020-12") {
		t.Errorf("$schema %q", s.Schema)
	}
}

// TestSecretsStayOut loads files whose secrets come from the environment
// and checks that no output of the package shows them.
func TestSecretsStayOut(t *testing.T) {
	const secret = "S3CR3T-value-9d2e"
	env := map[string]string{"TOKEN": secret, "HOOK": "https://hooks.example.com/" + secret, "WH": testWHSec, "PW": secret}
	opts := testOptions()
	opts.LookupEnv = func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	good := `
sinks:
  s: {type: slack, token: "${TOKEN}", channel: "#b"}
  h: {type: webhook, url: "${HOOK}", secret: "${WH}", headers: {Authorization: "Bearer ${TOKEN}"}}
  m: {type: email, host: smtp.example.com, username: u, password: "${PW}", from: ci@example.com, to: a@example.com}
routes:
  - name: r
    to: [s, h, m]
`
	var out strings.Builder
	r, err := Parse("rules.yaml", []byte(good), opts)
	if err != nil {
		t.Fatal(err)
	}
	out.WriteString(r.Summary())
	x := r.Explain(SampleEvent())
	for _, d := range x.Deliveries {
		b, _ := json.Marshal(d)
		out.Write(b)
		out.WriteString(d.Target)
	}
	b, _ := json.Marshal(x)
	out.Write(b)
	// Errors about referenced values do not show them.
	bad := `
sinks:
  h: {type: webhook, url: "${TOKEN}", secret: "${TOKEN}"}
  m: {type: email, host: h, from: "${TOKEN}", port: "${TOKEN}", tls: "${TOKEN}"}
  w: {type: slack, webhook_url: "${TOKEN}"}
routes:
  - name: r
    to: [h, m, w]
`
	_, err = Parse("rules.yaml", []byte(bad), opts)
	if err == nil {
		t.Fatal("bad file accepted")
	}
	out.WriteString(err.Error())
	if strings.Contains(out.String(), secret) {
		t.Fatalf("a secret was printed:\n%s", out.String())
	}
	if n := strings.Count(err.Error(), "value not shown"); n < 4 {
		t.Errorf("expected errors about hidden values, got:\n%v", err)
	}
}
