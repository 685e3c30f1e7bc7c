package realtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"
)

// Defaults applied by Config.setDefaults.
const (
	DefaultActivityTimeout       = 120 * time.Second
	DefaultPongTimeout           = 30 * time.Second
	DefaultMaxMessageSize        = 10 << 10
	DefaultWriteTimeout          = 10 * time.Second
	DefaultSendQueueSize         = 128
	DefaultClientEventsPerSecond = 10
	DefaultWebhookBatchWindow    = time.Second
	DefaultAuthorizeTimeout      = 5 * time.Second
	DefaultHeartbeatInterval     = 2 * time.Second
	DefaultNodeTimeout           = 10 * time.Second
	DefaultFlushInterval         = 100 * time.Millisecond
)

// Limits of the Pusher protocol and HTTP API.
const (
	// MaxEventDataSize is the largest data of one published event.
	MaxEventDataSize = 10 << 10
	// MaxPublishChannels is the most channels one event may be published to.
	MaxPublishChannels = 100
	// MaxBatchEvents is the most events one batch_events request may carry.
	MaxBatchEvents = 10
	// MaxPresenceMembers is the default of App.MaxPresenceMembers.
	MaxPresenceMembers = 100
	// MaxNameLength bounds channel names, event names and user ids.
	MaxNameLength = 200
)

// Config configures a Server.
type Config struct {
	// Apps served; at least one.
	Apps []App
	// ActivityTimeout is how long a connection may stay silent before the
	// server sends it a pusher:ping. It is sent to clients, in seconds, in
	// pusher:connection_established. Default 120s.
	ActivityTimeout time.Duration
	// PongTimeout is how long the server waits for any message after its
	// pusher:ping before closing the connection with 4201. Default 30s.
	PongTimeout time.Duration
	// MaxMessageSize bounds one incoming WebSocket message. Larger
	// messages are answered with a pusher:error and dropped; messages
	// beyond 8 times the limit close the connection (1009). Default 10 KiB.
	MaxMessageSize int
	// WriteTimeout bounds one flush of a connection's send queue; a
	// client that does not read for that long is disconnected. Default 10s.
	WriteTimeout time.Duration
	// SendQueueSize is how many frames may wait for one connection; a
	// connection whose queue is full is disconnected with 4200 instead of
	// slowing publishers down. Default 128.
	SendQueueSize int
	// WebhookBatchWindow is how long webhook events are collected before
	// one batched request is sent per app. Default 1s.
	WebhookBatchWindow time.Duration
	// WebhookSender delivers server webhooks. Nil means HTTPWebhookSender
	// with a 10s timeout.
	WebhookSender WebhookSender
	// Logger receives structured logs. Nil means slog.Default().
	Logger *slog.Logger
	// Broker carries published events between nodes. Nil means an
	// in-process broker serving this Server alone.
	Broker Broker
	// Cluster tunes the cluster view; it is used only with a Broker.
	Cluster ClusterConfig
	// Hooks let the host application take part in decisions.
	Hooks Hooks
	// Now returns the current time; tests set it. Nil means time.Now.
	Now func() time.Time
}

// App is one Pusher application: its credentials and settings.
type App struct {
	ID      string
	Key     string
	Secret  string
	Cluster string
	// EnableClientEvents lets clients send client-* events on private and
	// presence channels.
	EnableClientEvents bool
	// EnableSubscriptionCount sends pusher_internal:subscription_count to
	// the subscribers of public and private channels when their number
	// changes.
	EnableSubscriptionCount bool
	// MaxConnections caps this app's connections on this node; 0 means no
	// cap. A connection over the cap is refused with 4100.
	MaxConnections int
	// ClientEventsPerSecond caps client events per connection. Default 10.
	ClientEventsPerSecond int
	// MaxPresenceMembers caps the distinct users of one presence channel,
	// counted on every node of a cluster (see ClusterConfig for how
	// exactly). Default MaxPresenceMembers (100).
	MaxPresenceMembers int
	// AllowedOrigins lists the Origin host patterns (path.Match syntax,
	// e.g. "*.example.com") browsers may connect from; empty allows all.
	AllowedOrigins []string
	// Webhook configures server webhooks; a zero value sends none.
	Webhook WebhookConfig
}

// WebhookConfig configures the server webhooks of one app.
type WebhookConfig struct {
	// URL receives the batched webhooks; empty disables them.
	URL string
	// Events lists the webhook event names to send (channel_occupied,
	// channel_vacated, member_added, member_removed); empty sends all.
	Events []string
}

// Hooks are optional callbacks into the host application.
type Hooks struct {
	// Authorize is called before a private, presence or encrypted channel
	// subscription is accepted, after its signature has been checked. A
	// non-nil error refuses the subscription: the client receives a
	// pusher:subscription_error with status 403 and the error's text.
	// It runs on the connection's read loop, with a 5s deadline.
	Authorize func(ctx context.Context, req SubscribeRequest) error
}

