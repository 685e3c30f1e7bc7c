// Package sinks holds what every sink shares: the Delivery that the rules
// hand to a sink, the Sink interface a sink instance implements, and the
// registry of sink types, each of which declares the settings it accepts
// in the rules file, its default templates and how to build an instance.
//
// The rules (package routes) decode and validate sink configuration
// through the registered types, so a sink package plugs in by calling
// Register from its init function and nothing else changes. The types
// pusher, slack, email and webhook are declared here (spec_*.go) with
// their settings but no implementation; their packages complete them:
//
//	func init() {
//		t, _ := sinks.Lookup("slack")
//		t.New = newSink
//		sinks.Register(t)
//	}
//
// Sinks import nothing of routes or sources.
package sinks

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/buildbridge/buildbridge/event"
)

// Delivery is one message for one destination: the event, the sink
// instance that delivers it, and the message rendered by the rules.
//
// Body and Params may be shared with other deliveries of the same event
// (one template rendered once for several targets): they are read-only.
type Delivery struct {
	// EventID is the event's stable id; with Sink and Target it identifies
	// the delivery across redeliveries.
	EventID string
	Event   event.Envelope
	// Route names the route that produced the delivery; the implicit
	// user-channel delivery has Route "(user channel)".
	Route string
	// Sink is the name of the sink instance in the rules file, SinkType
	// its type (pusher, slack, email, webhook, log).
	Sink     string
	SinkType string
	// Target is a stable key naming the destination inside the sink: the
	// webhook URL (a hash of it when the URL came from a secret
	// reference), the Slack channel, the sorted email recipients, the
	// Pusher channel and event. Deliveries of one event with the same
	// Sink and Target are sent once; the delivery engine queues per
	// (Sink, Target). It never holds a secret.
	Target string
	// Subject is set for types that have one (email).
	Subject string
	// Body is the rendered message.
	Body []byte
	// BodyIsEvent is set by the rules when Body is the event's JSON as
	// it is (the default body of webhooks and channel messages): the
	// delivery engine then stores the event once, as the body.
	BodyIsEvent bool
	// ContentType describes Body (application/json, text/plain, …).
	ContentType string
	// Params holds the effective per-delivery settings of the type
	// (pusher: channel and event; slack: channel, username, icon_emoji;
	// email: to and html; webhook: content_type; log: level), from the
	// route's overrides, the sink's settings and the type's defaults.
	Params map[string]string
}

// Key is the de-duplication key of the delivery within its event.
func (d *Delivery) Key() string { return d.Sink + "\x00" + d.Target }

// Sink is one configured sink instance. Deliver may be called from many
// goroutines at once; it returns when the message was accepted by the
// destination or with the reason it was not. Close releases what the
// instance holds; no Deliver call is made after it.
type Sink interface {
	Deliver(ctx context.Context, d Delivery) error
	Close() error
}

// Type is a kind of sink: its name in the rules file (`type: slack`), the
// settings it accepts, and how to make an instance from them.
type Type struct {
	// Name is the value of `type:` in the rules file.
	Name string
	// Doc is a one-line description, shown in the JSON Schema.
	Doc string
	// Settings are the keys a sink of this type accepts (besides `type`).
	// Settings with Override set may also be given per route in `to:`;
	// templates are settings of kind Template, HTMLTemplate or
	// TemplateList, with their default as Default.
	Settings []Setting
	// ContentType is the content type of the rendered body unless a
	// content_type parameter says otherwise.
	ContentType string
	// Check, when set, validates a decoded configuration as a whole
	// (settings that depend on each other); per-setting checks are done
	// by the decoder. Errors come from Config.Errorf.
	Check func(c *Config) []*ConfigError
	// Target computes the destination key of a delivery from the sink's
	// configuration and the delivery's effective parameters, and refuses
	// parameters that cannot be delivered (no channel, a bad address).
	// Nil means every delivery of a sink goes to one target, "default".
	Target func(c *Config, params map[string]string) (string, error)
	// New makes a sink instance. Nil for a type whose implementation is
	// not part of this build: its configuration is still validated.
	New func(c *Config) (Sink, error)
}

// Setting looks a setting up by name.
func (t *Type) Setting(name string) *Setting {
	for i := range t.Settings {
		if t.Settings[i].Name == name {
			return &t.Settings[i]
		}
	}
	return nil
}

var (
	regMu sync.RWMutex
	reg   = map[string]Type{}
)

// Register makes a sink type known. A type registered without New (the
// built-in specifications of this package) may be registered again once
// with New set, by the package that implements it; any other second
// registration of a name panics, as does an invalid specification.
func Register(t Type) {
	if err := t.validate(); err != nil {
		panic("sinks.Register: " + err.Error())
	}
	regMu.Lock()
	defer regMu.Unlock()
	if old, ok := reg[t.Name]; ok && old.New != nil {
		panic(fmt.Sprintf("sinks.Register: type %q registered twice", t.Name))
	}
	reg[t.Name] = t
}

// Lookup returns the registered type of that name.
func Lookup(name string) (Type, bool) {
	regMu.RLock()
	defer regMu.RUnlock()
	t, ok := reg[name]
	return t, ok
}

// Types returns every registered type, sorted by name.
func Types() []Type {
	regMu.RLock()
	defer regMu.RUnlock()
	out := make([]Type, 0, len(reg))
	for _, t := range reg {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ErrNotImplemented is returned (wrapped) by New for a type whose
// implementation is not part of this build.
var ErrNotImplemented = errors.New("sink type not implemented in this build")

// New makes the sink instance a decoded configuration describes.
func New(c *Config) (Sink, error) {
	t, ok := Lookup(c.Type)
	if !ok {
		return nil, fmt.Errorf("sink %q: unknown type %q", c.Name, c.Type)
	}
	if t.New == nil {
		return nil, fmt.Errorf("sink %q: %w: %s", c.Name, ErrNotImplemented, c.Type)
	}
	s, err := t.New(c)
	if err != nil {
		return nil, fmt.Errorf("sink %q (%s): %w", c.Name, c.Type, err)
	}
	return s, nil
}

func (t *Type) validate() error {
	if t.Name == "" {
		return errors.New("type without a name")
	}
	seen := map[string]bool{"type": true, "sink": true}
	for i := range t.Settings {
		s := &t.Settings[i]
		if s.Name == "" || seen[s.Name] {
			return fmt.Errorf("type %q: setting %q empty, reserved or repeated", t.Name, s.Name)
		}
		seen[s.Name] = true
		if _, err := s.defaultValue(); err != nil {
			return fmt.Errorf("type %q: setting %q: default: %w", t.Name, s.Name, err)
		}
		if s.Role != RoleNone && !s.Kind.IsTemplate() {
			return fmt.Errorf("type %q: setting %q: only templates have a role", t.Name, s.Name)
		}
		if s.Kind == KindEnum && len(s.Enum) == 0 {
			return fmt.Errorf("type %q: setting %q: enum without values", t.Name, s.Name)
		}
		if s.Kind == KindSecret && s.Override {
			return fmt.Errorf("type %q: setting %q: secrets cannot be overridden per route", t.Name, s.Name)
		}
	}
	return nil
}
