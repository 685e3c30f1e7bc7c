package main

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"

	"github.com/buildbridge/buildbridge/store"
	"github.com/buildbridge/buildbridge/usage"
)

// Config is every setting of `buildbridge serve`. Each has a default; a
// value comes from buildbridge.yaml, then BUILDBRIDGE_* environment
// variables, then flags, the later winning. The yaml key names the setting
// everywhere: key "realtime.max_channels" is flag --realtime-max-channels
// and variable BUILDBRIDGE_REALTIME_MAX_CHANNELS.
type Config struct {
	Addr    string `yaml:"addr" help:"address to listen on"`
	Data    string `yaml:"data" help:"data directory (SQLite, embedded bus, artifacts, workspaces)"`
	Rules   string `yaml:"rules" help:"rules file (YAML); empty: built-in rules only"`
	NATSURL string `yaml:"nats_url" help:"external NATS JetStream URL; empty: embedded bus"`
	// NATSNamespace prefixes subjects and streams, so several deployments
	// (or test runs) can share one NATS.
	NATSNamespace string `yaml:"nats_namespace" help:"prefix of the bus's subjects and streams"`
	Postgres      string `yaml:"postgres" help:"PostgreSQL DSN; empty: SQLite in the data directory"`
	// BaseURL is where users reach the hub (links in events and messages).
	BaseURL string `yaml:"base_url" help:"public URL of the hub (default http://ADDR)"`

	Concurrency int    `yaml:"concurrency" help:"builds run at once by the embedded runner"`
	OnRestart   string `yaml:"on_restart" help:"what happens to builds that were running when the server stopped, or whose remote runner lost its lease: error or requeue"`
	// RunnerEmbedded false leaves every build to remote runners.
	RunnerEmbedded   bool          `yaml:"runner_embedded" help:"run builds in this process too (false: remote runners only)"`
	RunnerLeaseTTL   time.Duration `yaml:"runner_lease_ttl" help:"how long a remote runner keeps a build without a heartbeat"`
	ShutdownGrace    time.Duration `yaml:"shutdown_grace" help:"how long running builds may go on after SIGTERM"`
	MaxLogBytes      int64         `yaml:"max_log_bytes" help:"per-build log cap (head and tail are kept)"`
	MaxArtifactBytes int64         `yaml:"max_artifact_bytes" help:"per-build artifact size cap"`
	ArtifactsDir     string        `yaml:"artifacts_dir" help:"where build artifacts are kept (default DATA/artifacts; several nodes: one directory they all mount)"`
	// ArtifactRetention deletes a build's artifacts this long after it
	// finished (0: kept forever).
	ArtifactRetention time.Duration `yaml:"artifact_retention" help:"delete a build's artifacts (files and records) this long after it finished; 0 keeps them forever"`
	DefaultTimeout    time.Duration `yaml:"default_timeout" help:"build timeout when the project sets none"`
	MaxBodyBytes      int64         `yaml:"max_body_bytes" help:"largest accepted API request body"`

	LogLevel  string `yaml:"log_level" help:"debug, info, warn or error"`
	LogFormat string `yaml:"log_format" help:"json or text"`
	DebugAddr string `yaml:"debug_addr" help:"loopback host:port serving Go's /debug/pprof profiles; empty: none"`

	Realtime   RealtimeConfig   `yaml:"realtime"`
	Deliveries DeliveriesConfig `yaml:"deliveries"`
	Usage      UsageConfig      `yaml:"usage"`
	Slack      SlackConfig      `yaml:"slack"`
}

// UsageConfig configures API metering, rate limits and the periodic
// usage and system events.
type UsageConfig struct {
	RateLimit  int           `yaml:"rate_limit" help:"API requests per token per rate_window (over it: 429)"`
	RateWindow time.Duration `yaml:"rate_window" help:"rate-limit window; it starts at a token's first request"`
	// FlushInterval bounds what a crash loses of the metered counts.
	FlushInterval    time.Duration `yaml:"flush_interval" help:"how often metered API usage is written to the store"`
	APIUsageInterval time.Duration `yaml:"api_usage_interval" help:"how often active users get an api-usage event on their channel"`
	SystemInterval   time.Duration `yaml:"system_interval" help:"how often the system figures are sampled, sent to private-system and checked against the alerts"`
	// Limits overrides RateLimit per user name (file only).
	Limits map[string]int `yaml:"limits" help:"rate_limit per user name"`
}

