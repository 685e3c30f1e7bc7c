package routes

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/vm"
	"gopkg.in/yaml.v3"

	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/sinks"
)

// SystemFigures are the operator's figures of the whole hub over one
// sampling interval: what the admins' private-system channel carries
// every few seconds, and what the if: of an alert sees. Names are the
// JSON names; rates are per second unless the name says otherwise, and
// shares (error_rate) are between 0 and 1.
type SystemFigures struct {
	Time time.Time `json:"time" expr:"-"`
	// Interval is the length of the sample, in seconds.
	Interval float64 `json:"interval_seconds" expr:"interval_seconds"`
	// Requests are the authenticated API requests answered in the
	// interval; RequestRate is their rate per second.
	Requests    int64   `json:"requests" expr:"requests"`
	RequestRate float64 `json:"request_rate" expr:"request_rate"`
	// Errors are the answers with status 500 or more; ErrorRate their
	// share of Requests (0 without requests).
	Errors    int64   `json:"errors" expr:"errors"`
	ErrorRate float64 `json:"error_rate" expr:"error_rate"`
	// ClientErrors are the answers with status 400 to 499 (429 included);
	// ClientErrorRate their share.
	ClientErrors    int64   `json:"client_errors" expr:"client_errors"`
	ClientErrorRate float64 `json:"client_error_rate" expr:"client_error_rate"`
	// RateLimited are the requests refused with 429.
	RateLimited int64 `json:"rate_limited" expr:"rate_limited"`
	// Latency percentiles and maximum of the interval's requests, in
	// milliseconds (0 without requests).
	LatencyP50 float64 `json:"latency_p50_ms" expr:"latency_p50_ms"`
	LatencyP95 float64 `json:"latency_p95_ms" expr:"latency_p95_ms"`
	LatencyP99 float64 `json:"latency_p99_ms" expr:"latency_p99_ms"`
	LatencyMax float64 `json:"latency_max_ms" expr:"latency_max_ms"`
	// ActiveUsers made at least one request in the interval.
	ActiveUsers int64 `json:"active_users" expr:"active_users"`
	// BuildsPerMinute is the rate of finished builds.
	BuildsPerMinute float64 `json:"builds_per_minute" expr:"builds_per_minute"`
	BuildsRunning   int64   `json:"builds_running" expr:"builds_running"`
	// QueueDepth is how many builds wait to run.
	QueueDepth int64 `json:"queue_depth" expr:"queue_depth"`
	// DeliveryFailures are the failed delivery attempts of the interval
	// (webhooks, Slack, email, channels); DeliveryFailuresPerMinute their
	// rate.
	DeliveryFailures          int64   `json:"delivery_failures" expr:"delivery_failures"`
	DeliveryFailuresPerMinute float64 `json:"delivery_failures_per_minute" expr:"delivery_failures_per_minute"`
	// DeliveryBacklog is how many deliveries wait for an attempt.
	DeliveryBacklog int64 `json:"delivery_backlog" expr:"delivery_backlog"`
	// Connections are the open realtime (WebSocket) connections.
	Connections int64 `json:"connections" expr:"connections"`
}

// FigureNames lists the names an alert's if: can read, in order.
func FigureNames() []string {
	t := reflect.TypeOf(SystemFigures{})
	var out []string
	for i := 0; i < t.NumField(); i++ {
		if n := t.Field(i).Tag.Get("expr"); n != "-" {
			out = append(out, n)
		}
	}
	return out
}

// Alert severities.
var Severities = []string{"info", "warning", "critical"}

// AlertKeys are the keys of an entry of alerts:.
var AlertKeys = []string{"name", "if", "for", "severity", "summary"}

// MaxAlertFor bounds an alert's for:.
const MaxAlertFor = 24 * time.Hour

// Alert is one system threshold rule of the rules file's alerts: list.
// It fires (a system-alert event) once its condition has held for For,
// and recovers (a system-recovered event) when it no longer holds.
type Alert struct {
	// Name is unique in the file.
	Name string
	// If is the condition's source.
	If string
	// For is how long the condition must hold before the alert fires; 0
	// fires at the first sample where it holds.
	For time.Duration
	// Severity is info, warning (default) or critical.
	Severity string
	// Summary is the operator's text for the alert, may be empty.
	Summary string
	// Line is where the alert starts in the file.
	Line int
	prog *vm.Program
}

// Eval tells whether the alert's condition holds for f.
func (a *Alert) Eval(f *SystemFigures) (bool, error) {
	out, err := expr.Run(a.prog, f)
	if err != nil {
		return false, fmt.Errorf("alert %q: %w", a.Name, err)
	}
	ok, _ := out.(bool)
	return ok, nil
}

// Alerts returns the alerts of the file, in file order.
func (r *Rules) Alerts() []*Alert { return r.alerts }

func compileAlertCond(src string) (*vm.Program, error) {
	return expr.Compile(src, expr.Env(&SystemFigures{}), expr.AsBool())
}

func (l *loader) alerts(n *yaml.Node) {
	if isNull(n) {
		return
	}
	if n.Kind != yaml.SequenceNode {
		l.errf(n, "alerts", "expected a list of alerts, got %s", kindName(n))
		return
	}
	names := map[string]int{}
	for i, an := range n.Content {
		path := fmt.Sprintf("alerts[%d]", i)
		a := l.alert(path, an)
		if a == nil {
			continue
		}
		if first, ok := names[a.Name]; ok {
			l.errf(an, path+".name", "alert name %q already used (line %d)", a.Name, first)
			continue
		}
		names[a.Name] = an.Line
		l.r.alerts = append(l.r.alerts, a)
	}
}

