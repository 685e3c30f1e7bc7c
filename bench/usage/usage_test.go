package usagebench

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/buildbridge/buildbridge/api"
	"github.com/buildbridge/buildbridge/store"
	"github.com/buildbridge/buildbridge/usage"
)

// routes are the route patterns the benchmarks spread requests over, as
// gin's FullPath gives them.
var routes = []string{"/api/v1/user", "/api/v1/projects", "/api/v1/projects/:name", "/api/v1/projects/:name/builds",
	"/api/v1/builds/:id", "/api/v1/builds/:id/log", "/api/v1/builds/:id/events", "/api/v1/deliveries"}

func newMeter(b *testing.B, limit int) *usage.Meter {
	b.Helper()
	s, err := store.Open(context.Background(), store.Config{DataDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	m, err := usage.New(usage.Config{Store: s, Limit: limit, Window: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	return m
}

// hotPath is what the middleware does for one request, without gin: the
// clock read once, the rate-limit decision, the route's id from its
// pattern, the counts of the answer.
func hotPath(m *usage.Meter, c usage.Caller, path string, now time.Time) bool {
	d := m.Begin(c, now)
	route := m.Route("GET", path)
	m.End(d, route, 200, 750*time.Microsecond)
	return d.Allowed
}

// BenchmarkMeterParallel: requests of 10,000 tokens (2,000 users) over 8
// routes, from every P at once; limits high enough that all are allowed.
func BenchmarkMeterParallel(b *testing.B) {
	m := newMeter(b, usage.MaxLimit)
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := next.Add(1) * 7919
		for pb.Next() {
			i++
			tok := i%10000 + 1
			if !hotPath(m, usage.Caller{TokenID: tok, UserID: tok%2000 + 1, User: "u"}, routes[i%8], time.Now()) {
				b.Fatal("refused")
			}
		}
	})
}

// BenchmarkMeterOneToken: every P on the same token: the contended case
// (one client hammering the API).
func BenchmarkMeterOneToken(b *testing.B) {
	m := newMeter(b, usage.MaxLimit)
	c := usage.Caller{TokenID: 1, UserID: 1, User: "ann"}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			hotPath(m, c, routes[i%8], time.Now())
		}
	})
}

// BenchmarkMeterRefused: tokens over their limit, refused (and counted).
func BenchmarkMeterRefused(b *testing.B) {
	m := newMeter(b, 1)
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := next.Add(1) * 7919
		for pb.Next() {
			i++
			hotPath(m, usage.Caller{TokenID: i%100 + 1, UserID: 1, User: "u"}, routes[i%8], time.Now())
		}
	})
}

// BenchmarkMiddleware: the gin middleware as installed on the API, on a
// gin engine whose first handler stands in for authentication (the
// store's token lookup is not the metering's cost): RateLimit headers
// written, the route's handler run, the answer counted.
func BenchmarkMiddleware(b *testing.B) { benchGin(b, true) }

// BenchmarkGinWithoutMiddleware is BenchmarkMiddleware without the
// middleware: what gin and the authentication stand-in cost alone.
func BenchmarkGinWithoutMiddleware(b *testing.B) { benchGin(b, false) }

func benchGin(b *testing.B, metered bool) {
	m := newMeter(b, usage.DefaultLimit)
	s, err := store.Open(context.Background(), store.Config{DataDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	a, err := api.New(api.Config{Store: s, Scheduler: idle{}, ArtifactsDir: b.TempDir(),
		Resolve: func(context.Context, string, string) (api.Commit, error) { return api.Commit{}, nil }})
	if err != nil {
		b.Fatal(err)
	}
	mw := usage.Middleware(m, a)
	e := gin.New()
	users := make([]store.User, 2000)
	for i := range users {
		users[i] = store.User{ID: int64(i + 1), Name: "u"}
	}
	g := e.Group("/api/v1", func(c *gin.Context) {
		tok := c.GetHeader("X-Token-Index")
		n := 0
		for _, ch := range tok {
			n = n*10 + int(ch-'0')
		}
		c.Set("user", users[n%2000])
		c.Set("token_id", int64(n+1))
		if metered {
			mw(c)
		}
	})
	for _, r := range routes {
		g.GET(strings.TrimPrefix(r, "/api/v1"), func(c *gin.Context) { c.Status(http.StatusNoContent) })
	}
	reqs := make([]*http.Request, 10000)
	for i := range reqs {
		path := routes[i%8]
		path = replaceParams(path)
		reqs[i] = httptest.NewRequest("GET", path, nil)
		reqs[i].Header.Set("X-Token-Index", itoa(i))
	}
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := next.Add(1) * 7919
		w := &discard{h: http.Header{}}
		for pb.Next() {
			i++
			clear(w.h)
			w.code = 0
			e.ServeHTTP(w, reqs[i%int64(len(reqs))])
			if w.code != http.StatusNoContent {
				b.Fatalf("status %d", w.code)
			}
		}
	})
}

type idle struct{}

func (idle) Wake()        {}
func (idle) Cancel(int64) {}

// discard is a ResponseWriter that keeps the status only, reused across
// requests so the benchmark counts the server side's allocations.
type discard struct {
	h    http.Header
	code int
}

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(p []byte) (int, error) { return len(p), nil }
func (d *discard) WriteHeader(code int)        { d.code = code }

func replaceParams(p string) string {
	out := []byte{}
	for i := 0; i < len(p); i++ {
		if p[i] == ':' {
			j := i
			for j < len(p) && p[j] != '/' {
				j++
			}
			if p[i+1:j] == "name" {
				out = append(out, "app"...)
			} else {
				out = append(out, "42"...)
			}
			i = j - 1
			continue
		}
		out = append(out, p[i])
	}
	return string(out)
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}
