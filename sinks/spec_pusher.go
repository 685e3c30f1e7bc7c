package sinks

import (
	"fmt"
)

// Pusher is the specification of the pusher type: events published on
// Pusher channels, by default on buildbridge's own Pusher-protocol server,
// or on an external Pusher-compatible service (host or cluster set).
//
// The rules always publish build-state-changed to private-user-<owner id>
// on a pusher sink (the dashboard depends on it): on the first pusher sink
// of the file, or on a built-in one named "realtime" when there is none.
var Pusher = Type{
	Name:        "pusher",
	Doc:         "Pusher channels on the embedded Pusher-protocol server or an external Pusher-compatible service",
	ContentType: "application/json",
	Settings: []Setting{
		{Name: "host", Kind: KindString, Doc: "host[:port] of an external Pusher-compatible server; empty: the embedded server"},
		{Name: "cluster", Kind: KindString, Doc: "cluster of an external Pusher app (instead of host)"},
		{Name: "app_id", Kind: KindString, Doc: "app id of the external app"},
		{Name: "key", Kind: KindString, Doc: "key of the external app"},
		{Name: "secret", Kind: KindSecret, Doc: "secret of the external app"},
		{Name: "secure", Kind: KindBool, Default: "true", Doc: "reach the external server over TLS"},
		{Name: "channel", Kind: KindTemplate, Role: RoleParam, Override: true,
			Doc: "channel (a template), e.g. private-project-{{.Project.ID}}"},
		{Name: "event", Kind: KindTemplate, Role: RoleParam, Override: true, Default: "{{.Event.Type}}",
			Doc: "event name (a template)"},
		{Name: "template", Kind: KindTemplate, Role: RoleBody, Override: true, Default: "{{json .Event}}",
			Doc: "event data (a template; default: the event as JSON)"},
	},
	Check:  checkPusher,
	Target: pusherTarget,
}

func init() { Register(Pusher) }

func checkPusher(c *Config) []*ConfigError {
	var errs []*ConfigError
	external := c.IsSet("host") || c.IsSet("cluster")
	if c.IsSet("host") && c.IsSet("cluster") {
		errs = append(errs, c.Errorf("cluster", "set host or cluster, not both"))
	}
	for _, k := range []string{"app_id", "key", "secret"} {
		if external && !c.IsSet(k) {
			errs = append(errs, c.Errorf(k, "required for an external Pusher server (host or cluster is set)"))
		}
		if !external && c.IsSet(k) {
			errs = append(errs, c.Errorf(k, "only used with an external server: set host or cluster, or remove %s (the embedded server has its own credentials)", k))
		}
	}
	return errs
}

// Pusher's limits on names (pusher.com/docs/channels/using_channels/channels).
const (
	maxPusherChannel = 164
	maxPusherEvent   = 200
)

// ValidPusherChannel reports whether name is a valid Pusher channel name.
func ValidPusherChannel(name string) error {
	if name == "" {
		return fmt.Errorf("empty channel name")
	}
	if len(name) > maxPusherChannel {
		return fmt.Errorf("channel name longer than %d characters", maxPusherChannel)
	}
	for _, c := range name {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '-', c == '_', c == '=', c == '@', c == ',', c == '.', c == ';':
		default:
			return fmt.Errorf("channel name %q has the character %q (allowed: letters, digits and - _ = @ , . ;)", name, c)
		}
	}
	return nil
}

func pusherTarget(_ *Config, p map[string]string) (string, error) {
	ch, ev := p["channel"], p["event"]
	if ch == "" {
		return "", fmt.Errorf("no channel: set channel on the sink or in the route's to: entry")
	}
	if err := ValidPusherChannel(ch); err != nil {
		return "", err
	}
	if ev == "" || len(ev) > maxPusherEvent {
		return "", fmt.Errorf("event name must have 1 to %d characters", maxPusherEvent)
	}
	return ch + " " + ev, nil
}
