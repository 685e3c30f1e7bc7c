package webhook

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Standard Webhooks headers.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// SecretPrefix starts every signing secret.
const SecretPrefix = "whsec_"

// ParseSecret decodes a signing secret: whsec_ followed by the base64 of
// at least 16 bytes.
func ParseSecret(s string) ([]byte, error) {
	raw, ok := strings.CutPrefix(strings.TrimSpace(s), SecretPrefix)
	if !ok {
		return nil, errors.New("secret must start with " + SecretPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(raw)
	if err != nil {
		return nil, errors.New("secret is not whsec_ followed by base64")
	}
	if len(key) < 16 {
		return nil, fmt.Errorf("secret has %d bytes; at least 16 are needed", len(key))
	}
	return key, nil
}

// NewSecret returns a new random signing secret (32 bytes).
func NewSecret() string {
	var b [32]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	return SecretPrefix + base64.StdEncoding.EncodeToString(b[:])
}

// signature is one v1 signature: base64 of HMAC-SHA256(key, id.ts.body).
func signature(key []byte, id string, ts int64, body []byte) string {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(id))
	h.Write([]byte{'.'})
	h.Write(strconv.AppendInt(nil, ts, 10))
	h.Write([]byte{'.'})
	h.Write(body)
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// Sign returns the webhook-signature value of a message: one v1
// signature per key, space-separated (during a rotation, the new and the
// old secret's).
func Sign(keys [][]byte, id string, ts time.Time, body []byte) string {
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = "v1," + signature(k, id, ts.Unix(), body)
	}
	return strings.Join(parts, " ")
}

// Verification errors.
var (
	ErrMissingHeaders = errors.New("missing webhook-id, webhook-timestamp or webhook-signature header")
	ErrBadTimestamp   = errors.New("webhook-timestamp is not a number of seconds")
	ErrTimestamp      = errors.New("webhook-timestamp outside the tolerance")
	ErrNoSignature    = errors.New("no signature matches")
)

// Verify checks a received message: that one of its v1 signatures was
// made with one of the secrets, and, when tolerance is positive, that its
// timestamp is within tolerance of now.
func Verify(secrets []string, header http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	id, tsText, sigs := header.Get(HeaderID), header.Get(HeaderTimestamp), header.Get(HeaderSignature)
	if id == "" || tsText == "" || sigs == "" {
		return ErrMissingHeaders
	}
	ts, err := strconv.ParseInt(strings.TrimSpace(tsText), 10, 64)
	if err != nil {
		return ErrBadTimestamp
	}
	if tolerance > 0 {
		at := time.Unix(ts, 0)
		if d := now.Sub(at); d > tolerance || d < -tolerance {
			return fmt.Errorf("%w: signed at %s, %s from now (tolerance %s)", ErrTimestamp, at.UTC().Format(time.RFC3339), d.Round(time.Second), tolerance)
		}
	}
	if len(secrets) == 0 {
		return errors.New("no secret to verify with")
	}
	for _, s := range secrets {
		key, err := ParseSecret(s)
		if err != nil {
			return err
		}
		want := []byte(signature(key, id, ts, body))
		for _, sig := range strings.Fields(sigs) {
			version, value, ok := strings.Cut(sig, ",")
			if ok && version == "v1" && hmac.Equal([]byte(value), want) {
				return nil
			}
		}
	}
	return ErrNoSignature
}
