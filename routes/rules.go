// Package routes loads the YAML rules that fan events out to sinks, and
// matches events against them.
//
// A rules file names sink instances (`sinks:`, each with a type and that
// type's settings, as declared by package sinks) and lists routes
// (`routes:`). A route has a name, a match: block (event type, project,
// branch and author globs, state, result, status, and an `if:` expression
// in expr-lang), a notify: choice (always, change, never) and the sinks it
// sends to (`to:`), each with optional per-route settings. The example
// rules.example.yaml at the root of the repository shows every feature.
//
// Loading collects every problem, each located as file:line:col: path:
// message, with did-you-mean suggestions; secrets (${ENV} and file:
// references) are resolved at load and never appear in errors or logs.
// Templates and expressions are compiled at load and every template is
// rendered against sample events, so a broken one fails at load.
//
// Matching an event gives one sinks.Delivery per (sink, target): first the
// implicit delivery of every build-state-changed event to its project
// owner's private-user-<id> channel (on the file's first pusher sink, or
// on a built-in pusher sink named "realtime" when there is none), then
// those of the matching routes in file order. A later delivery to a sink
// and target already served for the event is dropped.
//
// Manager keeps the rules in force and reloads them; an invalid file never
// replaces valid rules.
package routes

import (
	"fmt"
	"sort"
	"strings"

	"github.com/buildbridge/buildbridge/sinks"
)

// Name is the file name the rules were loaded from.
func (r *Rules) Name() string { return r.name }

// Sinks returns the configuration of every sink instance, in file order,
// the built-in realtime sink last when it is used. The delivery engine
// makes the instances with sinks.New.
func (r *Rules) Sinks() []*sinks.Config {
	out := make([]*sinks.Config, len(r.sinks))
	for i, s := range r.sinks {
		out[i] = s.cfg
	}
	return out
}

// Sink returns the configuration of a sink instance by name.
func (r *Rules) Sink(name string) (*sinks.Config, bool) {
	s, ok := r.byName[name]
	if !ok {
		return nil, false
	}
	return s.cfg, true
}

// UserSink is the name of the pusher sink that carries the implicit
// user-channel deliveries.
func (r *Rules) UserSink() string { return r.user.name }

// RouteNames lists the routes in file order.
func (r *Rules) RouteNames() []string {
	out := make([]string, len(r.routes))
	for i, rt := range r.routes {
		out[i] = rt.name
	}
	return out
}

// Warnings are problems that did not stop loading, located like errors.
func (r *Rules) Warnings() []string { return r.warnings }

// Summary describes what the rules define in one line, without secrets:
// "rules.yaml: 4 sinks (email 1, log 1, pusher 1, slack 1), 6 routes; user channels on realtime".
func (r *Rules) Summary() string {
	count := map[string]int{}
	n := 0
	for _, s := range r.sinks {
		if s.builtin {
			continue
		}
		count[s.typ.Name]++
		n++
	}
	var types []string
	for t, c := range count {
		types = append(types, fmt.Sprintf("%s %d", t, c))
	}
	sort.Strings(types)
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d %s", r.name, n, plural(n, "sink", "sinks"))
	if len(types) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(types, ", "))
	}
	fmt.Fprintf(&b, ", %d %s", len(r.routes), plural(len(r.routes), "route", "routes"))
	if len(r.alerts) > 0 {
		fmt.Fprintf(&b, ", %d %s", len(r.alerts), plural(len(r.alerts), "alert", "alerts"))
	}
	fmt.Fprintf(&b, "; user channels on %s", r.user.name)
	if r.user.builtin {
		b.WriteString(" (built-in)")
	}
	if len(r.warnings) > 0 {
		fmt.Fprintf(&b, "; %d %s", len(r.warnings), plural(len(r.warnings), "warning", "warnings"))
	}
	return b.String()
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
