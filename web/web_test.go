package web

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/buildbridge/buildbridge/api"
	"github.com/buildbridge/buildbridge/store"
)

// scheduler is the build queue's side of the API; these tests queue
// builds but never run them.
type scheduler struct{}

func (scheduler) Wake()        {}
func (scheduler) Cancel(int64) {}

var bundle = fstest.MapFS{
	"app.js":  {Data: []byte("console.log('dashboard')")},
	"app.css": {Data: []byte("body{}")},
	".keep":   {Data: []byte("placeholder")},
}

type env struct {
	srv   *httptest.Server
	store *store.DB
	web   *Handler
	token string
	user  store.User
}

// newEnv serves the dashboard and the API on one mux, as serve does, over
// a real SQLite store.
func newEnv(t *testing.T, baseURL string) *env {
	t.Helper()
	s, err := store.Open(context.Background(), store.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	u, err := s.CreateUser(context.Background(), "wendy", false)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := s.CreateToken(context.Background(), u.ID, "web")
	if err != nil {
		t.Fatal(err)
	}
	a, err := api.New(api.Config{Store: s, Scheduler: scheduler{}, ArtifactsDir: t.TempDir(),
		Resolve: func(ctx context.Context, repo, ref string) (api.Commit, error) {
			return api.Commit{SHA: strings.Repeat("ab", 20), Ref: "refs/heads/" + ref, Branch: ref}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	w, err := New(Config{Store: s, BaseURL: baseURL, Assets: bundle})
	if err != nil {
		t.Fatal(err)
	}
	a.UseSessions(w)
	mux := http.NewServeMux()
	w.Register(mux)
	mux.Handle("/api/", a)
	mux.Handle("/", a)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &env{srv: srv, store: s, web: w, token: tok, user: u}
}

func (e *env) do(t *testing.T, method, path, body string, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	r, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Body.Close() })
	return r
}

func readJSON(t *testing.T, r *http.Response, v any) {
	t.Helper()
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		t.Fatalf("decode %s: %v", r.Request.URL.Path, err)
	}
}

func errCode(t *testing.T, r *http.Response) string {
	t.Helper()
	var e struct {
		Error struct{ Code, Message string }
	}
	readJSON(t, r, &e)
	return e.Error.Code
}

// signIn returns the session cookie and the CSRF token.
func (e *env) signIn(t *testing.T) (*http.Cookie, string) {
	t.Helper()
	r := e.do(t, "POST", "/session", `{"token":"`+e.token+`"}`, map[string]string{"Content-Type": "application/json"})
	if r.StatusCode != http.StatusOK {
		t.Fatalf("sign in: %d", r.StatusCode)
	}
	var s sessionJSON
	readJSON(t, r, &s)
	if s.User.ID != e.user.ID || s.CSRFToken == "" || !s.ExpiresAt.After(time.Now().Add(6*24*time.Hour)) {
		t.Fatalf("session %+v", s)
	}
	for _, c := range r.Cookies() {
		if c.Name == "bb_session" || c.Name == "__Host-bb_session" {
			return c, s.CSRFToken
		}
	}
	t.Fatal("no session cookie")
	return nil, ""
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{
		{},
		{Store: &store.DB{}, SessionTTL: time.Second},
		{Store: &store.DB{}, BaseURL: "ftp://x"},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
	}
}

func TestPagesAndAssets(t *testing.T) {
	e := newEnv(t, "")
	for _, p := range []string{"/", "/signin", "/builds/12", "/projects/app", "/deliveries"} {
		r := e.do(t, "GET", p, "", nil)
		body, _ := io.ReadAll(r.Body)
		if r.StatusCode != 200 || !strings.Contains(string(body), `src="/assets/app.js?v=`+e.web.version+`"`) {
			t.Fatalf("GET %s: %d %s", p, r.StatusCode, body)
		}
		csp := r.Header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("GET %s: CSP %q", p, csp)
		}
	}
	// Paths that are not the dashboard's stay with the API.
	if r := e.do(t, "GET", "/nope", "", nil); r.StatusCode != 404 || errCode(t, r) != "not_found" {
		t.Errorf("GET /nope: %d", r.StatusCode)
	}

	r := e.do(t, "GET", "/assets/app.js?v="+e.web.version, "", nil)
	body, _ := io.ReadAll(r.Body)
	if r.StatusCode != 200 || string(body) != "console.log('dashboard')" || !strings.HasPrefix(r.Header.Get("Content-Type"), "text/javascript") ||
		!strings.Contains(r.Header.Get("Cache-Control"), "immutable") {
		t.Fatalf("app.js: %d %q %v", r.StatusCode, body, r.Header)
	}
	if r2 := e.do(t, "GET", "/assets/app.js", "", map[string]string{"If-None-Match": r.Header.Get("ETag")}); r2.StatusCode != http.StatusNotModified {
		t.Errorf("revalidation: %d", r2.StatusCode)
	}
	if r := e.do(t, "GET", "/assets/app.css", "", nil); r.StatusCode != 200 || !strings.HasPrefix(r.Header.Get("Content-Type"), "text/css") ||
		r.Header.Get("Cache-Control") != "no-cache" {
		t.Errorf("app.css: %d %v", r.StatusCode, r.Header)
	}
	for _, p := range []string{"/assets/.keep", "/assets/missing.js", "/assets/..%2fweb.go"} {
		if r := e.do(t, "GET", p, "", nil); r.StatusCode != 404 {
			t.Errorf("GET %s: %d, want 404", p, r.StatusCode)
		}
	}
}

