package webhook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"gopkg.in/yaml.v3"

	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/sinks/delivery"
)

const (
	secretA = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	secretB = "whsec_dGhpcyBpcyB0aGUgb2xkIHNlY3JldCBrZXk="
)

var loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

// decode decodes a webhook sink's YAML with the registered type.
func decode(t *testing.T, src string) (*sinks.Config, []*sinks.ConfigError) {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
		t.Fatal(err)
	}
	tp, ok := sinks.Lookup("webhook")
	if !ok || tp.New == nil {
		t.Fatal("webhook type not completed by this package")
	}
	return tp.Decode("hook", doc.Content[0], &sinks.Resolver{LookupEnv: os.LookupEnv, ReadFile: os.ReadFile})
}

func mustSink(t *testing.T, src string, opts Options) *Sink {
	t.Helper()
	c, errs := decode(t, src)
	if len(errs) > 0 {
		t.Fatalf("config: %v", errs)
	}
	s, err := NewSink(c, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func testDelivery(body string) sinks.Delivery {
	return sinks.Delivery{EventID: "evt_1", Event: event.Envelope{ID: "evt_1", Type: event.TypeBuildStateChanged},
		Sink: "hook", SinkType: "webhook", Target: "t", Body: []byte(body), ContentType: "application/json"}
}

func TestGuardDecisions(t *testing.T) {
	g := NewGuard(nil)
	for _, tc := range []struct {
		ip string
		ok bool
	}{
		{"93.184.215.14", true}, {"8.8.8.8", true}, {"2606:4700::1111", true}, {"172.32.0.1", true}, {"100.128.0.1", true},
		{"127.0.0.1", false}, {"127.255.255.254", false}, {"::1", false}, {"::ffff:127.0.0.1", false},
		{"10.1.2.3", false}, {"172.16.0.1", false}, {"172.31.255.255", false}, {"192.168.1.1", false}, {"fd00::1", false},
		{"169.254.169.254", false}, {"fe80::1", false}, {"100.64.0.1", false}, {"100.127.255.255", false},
		{"224.0.0.1", false}, {"239.255.255.250", false}, {"ff02::1", false},
		{"0.0.0.0", false}, {"::", false}, {"255.255.255.255", false}, {"198.18.0.1", false},
		{"64:ff9b::7f00:1", false}, {"64:ff9b::5db8:d70e", true}, {"::ffff:10.0.0.1", false},
	} {
		err := g.Check(netip.MustParseAddr(tc.ip))
		if (err == nil) != tc.ok {
			t.Errorf("%s: allowed=%v, want %v (%v)", tc.ip, err == nil, tc.ok, err)
		}
		if err != nil && !errors.Is(err, ErrForbiddenAddress) {
			t.Errorf("%s: error %v does not wrap ErrForbiddenAddress", tc.ip, err)
		}
	}
	allow, err := ParseAllowList("10.0.0.0/8, 192.168.1.10 127.0.0.1")
	if err != nil || len(allow) != 3 {
		t.Fatalf("allow-list: %v %v", allow, err)
	}
	g = NewGuard(allow)
	for ip, ok := range map[string]bool{"10.9.9.9": true, "192.168.1.10": true, "192.168.1.11": false, "127.0.0.1": true,
		"::ffff:127.0.0.1": true, "127.0.0.2": false} {
		if err := g.Check(netip.MustParseAddr(ip)); (err == nil) != ok {
			t.Errorf("with allow-list, %s: allowed=%v, want %v", ip, err == nil, ok)
		}
	}
	for _, bad := range []string{"10.0.0.0/33", "nope", "1.2.3.4/x"} {
		if _, err := ParseAllowList(bad); err == nil {
			t.Errorf("allow-list %q accepted", bad)
		}
	}
	if err := g.Control("tcp4", "not an address", nil); !errors.Is(err, ErrForbiddenAddress) {
		t.Errorf("control with a bad address: %v", err)
	}
}

func TestGuardDialsLoopbackOnlyWhenAllowed(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer srv.Close()
	// A name that resolves to loopback is caught at dial time, like a
	// rebinding name would be.
	url := strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)
	cfg := "url: " + url + "\nsecret: " + secretA + "\n"
	_, err := mustSink(t, cfg, Options{}).Send(context.Background(), delivery.Attempt{Delivery: testDelivery("{}"), ID: "msg_1"})
	var de *delivery.Error
	if !errors.Is(err, ErrForbiddenAddress) || !errors.As(err, &de) || !de.Permanent {
		t.Fatalf("loopback without an allow-list: %v", err)
	}
	if hits.Load() != 0 {
		t.Fatal("the request reached the loopback server")
	}
	resp, err := mustSink(t, cfg, Options{Allow: loopback}).Send(context.Background(), delivery.Attempt{Delivery: testDelivery("{}"), ID: "msg_1"})
	if err != nil || resp.StatusCode != 200 || hits.Load() != 1 {
		t.Fatalf("loopback allowed: %+v %v (hits %d)", resp, err, hits.Load())
	}
}

func TestSignaturesVerifyWithTheStandardLibrary(t *testing.T) {
	type got struct {
		header http.Header
		body   []byte
	}
	reqs := make(chan got, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		reqs <- got{r.Header.Clone(), b}
	}))
	defer srv.Close()
	body := `{"id":"evt_1","type":"build-state-changed","build":{"state":"FINISHED"}}`

	s := mustSink(t, "url: "+srv.URL+"\nsecret: "+secretA+"\nheaders:\n  X-Team: platform\n", Options{Allow: loopback})
	if _, err := s.Send(context.Background(), delivery.Attempt{Delivery: testDelivery(body), ID: "msg_abc"}); err != nil {
		t.Fatal(err)
	}
	r := <-reqs
	wh, _ := standardwebhooks.NewWebhook(secretA)
	if err := wh.Verify(r.body, r.header); err != nil {
		t.Fatalf("standard-webhooks library refuses the signature: %v (headers %v)", err, r.header)
	}
	if r.header.Get("webhook-id") != "msg_abc" || r.header.Get("X-Team") != "platform" ||
		r.header.Get("Content-Type") != "application/json" || string(r.body) != body {
		t.Fatalf("request: %v %s", r.header, r.body)
	}
	if err := Verify([]string{secretA}, r.header, r.body, time.Now(), 5*time.Minute); err != nil {
		t.Fatalf("own verifier: %v", err)
	}

	// Rotation: both signatures, each verifying with its own secret.
	s = mustSink(t, "url: "+srv.URL+"\nsecret: "+secretA+"\nprevious_secret: "+secretB+"\n", Options{Allow: loopback})
	if _, err := s.Send(context.Background(), delivery.Attempt{Delivery: testDelivery(body), ID: "msg_rot"}); err != nil {
		t.Fatal(err)
	}
	r = <-reqs
	if n := len(strings.Fields(r.header.Get("webhook-signature"))); n != 2 {
		t.Fatalf("rotation sends %d signatures: %q", n, r.header.Get("webhook-signature"))
	}
	for _, sec := range []string{secretA, secretB} {
		wh, _ := standardwebhooks.NewWebhook(sec)
		if err := wh.Verify(r.body, r.header); err != nil {
			t.Fatalf("rotation: %s... does not verify: %v", sec[:10], err)
		}
	}
	other, _ := standardwebhooks.NewWebhook(NewSecret())
	if err := other.Verify(r.body, r.header); err == nil {
		t.Fatal("a third secret verifies")
	}
}

