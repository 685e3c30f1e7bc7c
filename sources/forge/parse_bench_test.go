package forge

import (
	"testing"

	"github.com/buildbridge/buildbridge/sources/forge/forgetest"
)

func BenchmarkParseGitHubPush(b *testing.B) {
	d := forgetest.GitHubPush(forgetest.Push{Ref: "refs/heads/main", Before: sha("a"), After: sha("b"), Message: "Fix the flaky test\n\nbody",
		Author: "Ann", Email: "a@x"}, "1", "k")
	b.SetBytes(int64(len(d.Body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, e := ParseGitHubPush("application/json", d.Body); e != nil {
			b.Fatal(e)
		}
	}
}
