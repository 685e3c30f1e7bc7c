package forge

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/buildbridge/buildbridge/sources/forge/forgetest"
)

func TestSignatureParsers(t *testing.T) {
	body := []byte(`{"ref":"refs/heads/main"}`)
	good := forgetest.HMAC("s3cret", body)
	for _, tc := range []struct {
		header string
		want   error
	}{
		{"sha256=" + good, nil},
		{"sha256=" + strings.ToUpper(good), nil},
		{"", ErrNoSignature},
		{good, ErrMalformedSignature},
		{"sha1=" + good[:40], ErrMalformedSignature},
		{"sha256=" + good[:63], ErrMalformedSignature},
		{"sha256=" + good + "0", ErrMalformedSignature},
		{"sha256=" + strings.Repeat("zz", 32), ErrMalformedSignature},
		{"sha256 =" + good, ErrMalformedSignature},
	} {
		mac, err := ParseGitHubSignature(tc.header)
		if !errors.Is(err, tc.want) || (err == nil && !VerifyHMAC(body, mac, []string{"s3cret"})) {
			t.Errorf("ParseGitHubSignature(%q) = %x, %v; want %v", tc.header, mac, err, tc.want)
		}
	}
	if _, err := ParseGiteaSignature(good); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"sha256=" + good, good[:10], "x" + good[1:]} {
		if _, err := ParseGiteaSignature(bad); !errors.Is(err, ErrMalformedSignature) {
			t.Errorf("ParseGiteaSignature(%q) = %v", bad, err)
		}
	}
	if _, err := ParseGitLabToken(""); !errors.Is(err, ErrNoSignature) {
		t.Error("empty GitLab token accepted")
	}
	if _, err := ParseGitLabToken(strings.Repeat("a", MaxTokenBytes+1)); !errors.Is(err, ErrMalformedSignature) {
		t.Error("huge GitLab token accepted")
	}
}

func TestVerify(t *testing.T) {
	body := []byte("payload")
	mac, _ := ParseGiteaSignature(Sign("new", body))
	switch {
	case !VerifyHMAC(body, mac, []string{"new"}),
		!VerifyHMAC(body, mac, []string{"other", "new"}),
		VerifyHMAC(body, mac, []string{"old"}),
		VerifyHMAC(body, mac, nil),
		VerifyHMAC([]byte("payload "), mac, []string{"new"}):
		t.Fatal("VerifyHMAC gave a wrong answer")
	}
	switch {
	case !VerifyToken("tok", []string{"tok"}),
		!VerifyToken("tok", []string{"x", "tok"}),
		VerifyToken("tok", []string{"tok2"}),
		VerifyToken("tok", nil):
		t.Fatal("VerifyToken gave a wrong answer")
	}
	s1, err := NewSecret()
	s2, _ := NewSecret()
	if err != nil || s1 == s2 || !strings.HasPrefix(s1, SecretPrefix) || len(s1) != len(SecretPrefix)+64 {
		t.Fatalf("NewSecret: %q %q %v", s1, s2, err)
	}
}

// FuzzParseGitHubSignature checks the X-Hub-Signature-256 parser never
// panics, accepts only sha256= and 64 hex digits, and that what it
// accepts verifies exactly the body it was made for.
func FuzzParseGitHubSignature(f *testing.F) {
	body := []byte(`{"zen":"x"}`)
	f.Add("sha256=" + forgetest.HMAC("k", body))
	f.Add("sha256=")
	f.Add("sha1=0123")
	f.Add("")
	f.Add("sha256=" + strings.Repeat("g", 64))
	f.Add("=sha256")
	f.Fuzz(func(t *testing.T, header string) {
		mac, err := ParseGitHubSignature(header)
		if err != nil {
			if mac != nil || (!errors.Is(err, ErrNoSignature) && !errors.Is(err, ErrMalformedSignature)) {
				t.Fatalf("%q: %x, %v", header, mac, err)
			}
			return
		}
		if len(mac) != 32 || !strings.HasPrefix(header, "sha256=") || len(header) != 71 {
			t.Fatalf("%q accepted as %x", header, mac)
		}
		want := VerifyHMAC(body, mac, []string{"k"})
		if want != strings.EqualFold(header[7:], forgetest.HMAC("k", body)) {
			t.Fatalf("%q: verify %v", header, want)
		}
	})
}

// FuzzParseGiteaSignature checks the X-Gitea-Signature parser the same
// way.
func FuzzParseGiteaSignature(f *testing.F) {
	f.Add(forgetest.HMAC("k", []byte("b")))
	f.Add("")
	f.Add("sha256=" + forgetest.HMAC("k", []byte("b")))
	f.Add(strings.Repeat("0", 63))
	f.Fuzz(func(t *testing.T, header string) {
		mac, err := ParseGiteaSignature(header)
		if err != nil {
			if mac != nil {
				t.Fatalf("%q: %x with %v", header, mac, err)
			}
			return
		}
		if len(mac) != 32 || len(header) != 64 {
			t.Fatalf("%q accepted as %x", header, mac)
		}
		if VerifyHMAC([]byte("b"), mac, []string{"k"}) != strings.EqualFold(header, forgetest.HMAC("k", []byte("b"))) {
			t.Fatalf("%q: wrong verification", header)
		}
	})
}

// FuzzGitLabToken checks the X-Gitlab-Token check accepts the secret and
// nothing else.
func FuzzGitLabToken(f *testing.F) {
	f.Add("secret-token")
	f.Add("")
	f.Add("secret-token\x00")
	f.Add(strings.Repeat("x", 2000))
	f.Fuzz(func(t *testing.T, header string) {
		tok, err := ParseGitLabToken(header)
		if err != nil {
			return
		}
		if VerifyToken(tok, []string{"secret-token"}) != (header == "secret-token") {
			t.Fatalf("%q: wrong verification", header)
		}
		if !bytes.Equal([]byte(tok), []byte(header)) {
			t.Fatalf("token %q changed to %q", header, tok)
		}
	})
}
