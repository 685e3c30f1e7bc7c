package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// BenchmarkSignedGitHubPush runs the forge handler in process (no HTTP
// client or server): signature check, de-duplication and the build
// committed in SQLite, per signed push. `go run ./bench/ingest` measures
// the same over loopback HTTP, with latency percentiles.
func BenchmarkSignedGitHubPush(b *testing.B) {
	r, err := newRig(context.Background(), b.TempDir(), 0)
	if err != nil {
		b.Fatal(err)
	}
	defer r.store.Close()
	reqs := make([]*http.Request, b.N)
	for i := range reqs {
		reqs[i] = delivery(r.secret, i+1).Request("http://hub/hooks/github/app")
	}
	var next atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w := httptest.NewRecorder()
			r.handler.Serve(w, reqs[next.Add(1)-1], "github", "app")
			if w.Code != http.StatusOK {
				b.Fatalf("status %d: %s", w.Code, w.Body)
			}
		}
	})
}
