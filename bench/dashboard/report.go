package main

import (
	"fmt"
	"io"
	"runtime"
)

// report prints the windows as a Markdown table, then the comparisons the
// issue asks for: push against polling, in total and over the baseline.
func report(w io.Writer, cfg config, rs []result) {
	fmt.Fprintf(w, "\n%d dashboards (%d users, %d projects each), polling every %s, one build transition per %s, %s windows, GOMAXPROCS %d\n\n",
		cfg.dashboards, cfg.users, cfg.projectsPerUser, cfg.interval, cfg.transitionEvery, cfg.window, runtime.GOMAXPROCS(0))
	fmt.Fprintln(w, "| phase | dashboards | server CPU s/min | % of one core | store queries/min | bytes sent/min | HTTP requests/min | state / log events received | builds triggered | client errors |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	by := map[string]result{}
	for _, r := range rs {
		by[r.Phase] = r
		fmt.Fprintf(w, "| %s | %d | %.2f | %.2f%% | %.0f | %.0f | %.0f | %d / %d | %d | %d |\n", r.Phase, r.Dashboards, r.CPUSecPerMin, r.CPUPercent,
			r.QueriesPerMin, r.BytesPerMin, r.RequestsMin, r.Events, r.LogEvents, r.Transitions, r.Errors)
	}
	poll, push := by["polling"], by["push"]
	ratio := func(a, b float64) string {
		if b <= 0 {
			return "∞"
		}
		return fmt.Sprintf("%.1f×", a/b)
	}
	fmt.Fprintf(w, "\npolling / push, whole server: CPU %s, store queries %s, bytes sent %s\n",
		ratio(poll.CPUSecPerMin, push.CPUSecPerMin), ratio(poll.QueriesPerMin, push.QueriesPerMin), ratio(poll.BytesPerMin, push.BytesPerMin))
	if base, ok := by["baseline"]; ok {
		pc, uc := poll.CPUSecPerMin-base.CPUSecPerMin, push.CPUSecPerMin-base.CPUSecPerMin
		pq, uq := poll.QueriesPerMin-base.QueriesPerMin, push.QueriesPerMin-base.QueriesPerMin
		fmt.Fprintf(w, "over the baseline (the dashboards' own cost): polling %.2f CPU s/min and %.0f queries/min; push %.2f CPU s/min and %.0f queries/min\n",
			pc, pq, uc, uq)
		fmt.Fprintf(w, "per dashboard per minute: polling %.2f store queries, push %.2f\n", pq/float64(poll.Dashboards), uq/float64(push.Dashboards))
		if uc > 0 {
			fmt.Fprintf(w, "dashboards' own CPU, polling / push: %.0f×\n", pc/uc)
		} else {
			fmt.Fprintln(w, "dashboards' own CPU with push is within the noise of the baseline")
		}
	}
	for _, r := range rs {
		if r.LastError != "" {
			fmt.Fprintf(w, "%s: last client error: %s\n", r.Phase, r.LastError)
		}
	}
}
