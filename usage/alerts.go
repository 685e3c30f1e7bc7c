package usage

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/routes"
)

// Evaluator holds the rules' alerts against the samples of a System, and
// says when one fires (system-alert) and when it recovers
// (system-recovered). It keeps each alert's state by name across reloads
// of the rules; an alert whose condition changed starts over.
type Evaluator struct {
	log *slog.Logger

	mu     sync.Mutex
	states map[string]*alertState
}

type alertState struct {
	cond     string
	since    time.Time // first sample of the current run where it held
	firing   bool
	firedAt  time.Time
	severity string
	summary  string
	forDur   time.Duration
}

// NewEvaluator makes an Evaluator; logger receives conditions that fail
// on a sample (default slog.Default()).
func NewEvaluator(logger *slog.Logger) *Evaluator {
	if logger == nil {
		logger = slog.Default()
	}
	return &Evaluator{log: logger, states: map[string]*alertState{}}
}

// alertBody is the data of system-alert and system-recovered events.
type alertBody struct {
	Alert      string    `json:"alert"`
	Severity   string    `json:"severity"`
	Summary    string    `json:"summary"`
	Condition  string    `json:"condition"`
	ForSeconds float64   `json:"for_seconds"`
	Since      time.Time `json:"since"`
	Figures    Figures   `json:"figures"`
	// Only in system-recovered:
	FiredAt         *time.Time `json:"fired_at,omitempty"`
	RecoveredAt     *time.Time `json:"recovered_at,omitempty"`
	DurationSeconds *float64   `json:"duration_seconds,omitempty"`
	Reason          string     `json:"reason,omitempty"`
}

// Evaluate holds alerts against one sample and returns the events it
// causes, in alert order: system-alert for an alert whose condition has
// held at every sample for its For, system-recovered for a firing alert
// whose condition no longer holds, was changed or was removed. Event ids
// depend on the alert and on when its condition started to hold, so an
// event emitted twice is delivered once.
func (e *Evaluator) Evaluate(alerts []*routes.Alert, f Figures) []event.Envelope {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []event.Envelope
	seen := make(map[string]bool, len(alerts))
	for _, a := range alerts {
		seen[a.Name] = true
		st := e.states[a.Name]
		if st != nil && st.cond != a.If {
			if st.firing {
				out = append(out, e.recovered(a.Name, st, f, "the alert's condition was changed"))
			}
			st = nil
		}
		if st == nil {
			st = &alertState{cond: a.If}
			e.states[a.Name] = st
		}
		st.severity, st.summary, st.forDur = a.Severity, a.Summary, a.For
		holds, err := a.Eval(&f)
		if err != nil {
			e.log.Warn("usage: alert condition failed on a sample; its state is kept", "alert", a.Name, "err", err)
			continue
		}
		switch {
		case holds && st.since.IsZero():
			st.since = f.Time
		case !holds:
			if st.firing {
				out = append(out, e.recovered(a.Name, st, f, "the condition no longer holds"))
			}
			*st = alertState{cond: a.If}
			continue
		}
		if !st.firing && f.Time.Sub(st.since) >= a.For {
			st.firing, st.firedAt = true, f.Time
			out = append(out, e.event(event.TypeSystemAlert, "evt_alert_", a.Name, st, f, alertBody{}))
		}
	}
	var gone []string
	for name := range e.states {
		if !seen[name] {
			gone = append(gone, name)
		}
	}
	sort.Strings(gone)
	for _, name := range gone {
		if st := e.states[name]; st.firing {
			out = append(out, e.recovered(name, st, f, "the alert was removed from the rules"))
		}
		delete(e.states, name)
	}
	return out
}

// Firing lists the names of the alerts firing now.
func (e *Evaluator) Firing() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for name, st := range e.states {
		if st.firing {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

func (e *Evaluator) recovered(name string, st *alertState, f Figures, reason string) event.Envelope {
	fired, at := st.firedAt.UTC(), f.Time.UTC()
	secs := at.Sub(fired).Seconds()
	return e.event(event.TypeSystemRecovered, "evt_recovered_", name, st, f,
		alertBody{FiredAt: &fired, RecoveredAt: &at, DurationSeconds: &secs, Reason: reason})
}

func (e *Evaluator) event(typ, prefix, name string, st *alertState, f Figures, b alertBody) event.Envelope {
	b.Alert, b.Severity, b.Summary, b.Condition = name, st.severity, st.summary, st.cond
	b.ForSeconds, b.Since, b.Figures = st.forDur.Seconds(), st.since.UTC(), f
	body, err := json.Marshal(b)
	if err != nil {
		// Figures hold no value JSON cannot encode but NaN and ±Inf,
		// which Sample never produces; send the event without them.
		b.Figures = Figures{Time: f.Time}
		body, _ = json.Marshal(b)
	}
	return event.Envelope{ID: prefix + alertKey(name) + "_" + strconv.FormatInt(st.since.UnixMilli(), 10),
		Type: typ, Time: f.Time.UTC(), Data: body}
}

// alertKey is a name made safe for event ids: its letters, digits, - and
// _ (others become -), and a hash of the whole name, so two names never
// share a key.
func alertKey(name string) string {
	var b strings.Builder
	for _, r := range name {
		if b.Len() >= 40 {
			break
		}
		if r < 128 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	sum := sha256.Sum256([]byte(name))
	return b.String() + "-" + hex.EncodeToString(sum[:4])
}
