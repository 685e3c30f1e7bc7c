package routes

import (
	"testing"

	"github.com/expr-lang/expr/vm"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/event"
)

var condCorpus = []struct {
	src  string
	fast bool
}{
	{`build.duration_ms > 20 * 60 * 1000`, true},
	{`build.number == 12 || build.number >= 40 && build.number != 41`, true},
	{`build.branch == "main" && project.name != "web"`, true},
	{`!(build.status == "passed") and not build.success`, true},
	{`build.branch startsWith "release/" || build.ref endsWith "/main" || build.message contains "WIP"`, true},
	{`previous.result == "passed" && build.result != previous.result`, true},
	{`type == "api-usage" || seq < 0 || job.id <= project.id || project.owner_id > 4`, true},
	{`build.success == true`, true},
	{`true`, true},
	{`build.number > 1.5`, false},
	{`project.name in ["app", "web"]`, false},
	{`build.message matches "^Fix"`, false},
	{`data.count > 100`, false},
	{`build.started_at.Year() > 2000`, false},
	{`len(build.branch) > 3`, false},
}

func condEvents() []event.Envelope {
	evs := variants()
	long := build{result: builds.Passed, durationMS: 21 * 60 * 1000, branch: "release/2"}.event()
	long.Build.Message = "WIP: x"
	return append(evs, long, build{state: builds.Queued}.event())
}

func TestFastConditionsMatchExpr(t *testing.T) {
	for _, c := range condCorpus {
		p, err := compileCond(c.src)
		if err != nil {
			t.Fatalf("%s: %v", c.src, err)
		}
		f := compileFastCond(p)
		if (f != nil) != c.fast {
			t.Errorf("%s: fast %v, want %v", c.src, f != nil, c.fast)
		}
		if f == nil {
			continue
		}
		for _, ev := range condEvents() {
			compareCond(t, c.src, p, f, ev)
		}
	}
}

func compareCond(t testing.TB, src string, p *vm.Program, f fastCond, ev event.Envelope) {
	t.Helper()
	x := newCtx(&ev)
	defer x.release()
	out, err := x.vm.Run(p, x.exprEnv())
	got := f(x.exprEnv())
	if want, _ := out.(bool); err != nil || got != want {
		t.Fatalf("%q on %s: fast %v, expr %v (%v)", src, ev.ID, got, out, err)
	}
}

// FuzzFastConditions compares fast conditions with expr's VM on arbitrary
// expressions and field values.
func FuzzFastConditions(f *testing.F) {
	for _, c := range condCorpus {
		f.Add(c.src, "main", "Fix <x>", int64(12))
	}
	f.Fuzz(func(t *testing.T, src, branch, message string, n int64) {
		p, err := compileCond(src)
		if err != nil {
			return
		}
		fast := compileFastCond(p)
		if fast == nil {
			return
		}
		ev := build{result: builds.Failed, prev: builds.Passed, branch: branch, durationMS: n}.event()
		ev.Build.Message, ev.Build.Number = message, n
		for _, e := range []event.Envelope{ev, other("api-usage", `{}`)} {
			x := newCtx(&e)
			out, err := x.vm.Run(p, x.exprEnv())
			got := fast(x.exprEnv())
			x.release()
			if want, _ := out.(bool); err != nil || got != want {
				t.Fatalf("%q on %s: fast %v, expr %v (%v)", src, e.ID, got, out, err)
			}
		}
	})
}