func TestMissingBundle(t *testing.T) {
	s, err := store.Open(context.Background(), store.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	w, err := New(Config{Store: s, Assets: fstest.MapFS{".keep": {Data: []byte("x")}}})
	if err != nil {
		t.Fatal(err)
	}
	if w.BundleBuilt() {
		t.Fatal("an empty bundle counts as built")
	}
	mux := http.NewServeMux()
	w.Register(mux)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "make web build") {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
}

func TestEmbeddedBundleBuildsWithoutDist(t *testing.T) {
	// The embedded dist/ holds at least the placeholder, whether or not
	// `make web` ran: the package builds on a fresh clone.
	if _, err := distFS.ReadFile("dist/.keep"); err != nil {
		t.Fatal(err)
	}
}

func TestSignInCookie(t *testing.T) {
	e := newEnv(t, "")
	c, csrf := e.signIn(t)
	if !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/" || c.Secure || c.Value == e.token || len(c.Value) < 40 {
		t.Fatalf("cookie %+v", c)
	}
	r := e.do(t, "GET", "/session", "", map[string]string{"Cookie": c.Name + "=" + c.Value})
	var s sessionJSON
	readJSON(t, r, &s)
	if r.StatusCode != 200 || s.CSRFToken != csrf || s.User.Name != "wendy" || r.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("GET /session: %d %+v", r.StatusCode, s)
	}

	// Bad tokens, bodies and kinds of request.
	for _, tc := range []struct {
		body, ctype string
		status      int
	}{
		{`{"token":"bb_nope"}`, "application/json", 401},
		{`{"token":""}`, "application/json", 400},
		{`{"token":"x","more":1}`, "application/json", 400},
		{`{"token":`, "application/json", 400},
		{`token=` + e.token, "text/plain", 415},
		{`{"token":"` + strings.Repeat("a", 8<<10) + `"}`, "application/json", 400},
	} {
		if r := e.do(t, "POST", "/session", tc.body, map[string]string{"Content-Type": tc.ctype}); r.StatusCode != tc.status {
			t.Errorf("POST /session %.40q (%s): %d, want %d", tc.body, tc.ctype, r.StatusCode, tc.status)
		}
	}
	if r := e.do(t, "GET", "/session", "", nil); r.StatusCode != 401 {
		t.Errorf("GET /session without cookie: %d", r.StatusCode)
	}
	if r := e.do(t, "GET", "/session", "", map[string]string{"Cookie": "bb_session=forged"}); r.StatusCode != 401 {
		t.Errorf("GET /session with a forged cookie: %d", r.StatusCode)
	}

	// A plain form signs in and redirects; a bad token goes back.
	form := url.Values{"token": {e.token}}.Encode()
	r = e.do(t, "POST", "/session", form, map[string]string{"Content-Type": "application/x-www-form-urlencoded"})
	if r.StatusCode != http.StatusSeeOther || r.Header.Get("Location") != "/" || len(r.Cookies()) != 1 {
		t.Errorf("form sign-in: %d %v", r.StatusCode, r.Header)
	}
	r = e.do(t, "POST", "/session", "token=bb_nope", map[string]string{"Content-Type": "application/x-www-form-urlencoded"})
	if r.StatusCode != http.StatusSeeOther || !strings.HasPrefix(r.Header.Get("Location"), "/signin?error=") {
		t.Errorf("form sign-in with a bad token: %d %v", r.StatusCode, r.Header)
	}

	// Another site cannot sign a browser in (login CSRF).
	r = e.do(t, "POST", "/session", `{"token":"`+e.token+`"}`, map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"})
	if r.StatusCode != http.StatusForbidden {
		t.Errorf("cross-site sign-in: %d", r.StatusCode)
	}
}

