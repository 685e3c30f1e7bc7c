package routes

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/sinks"
	logsink "github.com/buildbridge/buildbridge/sinks/log"
)

// benchRules writes 100 routes. With matching=10, ten of them match the
// benchmark event, each to its own target (Slack channels with the
// default template, email, webhook, Pusher and log), and ninety do not,
// failing on the event type, project, branch, status, author, notify or an
// if: expression. With matching=100 every route matches, each to its
// own Slack channel: the worst case, 100 renders per event.
func benchRules(matching int) string {
	var b strings.Builder
	b.WriteString(testSinks + "  h2: {type: webhook, url: 'https://hooks.example.com/y', secret: '${S}'}\nroutes:\n")
	misses := []string{
		"match: {event: api-usage}",
		"match: {project: 'svc-%d-*'}",
		"match: {branch: 'release/%d/**'}",
		"match: {status: [broken, still_failing]}",
		"match: {author: 'bot-%d@*'}",
		"match: {branch: [main, '!main']}",
		"notify: change",
		"match: {if: 'build.duration_ms > %d000000'}",
		"match: {project: app, branch: 'hotfix/*', if: 'build.number == %d'}",
	}
	hits := []string{
		"to: [{sink: s, channel: '#c%d'}]",
		"to: [{sink: s, channel: '#c%d'}]",
		"to: [{sink: s, channel: '#c%d'}]",
		"to: [{sink: s, channel: '#c%d', template: '{{icon .Build.Status}} {{.Project.Name}} #{{.Build.Number}} {{.Build.Status}}'}]",
		"to: [{sink: m, to: 'team%d@example.com'}]",
		"to: [{sink: h, template: '{\"n\": {{.Build.Number}}, \"r\": %d}'}]",
		"to: [{sink: p, channel: 'private-project-{{.Project.ID}}-%d'}]",
		"to: [{sink: h2, content_type: 'application/x-%d'}]",
		"to: [{sink: l}]\n    match: {if: 'build.duration_ms > %d'}",
		"to: [{sink: s, channel: '#c%d'}]\n    match: {project: app, branch: [main, 'release/**'], status: [passed, fixed]}",
	}
	for i := range 100 {
		fmt.Fprintf(&b, "  - name: r%d\n", i)
		if i%10 < matching/10 || matching == 100 {
			if matching == 100 {
				fmt.Fprintf(&b, "    to: [{sink: s, channel: '#c%d'}]\n", i)
				continue
			}
			fmt.Fprintf(&b, "    "+hits[i/10]+"\n", i)
			continue
		}
		miss := misses[(i/10+i)%len(misses)]
		if strings.Contains(miss, "%d") {
			miss = fmt.Sprintf(miss, i)
		}
		fmt.Fprintf(&b, "    %s\n    to: [{sink: s, channel: '#m%d'}]\n", miss, i)
	}
	return b.String()
}

func benchMatch(b *testing.B, matching, want int) {
	r := mustParse(b, benchRules(matching))
	ev := build{result: builds.Passed, prev: builds.Passed, durationMS: 72_000}.event()
	if got := len(r.Match(ev)); got != want {
		b.Fatalf("%d deliveries, want %d", got, want)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		r.Match(ev)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkMatch100Routes matches and renders one event against 100
// routes: 10 match (plus the user channel), 90 do not.
func BenchmarkMatch100Routes(b *testing.B) { benchMatch(b, 10, 11) }

// BenchmarkMatch100RoutesAllMatch is the worst case: all 100 match, 100
// messages rendered.
func BenchmarkMatch100RoutesAllMatch(b *testing.B) { benchMatch(b, 100, 101) }

// BenchmarkTemplates renders the default templates of each type.
func BenchmarkTemplates(b *testing.B) {
	ev := SampleEvent()
	for name, src := range map[string]string{"slack": sinks.SlackTemplate, "subject": sinks.EmailSubject, "text": sinks.EmailText, "log": logsink.Template, "small": "{{.Project.Name}} #{{.Build.Number}} {{.Build.Status}}"} {
		b.Run(name, func(b *testing.B) {
			ts := &templates{}
			r, err := ts.compile("t", src, false)
			if err != nil {
				b.Fatal(err)
			}
			x := newCtx(&ev)
			var buf bytes.Buffer
			b.ReportAllocs()
			for b.Loop() {
				buf.Reset()
				r.render(x, &buf)
			}
		})
	}
}

// BenchmarkIf evaluates if: expressions.
func BenchmarkIf(b *testing.B) {
	ev := SampleEvent()
	for name, src := range map[string]string{"dur": "build.duration_ms > 1000000", "proj": `project.name == "x"`, "two": `build.branch == "main" && build.number > 3`} {
		b.Run(name, func(b *testing.B) {
			p, err := compileCond(src)
			if err != nil {
				b.Fatal(err)
			}
			x := newCtx(&ev)
			b.ReportAllocs()
			for b.Loop() {
				x.vm.Run(p, x.exprEnv())
			}
		})
	}
}
