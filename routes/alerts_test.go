package routes

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/event"
)

func TestAlerts(t *testing.T) {
	r := mustParse(t, `
sinks:
  l: {type: log}
routes:
  - name: ops
    match: {event: [system-alert, system-recovered]}
    to: [l]
alerts:
  - name: errors
    if: error_rate > 0.05 && requests >= 20
    for: 5m
    severity: critical
    summary: API errors
  - name: queue
    if: queue_depth > 100
`)
	as := r.Alerts()
	if len(as) != 2 {
		t.Fatalf("alerts: %d", len(as))
	}
	a, q := as[0], as[1]
	if a.Name != "errors" || a.For != 5*time.Minute || a.Severity != "critical" || a.Summary != "API errors" || a.Line != 9 ||
		a.If != "error_rate > 0.05 && requests >= 20" {
		t.Errorf("first alert: %+v", a)
	}
	if q.For != 0 || q.Severity != "warning" || q.Summary != "" {
		t.Errorf("defaults: %+v", q)
	}
	for _, c := range []struct {
		f    SystemFigures
		a, q bool
	}{
		{SystemFigures{}, false, false},
		{SystemFigures{Requests: 25, ErrorRate: 0.06}, true, false},
		{SystemFigures{Requests: 19, ErrorRate: 0.5, QueueDepth: 101}, false, true},
	} {
		gotA, err := a.Eval(&c.f)
		if err != nil {
			t.Fatal(err)
		}
		gotQ, _ := q.Eval(&c.f)
		if gotA != c.a || gotQ != c.q {
			t.Errorf("%+v: %v %v, want %v %v", c.f, gotA, gotQ, c.a, c.q)
		}
	}
	if s := r.Summary(); !strings.Contains(s, "1 route, 2 alerts;") {
		t.Errorf("summary %q", s)
	}
	if s := mustParse(t, "routes: []\n").Summary(); strings.Contains(s, "alert") {
		t.Errorf("summary without alerts %q", s)
	}
	// alerts: may be empty.
	if r := mustParse(t, "alerts:\n"); len(r.Alerts()) != 0 {
		t.Error("null alerts")
	}
	if _, err := Parse("r.yaml", []byte("alerts: {a: 1}\n"), testOptions()); err == nil || !strings.Contains(err.Error(), "expected a list of alerts") {
		t.Errorf("alerts as a mapping: %v", err)
	}
}

// TestFiguresJSON keeps the names an alert reads and the names the
// private-system channel carries the same.
func TestFiguresJSON(t *testing.T) {
	raw, err := json.Marshal(SystemFigures{})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(raw, &m)
	for _, n := range FigureNames() {
		if _, ok := m[n]; !ok {
			t.Errorf("figure %s has another JSON name", n)
		}
	}
	if len(m) != len(FigureNames())+1 { // + time
		t.Errorf("JSON has %d fields, figures %d", len(m), len(FigureNames()))
	}
}

// TestExampleDocumentsAlerts proves that rules.example.yaml shows every
// figure, alert key and severity, and that its alerts and usage routes
// load and do what they say.
func TestExampleDocumentsAlerts(t *testing.T) {
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	alertsPart := string(data[strings.Index(string(data), "─── Alerts"):])
	for _, words := range [][]string{FigureNames(), AlertKeys, Severities} {
		for _, w := range words {
			if !regexp.MustCompile(`\b` + w + `\b`).MatchString(alertsPart) {
				t.Errorf("%s is not in the example's alerts", w)
			}
		}
	}
	r := loadExample(t)
	if len(r.Alerts()) < 3 {
		t.Fatalf("example alerts: %d", len(r.Alerts()))
	}
	usage := func(percent int) []string {
		ev := event.Envelope{ID: "evt_u", Type: event.TypeUsageThreshold, Time: time.Now(),
			Data: json.RawMessage(`{"user_id":7,"user":"ann","percent":` + map[int]string{80: "80", 100: "100"}[percent] + `,"limit":10,"reset_at":"x"}`)}
		var out []string
		for _, d := range r.Match(ev) {
			out = append(out, d.Route+">"+d.Sink+">"+d.Params["channel"])
		}
		return out
	}
	if got := strings.Join(usage(80), " "); got != "usage-to-user>realtime>private-user-7 audit-everything>audit>" {
		t.Errorf("usage-threshold at 80%%: %s", got)
	}
	if got := strings.Join(usage(100), " "); got != "usage-to-user>realtime>private-user-7 usage-to-billing>deploy-hook> audit-everything>audit>" {
		t.Errorf("usage-threshold at 100%%: %s", got)
	}
}

func TestSchemaHasAlerts(t *testing.T) {
	b, err := Schema()
	if err != nil {
		t.Fatal(err)
	}
	var s struct {
		Properties map[string]json.RawMessage `json:"properties"`
		Defs       map[string]struct {
			Properties map[string]json.RawMessage `json:"properties"`
		} `json:"$defs"`
	}
	json.Unmarshal(b, &s)
	if _, ok := s.Properties["alerts"]; !ok {
		t.Fatal("no alerts in the schema")
	}
	for _, k := range AlertKeys {
		if _, ok := s.Defs["alert"].Properties[k]; !ok {
			t.Errorf("alert.%s missing from the schema", k)
		}
	}
}