// DeliveriesConfig configures the delivery engine.
type DeliveriesConfig struct {
	// WebhookAllow lets webhooks reach networks the SSRF guard refuses by
	// default (loopback, private, link-local, …).
	WebhookAllow string `yaml:"webhook_allow" help:"comma-separated addresses or networks (CIDR) webhooks may reach although loopback or private"`
	// LeaseTTL is how long a node's lease of a delivery lasts unrenewed:
	// with several nodes, how soon a dead node's deliveries are taken over.
	LeaseTTL time.Duration `yaml:"lease_ttl" help:"how long a node holds a delivery without renewing its lease (several nodes: a dead node's deliveries go to the others after this)"`
	// Retention is how long finished deliveries are kept (0: forever).
	Retention time.Duration `yaml:"retention" help:"how long a finished delivery (succeeded or failed) is kept with its attempts and payload, from its creation; 0 keeps them forever"`
}

// RealtimeConfig configures the embedded Pusher-protocol server.
type RealtimeConfig struct {
	AppID   string `yaml:"app_id" help:"Pusher app id of the embedded server"`
	Key     string `yaml:"key" help:"Pusher app key"`
	Secret  string `yaml:"secret" help:"Pusher app secret (default: generated and kept in the data directory)"`
	Cluster string `yaml:"cluster" help:"cluster name reported to clients"`
	// EncryptionMasterKey is base64 of 32 bytes; private-encrypted-
	// channels are sealed with keys derived from it.
	EncryptionMasterKey string `yaml:"encryption_master_key" help:"base64 of 32 bytes for private-encrypted channels (default: generated and kept in the data directory)"`
	// AllowedOrigins lists browser origins that may open WebSockets and
	// call the auth endpoint from another site.
	AllowedOrigins string `yaml:"allowed_origins" help:"comma-separated browser origins allowed to connect (empty: any for WebSockets, same-site only for auth)"`
	ClientEvents   bool   `yaml:"client_events" help:"let clients send client- events on private and presence channels"`
	MaxChannels    int    `yaml:"max_channels" help:"open channels per user (per-user overrides in the store)"`
}

func defaultConfig() Config {
	return Config{
		Addr:             "127.0.0.1:8080",
		NATSNamespace:    "buildbridge",
		Data:             "./data",
		Concurrency:      2,
		OnRestart:        "error",
		RunnerEmbedded:   true,
		RunnerLeaseTTL:   5 * time.Second,
		ShutdownGrace:    30 * time.Second,
		MaxLogBytes:      4 << 20,
		MaxArtifactBytes: 100 << 20,
		DefaultTimeout:   30 * time.Minute,
		MaxBodyBytes:     1 << 20,
		LogLevel:         "info",
		LogFormat:        "text",
		Realtime:         RealtimeConfig{AppID: "buildbridge", Key: "buildbridge", Cluster: "local", MaxChannels: 10},
		Deliveries:       DeliveriesConfig{LeaseTTL: 30 * time.Second, Retention: 30 * 24 * time.Hour},
		Usage: UsageConfig{RateLimit: 600, RateWindow: time.Minute, FlushInterval: 5 * time.Second,
			APIUsageInterval: 5 * time.Second, SystemInterval: 5 * time.Second},
	}
}

