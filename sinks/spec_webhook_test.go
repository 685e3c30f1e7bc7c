package sinks

import (
	"strings"
	"testing"
	"time"
)

// TestWebhookSpecSecretOptional: a webhook sink without a secret is a
// valid configuration (the hub generates one), a written secret is still
// checked, and an attempt gets 15 s by default.
func TestWebhookSpecSecretOptional(t *testing.T) {
	c, errs := decode(t, "webhook", "type: webhook\nurl: https://x.example/h\n", env(nil))
	if len(errs) > 0 {
		t.Fatalf("webhook without a secret refused: %s", errText(errs))
	}
	if c.IsSet("secret") || !c.Secret("secret").IsZero() {
		t.Fatalf("a secret appeared: set %v", c.IsSet("secret"))
	}
	if d := c.Duration("timeout"); d != 15*time.Second {
		t.Fatalf("default timeout %s, want 15s", d)
	}
	if s := Webhook.Setting("timeout"); s == nil || s.Default != "15s" {
		t.Fatalf("timeout setting: %+v", s)
	}
	// A written secret is checked as before.
	_, errs = decode(t, "webhook", "type: webhook\nurl: https://x.example/h\nsecret: ${S}\n", env(map[string]string{"S": "whsec_c2hvcnQ="}))
	if !strings.Contains(errText(errs), "secret: must be whsec_") {
		t.Fatalf("short secret: %q", errText(errs))
	}
	c, errs = decode(t, "webhook", "type: webhook\nurl: https://x.example/h\nsecret: ${S}\ntimeout: 3s\n", env(map[string]string{"S": whsec}))
	if len(errs) > 0 || c.Secret("secret").Reveal() != whsec || c.Duration("timeout") != 3*time.Second {
		t.Fatalf("with a secret: %s", errText(errs))
	}
}