func TestSecureCookieOverHTTPS(t *testing.T) {
	e := newEnv(t, "https://ci.example.com")
	c, _ := e.signIn(t)
	if c.Name != "__Host-bb_session" || !c.Secure || !c.HttpOnly || c.Path != "/" || c.Domain != "" {
		t.Fatalf("cookie %+v", c)
	}
}

func TestAPIWithSession(t *testing.T) {
	e := newEnv(t, "")
	c, csrf := e.signIn(t)
	cookie := c.Name + "=" + c.Value
	withCookie := func(extra map[string]string) map[string]string {
		h := map[string]string{"Cookie": cookie, "Content-Type": "application/json"}
		for k, v := range extra {
			h[k] = v
		}
		return h
	}
	r := e.do(t, "GET", "/api/v1/user", "", withCookie(nil))
	var u store.User
	readJSON(t, r, &u)
	if r.StatusCode != 200 || u.ID != e.user.ID {
		t.Fatalf("GET /api/v1/user with the cookie: %d %+v", r.StatusCode, u)
	}
	project := `{"name":"app","repo":"/r"}`
	if r := e.do(t, "POST", "/api/v1/projects", project, withCookie(nil)); r.StatusCode != 403 || errCode(t, r) != "csrf_failed" {
		t.Fatalf("POST without the CSRF token: %d", r.StatusCode)
	}
	if r := e.do(t, "POST", "/api/v1/projects", project, withCookie(map[string]string{CSRFHeader: csrf + "x"})); r.StatusCode != 403 {
		t.Fatalf("POST with a wrong CSRF token: %d", r.StatusCode)
	}
	if r := e.do(t, "POST", "/api/v1/projects", project, withCookie(map[string]string{CSRFHeader: csrf, "Sec-Fetch-Site": "cross-site"})); r.StatusCode != 403 {
		t.Fatalf("cross-site POST with the token: %d", r.StatusCode)
	}
	if r := e.do(t, "POST", "/api/v1/projects", project, withCookie(map[string]string{CSRFHeader: csrf, "Sec-Fetch-Site": "same-origin"})); r.StatusCode != 201 {
		t.Fatalf("POST with the CSRF token: %d", r.StatusCode)
	}
	if r := e.do(t, "POST", "/api/v1/projects/app/builds", `{"branch":"main"}`, withCookie(map[string]string{CSRFHeader: csrf})); r.StatusCode != 201 {
		t.Fatalf("trigger with the CSRF token: %d", r.StatusCode)
	}
	// Bearer works as before, and wins over a cookie.
	if r := e.do(t, "POST", "/api/v1/projects/app/builds", `{}`, map[string]string{"Authorization": "Bearer " + e.token, "Cookie": cookie}); r.StatusCode != 201 {
		t.Fatalf("Bearer: %d", r.StatusCode)
	}
	if r := e.do(t, "GET", "/api/v1/user", "", map[string]string{"Authorization": "Bearer bb_bad", "Cookie": cookie}); r.StatusCode != 401 {
		t.Fatalf("a bad Bearer token with a good cookie: %d", r.StatusCode)
	}

	// Sign-out needs the token too, then the cookie is dead everywhere.
	if r := e.do(t, "DELETE", "/session", "", withCookie(nil)); r.StatusCode != 403 {
		t.Fatalf("sign-out without the CSRF token: %d", r.StatusCode)
	}
	r = e.do(t, "DELETE", "/session", "", withCookie(map[string]string{CSRFHeader: csrf}))
	if r.StatusCode != 204 || len(r.Cookies()) != 1 || r.Cookies()[0].MaxAge >= 0 {
		t.Fatalf("sign-out: %d %v", r.StatusCode, r.Cookies())
	}
	if r := e.do(t, "GET", "/api/v1/user", "", withCookie(nil)); r.StatusCode != 401 || errCode(t, r) != "session_expired" {
		t.Fatalf("API after sign-out: %d", r.StatusCode)
	}
}

func TestRevokedTokenEndsSession(t *testing.T) {
	e := newEnv(t, "")
	c, _ := e.signIn(t)
	_, tok, err := e.store.Authenticate(context.Background(), e.token)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.store.RevokeToken(context.Background(), e.user.ID, tok.ID); err != nil {
		t.Fatal(err)
	}
	if r := e.do(t, "GET", "/api/v1/user", "", map[string]string{"Cookie": c.Name + "=" + c.Value}); r.StatusCode != 401 {
		t.Fatalf("session of a revoked token: %d", r.StatusCode)
	}
}