// Validate checks every setting and names the first bad one.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("setting %s: %s", key, fmt.Sprintf(format, args...)))
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		bad("addr", "%q is not host:port (%v)", c.Addr, err)
	}
	if c.DebugAddr != "" {
		if host, _, err := net.SplitHostPort(c.DebugAddr); err != nil {
			bad("debug_addr", "%q is not host:port (%v)", c.DebugAddr, err)
		} else if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			// Profiles show memory contents and cost CPU: never on the network.
			bad("debug_addr", "%q is not a loopback address", c.DebugAddr)
		}
	}
	if c.Data == "" && c.Postgres == "" {
		bad("data", "a data directory is required")
	}
	if c.BaseURL != "" {
		if u, err := url.Parse(c.BaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("base_url", "%q must be an http:// or https:// URL", c.BaseURL)
		}
	}
	if c.NATSURL != "" {
		if u, err := url.Parse(c.NATSURL); err != nil || u.Host == "" {
			bad("nats_url", "%q must be a URL like nats://host:4222", c.NATSURL)
		}
	}
	if c.Concurrency < 1 || c.Concurrency > 256 {
		bad("concurrency", "must be between 1 and 256, got %d", c.Concurrency)
	}
	if c.RunnerLeaseTTL < time.Second || c.RunnerLeaseTTL > 10*time.Minute {
		bad("runner_lease_ttl", "must be between 1s and 10m, got %s", c.RunnerLeaseTTL)
	}
	if c.Deliveries.LeaseTTL < time.Second || c.Deliveries.LeaseTTL > 10*time.Minute {
		bad("deliveries.lease_ttl", "must be between 1s and 10m, got %s", c.Deliveries.LeaseTTL)
	}
	if c.Deliveries.Retention != 0 && c.Deliveries.Retention < time.Hour {
		bad("deliveries.retention", "must be at least 1h, or 0 to keep deliveries forever, got %s", c.Deliveries.Retention)
	}
	if c.OnRestart != "error" && c.OnRestart != "requeue" {
		bad("on_restart", "must be \"error\" or \"requeue\", got %q", c.OnRestart)
	}
	if c.ShutdownGrace < 0 {
		bad("shutdown_grace", "must not be negative")
	}
	if c.MaxLogBytes < 1024 {
		bad("max_log_bytes", "must be at least 1024, got %d", c.MaxLogBytes)
	}
	if c.MaxArtifactBytes < 0 {
		bad("max_artifact_bytes", "must not be negative")
	}
	if c.ArtifactRetention != 0 && c.ArtifactRetention < time.Minute {
		bad("artifact_retention", "must be at least 1m, or 0 to keep artifacts forever, got %s", c.ArtifactRetention)
	}
	if c.DefaultTimeout <= 0 {
		bad("default_timeout", "must be positive")
	}
	if c.MaxBodyBytes < 1024 {
		bad("max_body_bytes", "must be at least 1024, got %d", c.MaxBodyBytes)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", "must be debug, info, warn or error, got %q", c.LogLevel)
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		bad("log_format", "must be json or text, got %q", c.LogFormat)
	}
	if c.Realtime.AppID == "" || c.Realtime.Key == "" {
		bad("realtime.app_id/realtime.key", "must not be empty")
	}
	if c.Realtime.MaxChannels < 1 {
		bad("realtime.max_channels", "must be at least 1, got %d", c.Realtime.MaxChannels)
	}
	c.Usage.validate(bad)
	c.Slack.validate(bad)
	return errors.Join(errs...)
}

func (u *UsageConfig) validate(bad func(key, format string, args ...any)) {
	if u.RateLimit < 1 || u.RateLimit > usage.MaxLimit {
		bad("usage.rate_limit", "must be between 1 and %d, got %d", usage.MaxLimit, u.RateLimit)
	}
	if u.RateWindow < time.Second || u.RateWindow > usage.MaxWindow {
		bad("usage.rate_window", "must be between 1s and %s, got %s", usage.MaxWindow, u.RateWindow)
	}
	for _, s := range []struct {
		key string
		d   time.Duration
	}{{"usage.flush_interval", u.FlushInterval}, {"usage.api_usage_interval", u.APIUsageInterval}, {"usage.system_interval", u.SystemInterval}} {
		if s.d < 100*time.Millisecond || s.d > time.Hour {
			bad(s.key, "must be between 100ms and 1h, got %s", s.d)
		}
	}
	names := make([]string, 0, len(u.Limits))
	for name := range u.Limits {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := store.ValidUserName(name); err != nil {
			bad("usage.limits", "%v", err)
		}
		if n := u.Limits[name]; n < 1 || n > usage.MaxLimit {
			bad("usage.limits."+name, "must be between 1 and %d, got %d", usage.MaxLimit, n)
		}
	}
}