func TestVerify(t *testing.T) {
	key, _ := ParseSecret(secretA)
	now := time.Unix(1_700_000_000, 0)
	body := []byte(`{"a":1}`)
	h := http.Header{}
	h.Set(HeaderID, "msg_1")
	h.Set(HeaderTimestamp, fmt.Sprint(now.Unix()))
	h.Set(HeaderSignature, "v2,nonsense "+Sign([][]byte{key}, "msg_1", now, body))
	if err := Verify([]string{secretB, secretA}, h, body, now.Add(time.Minute), 5*time.Minute); err != nil {
		t.Fatalf("valid: %v", err)
	}
	if err := Verify([]string{secretA}, h, []byte(`{"a":2}`), now, 0); !errors.Is(err, ErrNoSignature) {
		t.Fatalf("tampered body: %v", err)
	}
	if err := Verify([]string{secretA}, h, body, now.Add(time.Hour), 5*time.Minute); !errors.Is(err, ErrTimestamp) {
		t.Fatalf("old message: %v", err)
	}
	if err := Verify([]string{secretA}, h, body, now.Add(time.Hour), 0); err != nil {
		t.Fatalf("no tolerance: %v", err)
	}
	h2 := h.Clone()
	h2.Del(HeaderID)
	if err := Verify([]string{secretA}, h2, body, now, 0); !errors.Is(err, ErrMissingHeaders) {
		t.Fatalf("missing id: %v", err)
	}
	h2 = h.Clone()
	h2.Set(HeaderTimestamp, "yesterday")
	if err := Verify([]string{secretA}, h2, body, now, 0); !errors.Is(err, ErrBadTimestamp) {
		t.Fatalf("bad timestamp: %v", err)
	}
	if err := Verify([]string{"whsec_short"}, h, body, now, 0); err == nil {
		t.Fatal("a bad secret verified")
	}
	for _, bad := range []string{"", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_!!!", "whsec_c2hvcnQ="} {
		if _, err := ParseSecret(bad); err == nil {
			t.Errorf("secret %q accepted", bad)
		}
	}
	if _, err := ParseSecret(NewSecret()); err != nil {
		t.Fatal(err)
	}
}

