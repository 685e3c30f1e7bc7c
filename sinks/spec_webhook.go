package sinks

import (
	"encoding/base64"
	"strings"
)

// Webhook is the specification of the webhook type: an HTTP POST signed
// as the Standard Webhooks specification says (webhook-id,
// webhook-timestamp, webhook-signature: v1,<base64 HMAC-SHA256>).
var Webhook = Type{
	Name:        "webhook",
	Doc:         "signed HTTP POST (Standard Webhooks)",
	ContentType: "application/json",
	Settings: []Setting{
		{Name: "url", Kind: KindURL, Required: true, Doc: "endpoint URL (http or https)"},
		{Name: "secret", Kind: KindSecret, Doc: "signing secret: whsec_ followed by base64; when absent, the hub generates one " +
			"(an admin fetches it once with POST /api/v1/sinks/{name}/secret)"},
		{Name: "headers", Kind: KindStringMap, Doc: "extra request headers"},
		{Name: "timeout", Kind: KindDuration, Default: "15s", Doc: "time allowed for one attempt"},
		{Name: "content_type", Kind: KindString, Override: true, Param: true, Default: "application/json",
			Doc: "Content-Type of the body"},
		{Name: "template", Kind: KindTemplate, Role: RoleBody, Override: true, Default: "{{json .Event}}",
			Doc: "request body (a template; default: the event as JSON)"},
	},
	Check:  checkWebhook,
	Target: webhookTarget,
}

func init() { Register(Webhook) }

// reservedHeaders are set by the webhook sink itself.
var reservedHeaders = []string{"webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "content-length", "host"}

func checkWebhook(c *Config) []*ConfigError {
	var errs []*ConfigError
	// Without a secret the hub generates one when it loads the sink (see
	// sinks/webhook.Secrets): a file without one is valid.
	if v := c.Value("secret"); c.IsSet("secret") && !v.Unresolved() {
		raw, ok := strings.CutPrefix(v.Secret().Reveal(), "whsec_")
		if b, err := base64.StdEncoding.DecodeString(raw); !ok || err != nil || len(b) < 16 {
			errs = append(errs, c.Errorf("secret", "must be whsec_ followed by the base64 of at least 16 bytes (value not shown)"))
		}
	}
	for name := range c.Map("headers") {
		if !validHeaderName(name) {
			errs = append(errs, c.Errorf("headers", "%q is not a valid header name", name))
			continue
		}
		for _, r := range reservedHeaders {
			if strings.EqualFold(name, r) {
				errs = append(errs, c.Errorf("headers", "%s is set by the webhook sink and cannot be configured", name))
			}
		}
	}
	if c.Duration("timeout") <= 0 {
		errs = append(errs, c.Errorf("timeout", "must be positive"))
	}
	return errs
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.ContainsRune("!#$%&'*+-.^_`|~", c):
		default:
			return false
		}
	}
	return true
}

func webhookTarget(c *Config, _ map[string]string) (string, error) {
	v := c.Value("url")
	if v.FromReference() {
		// The URL may carry a token: name it by a hash.
		return TargetHash(v.Reference() + "\x00" + v.Text()), nil
	}
	return v.Text(), nil
}
