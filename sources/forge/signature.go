package forge

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Errors of the signature header parsers.
var (
	ErrNoSignature        = errors.New("no signature")
	ErrMalformedSignature = errors.New("malformed signature")
)

// ParseGitHubSignature reads an X-Hub-Signature-256 header value,
// "sha256=" and the hexadecimal HMAC-SHA256 of the body, into the MAC.
func ParseGitHubSignature(header string) ([]byte, error) {
	if header == "" {
		return nil, ErrNoSignature
	}
	algo, digest, ok := strings.Cut(header, "=")
	if !ok || algo != "sha256" {
		return nil, fmt.Errorf("%w: want \"sha256=<64 hexadecimal digits>\"", ErrMalformedSignature)
	}
	return parseHexMAC(digest)
}

// ParseGiteaSignature reads an X-Gitea-Signature header value, the bare
// hexadecimal HMAC-SHA256 of the body, into the MAC.
func ParseGiteaSignature(header string) ([]byte, error) {
	if header == "" {
		return nil, ErrNoSignature
	}
	return parseHexMAC(header)
}

func parseHexMAC(digest string) ([]byte, error) {
	if len(digest) != 2*sha256.Size {
		return nil, fmt.Errorf("%w: want %d hexadecimal digits, got %d characters", ErrMalformedSignature, 2*sha256.Size, len(digest))
	}
	mac, err := hex.DecodeString(digest)
	if err != nil {
		return nil, fmt.Errorf("%w: not hexadecimal", ErrMalformedSignature)
	}
	return mac, nil
}

// MaxTokenBytes bounds an X-Gitlab-Token value.
const MaxTokenBytes = 1024

// ParseGitLabToken checks an X-Gitlab-Token header value: GitLab sends the
// shared secret itself.
func ParseGitLabToken(header string) (string, error) {
	switch {
	case header == "":
		return "", ErrNoSignature
	case len(header) > MaxTokenBytes:
		return "", fmt.Errorf("%w: longer than %d bytes", ErrMalformedSignature, MaxTokenBytes)
	}
	return header, nil
}

// VerifyHMAC reports whether mac is the HMAC-SHA256 of body under one of
// the secrets. Every secret is tried and compared in constant time, so
// the answer takes as long whichever matched.
func VerifyHMAC(body, mac []byte, secrets []string) bool {
	ok := 0
	for _, s := range secrets {
		h := hmac.New(sha256.New, []byte(s))
		h.Write(body)
		if hmac.Equal(h.Sum(nil), mac) {
			ok = 1
		}
	}
	return ok == 1
}

// VerifyToken reports whether token equals one of the secrets, in
// constant time. Both sides are hashed first, so neither the secrets'
// lengths nor the place of a first difference shows in the timing.
func VerifyToken(token string, secrets []string) bool {
	want := sha256.Sum256([]byte(token))
	ok := 0
	for _, s := range secrets {
		got := sha256.Sum256([]byte(s))
		ok |= subtle.ConstantTimeCompare(want[:], got[:])
	}
	return ok == 1
}

// Sign returns the hexadecimal HMAC-SHA256 of body under secret: the
// value of X-Gitea-Signature, and of X-Hub-Signature-256 after "sha256=".
func Sign(secret string, body []byte) string {
	h := hmac.New(sha256.New, []byte(secret))
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

// SecretPrefix starts every webhook secret buildbridge makes, so a leaked
// one is recognisable.
const SecretPrefix = "bbwh_"

// NewSecret makes a random webhook secret: the prefix and 64 hexadecimal
// digits (256 bits).
func NewSecret() (string, error) {
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("webhook secret: %w", err)
	}
	return SecretPrefix + hex.EncodeToString(raw[:]), nil
}
