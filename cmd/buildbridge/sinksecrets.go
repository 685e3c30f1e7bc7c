package main

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/buildbridge/buildbridge/api"
	"github.com/buildbridge/buildbridge/routes"
	"github.com/buildbridge/buildbridge/sinks/webhook"
)

// mountSinkSecrets makes the keeper of the secrets the hub generates for
// webhook sinks whose rules give none (the delivery wiring hands it to
// every webhook sink it makes) and serves
// POST /api/v1/sinks/{name}/secret, by which an admin fetches such a
// secret once, and rotates it after that.
func mountSinkSecrets(h *hub, rules *routes.Manager) (*webhook.Secrets, error) {
	secrets, err := webhook.NewSecrets(webhook.SecretsConfig{Store: h.store, Logger: h.log})
	if err != nil {
		return nil, err
	}
	h.api.Group.POST("/sinks/:name/secret", showSinkSecret(h, rules, secrets))
	return secrets, nil
}

// showSinkSecret answers the generated secret of a webhook sink, to
// admins: the first call the secret generated when the sink was loaded
// (the server's log names the sink, never the secret), every later call a
// new secret, the replaced one still signing, alongside it, for the grace
// period (body {"grace":"24h"} or seconds; default 24h, 0 ends it at
// once). The secret is in this answer and nowhere else, ever.
func showSinkSecret(h *hub, rules *routes.Manager, secrets *webhook.Secrets) gin.HandlerFunc {
	return func(c *gin.Context) {
		if !api.CurrentUser(c).Admin {
			h.api.Fail(c, api.NewError(http.StatusForbidden, "forbidden", "only admins see and rotate sink secrets"))
			return
		}
		name := c.Param("name")
		var found bool
		for _, sc := range rules.Current().Sinks() {
			if sc.Name != name {
				continue
			}
			found = true
			switch {
			case sc.Type != webhook.Type.Name:
				h.api.Fail(c, api.NewError(http.StatusConflict, "not_a_webhook", "sink %q is a %s sink: only webhook sinks have a signing secret", name, sc.Type))
				return
			case sc.IsSet("secret"):
				h.api.Fail(c, api.NewError(http.StatusConflict, "secret_in_rules",
					"sink %q takes its secret from the rules file, which wins over a generated one: rotate it there (previous_secret)", name))
				return
			}
		}
		if !found {
			h.api.Fail(c, api.NewError(http.StatusNotFound, "not_found", "no sink %q in the rules in force", name))
			return
		}
		grace, ok := readGrace(h, c)
		if !ok {
			return
		}
		w, replaced, err := secrets.Show(c.Request.Context(), name, grace)
		if err != nil {
			h.api.Fail(c, err)
			return
		}
		if replaced {
			h.log.Info("webhook sink secret rotated", "sink", name, "by", api.CurrentUser(c).Name, "grace", grace,
				"fingerprint", webhook.Fingerprint(w.Secret))
		} else {
			h.log.Info("webhook sink secret shown", "sink", name, "by", api.CurrentUser(c).Name,
				"fingerprint", webhook.Fingerprint(w.Secret))
		}
		var prevExpires *time.Time
		if w.Previous != "" {
			prevExpires = &w.PreviousExpiresAt
		}
		c.Header("Cache-Control", "no-store")
		status := http.StatusOK
		if replaced {
			status = http.StatusCreated
		}
		c.JSON(status, gin.H{
			"sink": name, "secret": w.Secret, "fingerprint": webhook.Fingerprint(w.Secret), "created_at": w.CreatedAt,
			"rotated": replaced, "previous_expires_at": prevExpires,
		})
	}
}

// readGrace reads a rotation's optional body, {"grace":"24h"} or seconds
// (default 24h), and answers the request itself when it is wrong.
func readGrace(h *hub, c *gin.Context) (time.Duration, bool) {
	var in struct {
		Grace json.RawMessage `json:"grace"`
	}
	if c.Request.ContentLength != 0 {
		if err := h.api.Decode(c, &in); err != nil {
			h.api.Fail(c, err)
			return 0, false
		}
	}
	grace, err := parseGrace(in.Grace, 24*time.Hour)
	if err != nil {
		h.api.Fail(c, err)
		return 0, false
	}
	return grace, true
}

// parseGrace reads a grace period written as a duration ("24h") or a
// number of seconds; absent or null is def.
func parseGrace(raw json.RawMessage, def time.Duration) (time.Duration, error) {
	grace := def
	if len(raw) > 0 && string(raw) != "null" {
		var s string
		var secs float64
		switch {
		case json.Unmarshal(raw, &s) == nil:
			d, err := time.ParseDuration(s)
			if err != nil {
				return 0, api.NewError(http.StatusBadRequest, "invalid_field", "field \"grace\": %q is not a duration like \"24h\"", s)
			}
			grace = d
		case json.Unmarshal(raw, &secs) == nil:
			grace = time.Duration(secs * float64(time.Second))
		default:
			return 0, api.NewError(http.StatusBadRequest, "invalid_field", "field \"grace\" must be a duration (\"24h\") or a number of seconds")
		}
	}
	if grace < 0 || grace > maxSecretGrace {
		return 0, api.NewError(http.StatusBadRequest, "invalid_field", "field \"grace\" must be between 0 and %s", maxSecretGrace)
	}
	return grace, nil
}