func TestAnswersAreClassified(t *testing.T) {
	var code atomic.Int32
	var retryAfter atomic.Value
	retryAfter.Store("")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ra := retryAfter.Load().(string); ra != "" {
			w.Header().Set("Retry-After", ra)
		}
		w.WriteHeader(int(code.Load()))
		io.WriteString(w, strings.Repeat("x", 100_000))
	}))
	defer srv.Close()
	s := mustSink(t, "url: "+srv.URL+"\nsecret: "+secretA+"\n", Options{Allow: loopback})
	send := func(c int, ra string) (delivery.Response, error) {
		code.Store(int32(c))
		retryAfter.Store(ra)
		return s.Send(context.Background(), delivery.Attempt{Delivery: testDelivery("{}"), ID: "msg_1"})
	}
	for _, tc := range []struct {
		code                int
		ok, permanent, gone bool
		retryAfter          string
		wantAfter           time.Duration
	}{
		{code: 200, ok: true}, {code: 204, ok: true}, {code: 202, ok: true},
		{code: 410, permanent: true, gone: true},
		{code: 400, permanent: true}, {code: 401, permanent: true}, {code: 404, permanent: true}, {code: 422, permanent: true},
		{code: 408}, {code: 409}, {code: 425}, {code: 429}, {code: 500}, {code: 502}, {code: 503},
		{code: 429, retryAfter: "7", wantAfter: 7 * time.Second},
		{code: 503, retryAfter: "120", wantAfter: 2 * time.Minute},
	} {
		resp, err := send(tc.code, tc.retryAfter)
		if resp.StatusCode != tc.code {
			t.Errorf("%d: response status %d", tc.code, resp.StatusCode)
		}
		if len(resp.Body) != 4<<10 && tc.code != 204 {
			t.Errorf("%d: response body of %d bytes kept, want the 4 KiB cap", tc.code, len(resp.Body))
		}
		if tc.ok {
			if err != nil {
				t.Errorf("%d: %v", tc.code, err)
			}
			continue
		}
		var de *delivery.Error
		isDE := errors.As(err, &de)
		switch {
		case err == nil:
			t.Errorf("%d: no error", tc.code)
		case tc.permanent && (!isDE || !de.Permanent || de.Gone != tc.gone):
			t.Errorf("%d: %v not permanent (gone %v)", tc.code, err, tc.gone)
		case !tc.permanent && isDE && de.Permanent:
			t.Errorf("%d: %v is permanent", tc.code, err)
		case tc.wantAfter > 0 && (!isDE || de.RetryAfter != tc.wantAfter):
			t.Errorf("%d: Retry-After %q not honoured: %v", tc.code, tc.retryAfter, err)
		}
	}
	// An HTTP date.
	at := time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)
	_, err := send(429, at)
	var de *delivery.Error
	if !errors.As(err, &de) || de.RetryAfter < 80*time.Second || de.RetryAfter > 91*time.Second {
		t.Fatalf("Retry-After date: %v", err)
	}
}

