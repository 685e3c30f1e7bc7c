package usage

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/api"
	"github.com/buildbridge/buildbridge/store"
)

// idleQueue is the build queue of an API that starts no builds here.
type idleQueue struct{}

func (idleQueue) Wake()        {}
func (idleQueue) Cancel(int64) {}

type apiFixture struct {
	srv   *httptest.Server
	db    *store.DB
	meter *Meter
	clk   *testClock
	// tokens by name: ann (two tokens), big, root (admin)
	ann1, ann2, big, root string
}

func newAPIFixture(t *testing.T, cfg Config) *apiFixture {
	t.Helper()
	f := &apiFixture{db: openStore(t), clk: newClock()}
	ctx := context.Background()
	for _, u := range []struct {
		name   string
		admin  bool
		tokens []*string
	}{{"ann", false, []*string{&f.ann1, &f.ann2}}, {"big", false, []*string{&f.big}}, {"root", true, []*string{&f.root}}} {
		us, err := f.db.CreateUser(ctx, u.name, u.admin)
		if err != nil {
			t.Fatal(err)
		}
		for _, dst := range u.tokens {
			if *dst, _, err = f.db.CreateToken(ctx, us.ID, ""); err != nil {
				t.Fatal(err)
			}
		}
	}
	a, err := api.New(api.Config{Store: f.db, Scheduler: idleQueue{}, ArtifactsDir: t.TempDir(),
		Resolve: func(context.Context, string, string) (api.Commit, error) { return api.Commit{}, api.ErrRefNotFound }})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Store, cfg.Now = f.db, f.clk.Now
	if f.meter, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	a.UseAfterAuth(Middleware(f.meter, a))
	if err := a.EnableUsage(api.UsageConfig{Reader: f.meter, Now: f.clk.Now,
		RateLimit: func(u store.User) (int, time.Duration) { return f.meter.LimitFor(u.Name) }}); err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(a)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *apiFixture) get(t *testing.T, token, path string) (*http.Response, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("GET", f.srv.URL+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	json.Unmarshal(raw, &m)
	return resp, m
}

func headers(r *http.Response) [3]string {
	return [3]string{r.Header.Get("RateLimit-Limit"), r.Header.Get("RateLimit-Remaining"), r.Header.Get("RateLimit-Reset")}
}

// TestHeadersAndLimit runs the API with the meter on a test clock: every
// authenticated answer carries the RateLimit headers; the request over
// the limit is refused with 429, rate_limited and Retry-After; another
// token has its own limit; the window's end makes it whole again.
func TestHeadersAndLimit(t *testing.T) {
	f := newAPIFixture(t, Config{Limit: 3, Window: time.Minute, Limits: map[string]int{"big": 10, "root": 100}})
	for i, want := range [][3]string{{"3", "2", "60"}, {"3", "1", "50"}, {"3", "0", "40"}} {
		resp, body := f.get(t, f.ann1, "/api/v1/user")
		if resp.StatusCode != 200 || headers(resp) != want || resp.Header.Get("Retry-After") != "" {
			t.Fatalf("request %d: %d %v %v", i+1, resp.StatusCode, headers(resp), body)
		}
		f.clk.Add(10 * time.Second)
	}
	f.clk.Add(500 * time.Millisecond)
	resp, body := f.get(t, f.ann1, "/api/v1/projects")
	e, _ := body["error"].(map[string]any)
	if resp.StatusCode != 429 || e["code"] != "rate_limited" || e["message"] == "" ||
		headers(resp) != [3]string{"3", "0", "30"} || resp.Header.Get("Retry-After") != "30" ||
		resp.Header.Get("Content-Type") != "application/json; charset=utf-8" {
		t.Fatalf("over the limit: %d %v %v %v", resp.StatusCode, headers(resp), resp.Header, body)
	}
	// Ann's other token, and another user with an override, are not held.
	if resp, _ := f.get(t, f.ann2, "/api/v1/user"); resp.StatusCode != 200 || headers(resp) != [3]string{"3", "2", "60"} {
		t.Fatalf("second token: %d %v", resp.StatusCode, headers(resp))
	}
	if resp, _ := f.get(t, f.big, "/api/v1/user"); resp.StatusCode != 200 || headers(resp) != [3]string{"10", "9", "60"} {
		t.Fatalf("override: %d %v", resp.StatusCode, headers(resp))
	}
	// Still refused a moment before the window's end, allowed after.
	f.clk.Add(29 * time.Second)
	if resp, _ := f.get(t, f.ann1, "/api/v1/user"); resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("before the end: %d %v", resp.StatusCode, resp.Header)
	}
	f.clk.Add(time.Second)
	if resp, _ := f.get(t, f.ann1, "/api/v1/user"); resp.StatusCode != 200 || headers(resp) != [3]string{"3", "2", "60"} {
		t.Fatalf("new window: %d %v", resp.StatusCode, headers(resp))
	}
	// Unauthenticated requests are neither limited nor metered; errors
	// are metered like the rest.
	if resp, _ := f.get(t, "", "/api/v1/user"); resp.StatusCode != 401 || resp.Header.Get("RateLimit-Limit") != "" {
		t.Fatalf("unauthenticated: %d %v", resp.StatusCode, resp.Header)
	}
	if resp, _ := f.get(t, f.ann2, "/api/v1/builds/999"); resp.StatusCode != 404 || headers(resp)[1] != "1" {
		t.Fatalf("404: %d %v", resp.StatusCode, headers(resp))
	}

	// The usage endpoints: by day and route, counted at once. (Ann's
	// calls are a window apart, to stay under her limit.)
	day := store.UsageDay(f.clk.Now())
	f.clk.Add(time.Minute)
	_, body = f.get(t, f.ann2, "/api/v1/user/usage")
	total, _ := body["total"].(map[string]any)
	days, _ := body["days"].([]any)
	rl, _ := body["rate_limit"].(map[string]any)
	if total["requests"] != 8.0 || total["errors"] != 3.0 || len(days) != 1 || rl["limit"] != 3.0 || rl["window_seconds"] != 60.0 || body["to"] != day {
		t.Fatalf("user usage: %v", body)
	}
	routes := days[0].(map[string]any)["routes"].([]any)
	first := routes[0].(map[string]any)
	if first["route"] != "GET /api/v1/user" || first["requests"] != 6.0 || first["errors"] != 1.0 || len(routes) != 3 {
		t.Fatalf("routes: %v", routes)
	}
	f.clk.Add(time.Minute)
	if resp, body := f.get(t, f.ann2, "/api/v1/admin/usage"); resp.StatusCode != 403 {
		t.Fatalf("admin usage as ann: %d %v", resp.StatusCode, body)
	}
	resp, body = f.get(t, f.root, "/api/v1/admin/usage") // root's first request: not in it yet
	users, _ := body["users"].([]any)
	if resp.StatusCode != 200 || len(users) != 2 || users[0].(map[string]any)["user"] != "ann" || users[0].(map[string]any)["requests"] != 10.0 {
		t.Fatalf("admin usage: %d %v", resp.StatusCode, body)
	}
	if _, body = f.get(t, f.root, "/api/v1/admin/usage?user=big"); len(body["users"].([]any)) != 1 {
		t.Fatalf("admin usage of big: %v", body)
	}
	for _, q := range []string{"?from=2030-13-01", "?from=2030-03-05&to=2030-03-04", "?from=2000-01-01&to=2030-03-04", "?to=yesterday"} {
		f.clk.Add(time.Minute)
		if resp, body := f.get(t, f.ann2, "/api/v1/user/usage"+q); resp.StatusCode != 400 {
			t.Errorf("%s: %d %v", q, resp.StatusCode, body)
		}
	}
	if resp, _ := f.get(t, f.root, "/api/v1/admin/usage?user=nobody"); resp.StatusCode != 404 {
		t.Errorf("unknown user: %d", resp.StatusCode)
	}
	// Stored by a flush, the same answer.
	if err := f.meter.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.clk.Add(time.Minute)
	if _, body = f.get(t, f.ann2, "/api/v1/user/usage?from="+day+"&to="+day); body["total"].(map[string]any)["requests"] != 14.0 {
		t.Fatalf("after the flush: %v", body)
	}
}