// SubscribeRequest describes a subscription waiting for Hooks.Authorize.
type SubscribeRequest struct {
	AppID    string
	SocketID string
	Channel  string
	// UserID is the user the socket was bound to with Server.BindSocket,
	// or "" when it was not bound.
	UserID string
	// ChannelData is the presence channel_data, or "".
	ChannelData string
}

// Webhook event names.
const (
	WebhookChannelOccupied = "channel_occupied"
	WebhookChannelVacated  = "channel_vacated"
	WebhookMemberAdded     = "member_added"
	WebhookMemberRemoved   = "member_removed"
)

func (c *Config) setDefaults() {
	if c.ActivityTimeout == 0 {
		c.ActivityTimeout = DefaultActivityTimeout
	}
	if c.PongTimeout == 0 {
		c.PongTimeout = DefaultPongTimeout
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = DefaultMaxMessageSize
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.SendQueueSize == 0 {
		c.SendQueueSize = DefaultSendQueueSize
	}
	if c.WebhookBatchWindow == 0 {
		c.WebhookBatchWindow = DefaultWebhookBatchWindow
	}
	if c.WebhookSender == nil {
		c.WebhookSender = &HTTPWebhookSender{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	for i := range c.Apps {
		if c.Apps[i].ClientEventsPerSecond == 0 {
			c.Apps[i].ClientEventsPerSecond = DefaultClientEventsPerSecond
		}
		if c.Apps[i].MaxPresenceMembers == 0 {
			c.Apps[i].MaxPresenceMembers = MaxPresenceMembers
		}
	}
	c.Cluster.setDefaults()
}

// Validate reports the first configuration error, naming the field.
func (c *Config) Validate() error {
	if len(c.Apps) == 0 {
		return errors.New("realtime: Apps: at least one app is required")
	}
	ids := make(map[string]bool, len(c.Apps))
	keys := make(map[string]bool, len(c.Apps))
	for i, a := range c.Apps {
		field := fmt.Sprintf("realtime: Apps[%d]", i)
		switch {
		case a.ID == "":
			return fmt.Errorf("%s.ID: required", field)
		case a.Key == "":
			return fmt.Errorf("%s.Key: required", field)
		case a.Secret == "":
			return fmt.Errorf("%s.Secret: required", field)
		case ids[a.ID]:
			return fmt.Errorf("%s.ID: %q is used by another app", field, a.ID)
		case keys[a.Key]:
			return fmt.Errorf("%s.Key: %q is used by another app", field, a.Key)
		case a.MaxConnections < 0:
			return fmt.Errorf("%s.MaxConnections: must not be negative", field)
		case a.ClientEventsPerSecond < 0:
			return fmt.Errorf("%s.ClientEventsPerSecond: must not be negative", field)
		case a.MaxPresenceMembers < 0:
			return fmt.Errorf("%s.MaxPresenceMembers: must not be negative", field)
		case len(a.ID) > MaxNameLength || !validToken(a.ID):
			return fmt.Errorf("%s.ID: %q must be letters, digits, '-' or '_'", field, a.ID)
		case len(a.Key) > MaxNameLength || !validToken(a.Key):
			return fmt.Errorf("%s.Key: %q must be letters, digits, '-' or '_'", field, a.Key)
		}
		ids[a.ID], keys[a.Key] = true, true
		if a.Webhook.URL != "" {
			u, err := url.Parse(a.Webhook.URL)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return fmt.Errorf("%s.Webhook.URL: %q is not an http(s) URL", field, a.Webhook.URL)
			}
		}
		for _, e := range a.Webhook.Events {
			switch e {
			case WebhookChannelOccupied, WebhookChannelVacated, WebhookMemberAdded, WebhookMemberRemoved:
			default:
				return fmt.Errorf("%s.Webhook.Events: unknown event %q", field, e)
			}
		}
	}
	switch {
	case c.ActivityTimeout < 0:
		return errors.New("realtime: ActivityTimeout: must be positive")
	case c.PongTimeout < 0:
		return errors.New("realtime: PongTimeout: must be positive")
	case c.MaxMessageSize < 0:
		return errors.New("realtime: MaxMessageSize: must be positive")
	case c.WriteTimeout < 0:
		return errors.New("realtime: WriteTimeout: must be positive")
	case c.SendQueueSize < 0:
		return errors.New("realtime: SendQueueSize: must be positive")
	case c.WebhookBatchWindow < 0:
		return errors.New("realtime: WebhookBatchWindow: must be positive")
	}
	return c.Cluster.Validate()
}

// validToken reports whether s is non-empty and made of letters, digits,
// '-' and '_': safe in URL paths and NATS subjects.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '-' || b == '_') {
			return false
		}
	}
	return true
}