func (l *loader) alert(path string, n *yaml.Node) *Alert {
	if n.Kind != yaml.MappingNode {
		l.errf(n, path, "an alert is a mapping with name, if, for, severity and summary, got %s", kindName(n))
		return nil
	}
	a := &Alert{Line: n.Line, Severity: "warning"}
	ok := true
	var ifN *yaml.Node
	for _, p := range pairs(n) {
		k, v := p[0], p[1]
		kp := join(path, k.Value)
		scalar := v.Kind == yaml.ScalarNode && !isNull(v)
		switch k.Value {
		case "name":
			if !scalar || strings.TrimSpace(v.Value) == "" {
				l.errf(v, kp, "an alert needs a name")
				ok = false
				continue
			}
			a.Name = v.Value
		case "if":
			ifN = v
		case "for":
			d, err := time.ParseDuration(v.Value)
			switch {
			case !scalar || err != nil:
				l.errf(v, kp, "%q is not a duration like 30s or 5m", v.Value)
				ok = false
			case d < 0 || d > MaxAlertFor:
				l.errf(v, kp, "must be between 0s and %s, got %s", MaxAlertFor, v.Value)
				ok = false
			}
			a.For = d
		case "severity":
			if !scalar || !slicesContains(Severities, v.Value) {
				msg := fmt.Sprintf("%q is not one of %s", v.Value, strings.Join(Severities, ", "))
				if s := sinks.Suggest(v.Value, Severities); s != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", s)
				}
				l.errf(v, kp, "%s", msg)
				ok = false
				continue
			}
			a.Severity = v.Value
		case "summary":
			if v.Kind != yaml.ScalarNode {
				l.errf(v, kp, "expected a string, got %s", kindName(v))
				ok = false
				continue
			}
			a.Summary = v.Value
		default:
			l.unknownKey(k, path, "alert key", AlertKeys)
			ok = false
		}
	}
	if a.Name == "" && !hasKey(n, "name") {
		l.errf(n, path, "an alert needs a name")
		ok = false
	}
	switch {
	case ifN == nil:
		l.errf(n, path, "an alert needs if: (a condition over the figures: %s)", strings.Join(FigureNames(), ", "))
		ok = false
	case ifN.Kind != yaml.ScalarNode || isNull(ifN) || strings.TrimSpace(ifN.Value) == "":
		l.errf(ifN, path+".if", "expected an expression")
		ok = false
	default:
		a.If = ifN.Value
		prog, err := compileAlertCond(ifN.Value)
		if err != nil {
			line, col, msg := exprErrorPosWith(ifN, err, figureMessage)
			l.el.add(line, col, path+".if", "%s", msg)
			ok = false
			break
		}
		a.prog = prog
		// A condition that cannot run on quiet figures (no requests, no
		// builds) would fail on real ones too.
		if _, err := expr.Run(prog, &SystemFigures{}); err != nil {
			first, _, _ := strings.Cut(err.Error(), "\n")
			l.errf(ifN, path+".if", "the condition fails on the figures of a quiet hub: %s", first)
			ok = false
		}
	}
	if !ok {
		return nil
	}
	return a
}

// figureMessage names the figures in expr's messages about unknown names.
func figureMessage(msg string) string {
	u := unknownName.FindStringSubmatch(msg)
	if u == nil {
		return msg
	}
	out := fmt.Sprintf("unknown figure %q", u[1])
	if s := sinks.Suggest(u[1], FigureNames()); s != "" {
		return out + fmt.Sprintf(" (did you mean %q?)", s)
	}
	return out + " (known: " + strings.Join(FigureNames(), ", ") + ")"
}

// sampleData is the body of the sample event of a type other than
// build-state-changed: the fields the hub really sends for the usage and
// system events, and message and count for every type.
func sampleData(typ string) json.RawMessage {
	const common = `"message":"sample","count":1`
	figures := `{"interval_seconds":5,"requests":120,"request_rate":24,"errors":7,"error_rate":0.058,` +
		`"latency_p50_ms":3.1,"latency_p95_ms":40,"latency_p99_ms":120,"queue_depth":3,"delivery_backlog":0}`
	alert := `"alert":"api-error-rate","severity":"critical","summary":"More than 5% of API requests fail.",` +
		`"condition":"error_rate > 0.05","for_seconds":300,"since":"2026-01-02T02:59:05Z","figures":` + figures
	switch typ {
	case event.TypeUsageThreshold:
		return json.RawMessage(`{` + common + `,"user_id":5,"user":"ann","token_id":12,"percent":80,"limit":600,"used":480,` +
			`"window_seconds":60,"window_start":"2026-01-02T03:04:00Z","reset_at":"2026-01-02T03:05:00Z"}`)
	case event.TypeAPIUsage:
		return json.RawMessage(`{` + common + `,"user_id":5,"interval_seconds":5,"requests":12,"errors":1,"limit":600,"remaining":588,` +
			`"reset":48,"tokens":[{"token_id":12,"requests":12,"errors":1,"limit":600,"remaining":588,"reset":48}],` +
			`"routes":[{"route":"GET /api/v1/projects","requests":12,"errors":1}]}`)
	case event.TypeSystemAlert:
		return json.RawMessage(`{` + common + `,` + alert + `}`)
	case event.TypeSystemRecovered:
		return json.RawMessage(`{` + common + `,` + alert + `,"fired_at":"2026-01-02T03:04:05Z",` +
			`"recovered_at":"2026-01-02T03:14:05Z","duration_seconds":600,"reason":"the condition no longer holds"}`)
	}
	return json.RawMessage(`{` + common + `}`)
}
