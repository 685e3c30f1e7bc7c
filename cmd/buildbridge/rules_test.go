package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/buildbridge/buildbridge/routes"
)

// runRules runs `buildbridge ARGS…` and returns stdout, stderr and the
// command's error.
func runRules(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), errOut.String(), err
}

func exitStatus(err error) int {
	if err == nil {
		return 0
	}
	return exitCode(err)
}

const examplePath = "../../rules.example.yaml"

var exampleSecrets = map[string]string{
	"PUSHER_SECRET": "pusher-secret-value", "SLACK_BOT_TOKEN": "xoxb-secret-value", "SMTP_PASSWORD": "smtp-secret-value",
	"DEPLOY_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "DEPLOY_TOKEN": "deploy-secret-value",
}

// TestRulesCheckExample is `rules check rules.example.yaml`, as make test
// runs it.
func TestRulesCheckExample(t *testing.T) {
	for k, v := range exampleSecrets {
		t.Setenv(k, v)
	}
	out, errOut, err := runRules(t, "", "rules", "check", examplePath)
	if err != nil {
		t.Fatalf("rules check failed: %v\n%s", err, errOut)
	}
	if !strings.HasPrefix(out, examplePath+": 6 sinks (") || strings.Count(out, "\n") != 1 {
		t.Fatalf("summary %q", out)
	}
	for _, v := range exampleSecrets {
		if strings.Contains(out+errOut, v) {
			t.Fatalf("a secret was printed: %s%s", out, errOut)
		}
	}
}

func TestRulesCheckWithoutSecrets(t *testing.T) {
	for k := range exampleSecrets {
		t.Setenv(k, "") // restored after the test
		os.Unsetenv(k)
	}
	_, errOut, err := runRules(t, "", "rules", "check", examplePath)
	if exitStatus(err) != 1 || strings.Count(errOut, "is not set") != len(exampleSecrets) {
		t.Fatalf("without the environment: %v\n%s", err, errOut)
	}
	if _, errOut, err := runRules(t, "", "rules", "check", "--skip-secrets", examplePath); err != nil {
		t.Fatalf("--skip-secrets: %v\n%s", err, errOut)
	}
}

func TestRulesCheckErrors(t *testing.T) {
	t.Setenv("TOKEN", "xoxb-never-printed")
	path := filepath.Join(t.TempDir(), "rules.yaml")
	os.WriteFile(path, []byte(`sinks:
  slack:
    type: slack
    token: ${TOKEN}
    chanel: "#builds"
  hook: {type: webhook, url: "${TOKEN}", secret: "${MISSING}"}
routes:
  - name: main
    match: {branch: "[main", if: "build.nope"}
    to:
      - slak
`), 0o644)
	out, errOut, err := runRules(t, "", "rules", "check", path)
	if exitStatus(err) != 1 {
		t.Fatalf("exit status %d (%v), want 1", exitStatus(err), err)
	}
	if out != "" {
		t.Errorf("stdout %q", out)
	}
	want := []string{
		path + `:5:5: sinks.slack.chanel: unknown setting "chanel" for a slack sink (did you mean "channel"?)`,
		path + `:6:30: sinks.hook.url: value of ${TOKEN}: not an absolute http(s) URL (value not shown)`,
		path + `:6:50: sinks.hook.secret: environment variable MISSING is not set`,
		path + `:9:21: routes[0].match.branch: bad pattern: pattern "[main" has an unclosed [`,
		path + `:9:41: routes[0].match.if: invalid expression: build has no field "nope"`,
		path + `:11:9: routes[0].to[0]: unknown sink "slak" (did you mean "slack"?)`,
	}
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if len(lines) != len(want) {
		t.Fatalf("stderr:\n%s", errOut)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d:\n got %s\nwant %s", i, lines[i], w)
		}
	}
	if err.Error() != path+": 6 errors" || strings.Contains(errOut, "never-printed") {
		t.Errorf("error %q / stderr %s", err, errOut)
	}
	if _, _, err := runRules(t, "", "rules", "check", filepath.Join(t.TempDir(), "none.yaml")); exitStatus(err) != 1 {
		t.Errorf("missing file: %v", err)
	}
}

func TestRulesTest(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "deliveries.log")
	rules := filepath.Join(dir, "rules.yaml")
	os.WriteFile(rules, []byte(`sinks:
  audit: {type: log, output: `+logPath+`}
routes:
  - name: breaks
    match: {status: [broken, fixed]}
    to: [{sink: audit, template: "{{.Project.Name}} {{.Build.Status}}"}]
  - name: releases
    match: {branch: "release/**"}
    to: [audit]
`), 0o644)
	ev := routes.SampleEvent()
	raw, _ := json.Marshal(ev)
	evPath := filepath.Join(dir, "event.json")
	os.WriteFile(evPath, raw, 0o644)

	for _, args := range [][]string{
		{"rules", "test", rules, "--event", evPath},
		{"rules", "test", rules, "--event", "-"},
		{"rules", "test", rules},
	} {
		out, errOut, err := runRules(t, string(raw), args...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, errOut)
		}
		for _, w := range []string{
			"event evt_sample_broken build-state-changed project app (owner 5): #42 on main, FINISHED failed (status broken)",
			"  MATCH (user channel)\n        → realtime private-user-5 build-state-changed [delivery 1]",
			"  MATCH breaks\n        → audit default [delivery 2]",
			`  no    releases: branch "main" does not match "release/**"`,
			"Deliveries (2; nothing was sent):",
			"[2] audit (log) → default   (route breaks)\n    level: info\n    content-type: text/plain; charset=utf-8\n    body:\n      app broken",
			`"owner_id":5`,
		} {
			if !strings.Contains(out, w) {
				t.Errorf("%v: output lacks %q:\n%s", args, w, out)
			}
		}
	}
	if _, err := os.Stat(logPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("rules test delivered something: %v", err)
	}

	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"type":"build-state-changed","bulid":{}}`), 0o644)
	if _, _, err := runRules(t, "", "rules", "test", rules, "--event", bad); exitStatus(err) != 2 || !strings.Contains(err.Error(), `unknown field "bulid"`) {
		t.Errorf("bad event: %v", err)
	}
}

func TestRulesSchema(t *testing.T) {
	out, _, err := runRules(t, "", "rules", "schema")
	if err != nil {
		t.Fatal(err)
	}
	var s map[string]any
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	defs, _ := s["$defs"].(map[string]any)
	for _, typ := range []string{"sink_pusher", "sink_slack", "sink_email", "sink_webhook", "sink_log", "route", "match"} {
		if _, ok := defs[typ]; !ok {
			t.Errorf("schema lacks %s", typ)
		}
	}
}