func TestRedirectIsNotFollowed(t *testing.T) {
	var followed atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/hook", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/elsewhere", http.StatusFound) })
	mux.HandleFunc("/elsewhere", func(w http.ResponseWriter, r *http.Request) { followed.Add(1) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	s := mustSink(t, "url: "+srv.URL+"/hook\nsecret: "+secretA+"\n", Options{Allow: loopback})
	resp, err := s.Send(context.Background(), delivery.Attempt{Delivery: testDelivery("{}"), ID: "msg_1"})
	var de *delivery.Error
	if err == nil || resp.StatusCode != 302 || !strings.Contains(err.Error(), "redirect not followed") || (errors.As(err, &de) && de.Permanent) {
		t.Fatalf("redirect: %d %v", resp.StatusCode, err)
	}
	if followed.Load() != 0 {
		t.Fatal("the redirect was followed")
	}
}

func TestHangTimesOut(t *testing.T) {
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // a 30 s hang, cut short when the test ends
		case <-time.After(30 * time.Second):
		case <-stop:
		}
	}))
	defer srv.Close()
	defer close(stop)
	s := mustSink(t, "url: "+srv.URL+"\nsecret: "+secretA+"\ntimeout: 300ms\n", Options{Allow: loopback})
	start := time.Now()
	_, err := s.Send(context.Background(), delivery.Attempt{Delivery: testDelivery("{}"), ID: "msg_1"})
	took := time.Since(start)
	var de *delivery.Error
	if err == nil || (errors.As(err, &de) && de.Permanent) || !strings.Contains(err.Error(), "no answer within 300ms") {
		t.Fatalf("hang: %v", err)
	}
	if took > 3*time.Second {
		t.Fatalf("the attempt took %s with a 300ms timeout", took)
	}
}

func TestConnectionRefusedIsTemporary(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	s := mustSink(t, "url: http://"+addr+"/\nsecret: "+secretA+"\n", Options{Allow: loopback})
	_, err := s.Send(context.Background(), delivery.Attempt{Delivery: testDelivery("{}"), ID: "msg_1"})
	var de *delivery.Error
	if err == nil || (errors.As(err, &de) && de.Permanent) || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("connection refused: %v", err)
	}
}

func TestTLSIsVerified(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake
	srv.StartTLS()
	defer srv.Close()
	cfg := "url: " + srv.URL + "\nsecret: " + secretA + "\n"
	_, err := mustSink(t, cfg, Options{Allow: loopback}).Send(context.Background(), delivery.Attempt{Delivery: testDelivery("{}"), ID: "msg_1"})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("self-signed certificate accepted: %v", err)
	}
	pool := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	resp, err := mustSink(t, cfg, Options{Allow: loopback, RootCAs: pool}).Send(context.Background(), delivery.Attempt{Delivery: testDelivery("{}"), ID: "msg_1"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("trusted certificate: %v", err)
	}
}

func TestConfigChecks(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"url: https://x.example/h\nsecret: " + secretA + "\nprevious_secret: whsec_bad\n", "previous_secret"},
		{"url: https://x.example/h\nsecret: " + secretA + "\nretry_schedule: [0s, soon]\n", "retry_schedule"},
		{"url: https://x.example/h\nsecret: " + secretA + "\nrate_limit: fast\n", "rate_limit"},
		{"url: https://x.example/h\nsecret: " + secretA + "\nconcurrency: 0\n", "concurrency"},
		{"url: https://x.example/h\nsecret: whsec_c2hvcnQ=\n", "secret"},
	} {
		_, errs := decode(t, tc.src)
		if len(errs) == 0 || !strings.Contains(fmt.Sprint(errs), tc.want) {
			t.Errorf("%q: errors %v, want one about %s", tc.src, errs, tc.want)
		}
	}
	c, errs := decode(t, "url: https://x.example/h\nsecret: "+secretA+"\nretry_schedule: [0s, 1s, 2s]\nconcurrency: 2\nrate_limit: 60/m\ndisable_after: 1h\n")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	p, err := delivery.PolicyFromConfig(c, delivery.Policy{})
	if err != nil || len(p.Schedule) != 3 || p.Schedule[2] != 2*time.Second || p.Concurrency != 2 || p.Rate != 1 || p.DisableAfter != time.Hour {
		t.Fatalf("policy: %+v %v", p, err)
	}
	if _, err := New(c); err != nil {
		t.Fatal(err)
	}
}