// setting is one leaf of Config, reached by its yaml key path.
type setting struct {
	key   string // "realtime.max_channels"
	help  string
	field reflect.Value
}

func (s setting) flag() string { return strings.NewReplacer(".", "-", "_", "-").Replace(s.key) }
func (s setting) env() string {
	return "BUILDBRIDGE_" + strings.ToUpper(strings.NewReplacer(".", "_").Replace(s.key))
}

func settings(c *Config) []setting {
	var out []setting
	var walk func(prefix string, v reflect.Value)
	walk = func(prefix string, v reflect.Value) {
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			key := prefix + f.Tag.Get("yaml")
			switch f.Type.Kind() {
			case reflect.Struct:
				walk(key+".", v.Field(i))
				continue
			case reflect.Map, reflect.Slice:
				continue // file only: no flag or variable can spell them well
			}
			out = append(out, setting{key: key, help: f.Tag.Get("help"), field: v.Field(i)})
		}
	}
	walk("", reflect.ValueOf(c).Elem())
	return out
}

func (s setting) set(raw string) error {
	switch s.field.Interface().(type) {
	case string:
		s.field.SetString(raw)
	case time.Duration:
		d, err := time.ParseDuration(raw)
		if err != nil {
			return fmt.Errorf("%q is not a duration like 30s or 5m", raw)
		}
		s.field.SetInt(int64(d))
	case int, int64:
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not an integer", raw)
		}
		s.field.SetInt(n)
	case bool:
		b, err := strconv.ParseBool(raw)
		if err != nil {
			return fmt.Errorf("%q is not true or false", raw)
		}
		s.field.SetBool(b)
	default:
		return fmt.Errorf("unsupported setting type %s", s.field.Type())
	}
	return nil
}

func (s setting) String() string {
	if d, ok := s.field.Interface().(time.Duration); ok {
		return d.String()
	}
	return fmt.Sprint(s.field.Interface())
}

// addConfigFlags declares one flag per setting plus --config. The flags'
// values are read only when set, so the file and environment are not
// overridden by flag defaults.
func addConfigFlags(fs *pflag.FlagSet) {
	def := defaultConfig()
	fs.String("config", "", "configuration file (default: buildbridge.yaml in the working directory, if present)")
	for _, s := range settings(&def) {
		fs.String(s.flag(), s.String(), s.help+" (env "+s.env()+")")
	}
}

// loadConfig builds the configuration: defaults, then the file, then the
// environment, then flags that were given.
// getenv is os.Getenv; tests pass their own lookups to loadConfig.
var getenv = os.Getenv

func loadConfig(fs *pflag.FlagSet, getenv func(string) string) (Config, error) {
	cfg := defaultConfig()
	path, _ := fs.GetString("config")
	explicit := path != ""
	if !explicit {
		path = getenv("BUILDBRIDGE_CONFIG")
		explicit = path != ""
	}
	if !explicit {
		path = "buildbridge.yaml"
	}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		dec := yaml.NewDecoder(strings.NewReader(string(data)))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil && err.Error() != "EOF" {
			return cfg, fmt.Errorf("config file %s: %w", path, err)
		}
	case !os.IsNotExist(err) || explicit:
		return cfg, fmt.Errorf("config file: %w", err)
	}
	for _, s := range settings(&cfg) {
		if v := getenv(s.env()); v != "" {
			if err := s.set(v); err != nil {
				return cfg, fmt.Errorf("environment %s: %w", s.env(), err)
			}
		}
		if f := fs.Lookup(s.flag()); f != nil && f.Changed {
			if err := s.set(f.Value.String()); err != nil {
				return cfg, fmt.Errorf("flag --%s: %w", s.flag(), err)
			}
		}
	}
	if cfg.BaseURL == "" {
		cfg.BaseURL = "http://" + cfg.Addr
	}
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	return cfg, cfg.Validate()
}
