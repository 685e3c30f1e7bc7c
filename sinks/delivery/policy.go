package delivery

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/buildbridge/buildbridge/sinks"
)

// DefaultSchedule is the default retry schedule: the delay before each
// attempt, counted from the delivery's creation for the first and from the
// previous failure for the others.
var DefaultSchedule = []time.Duration{0, 5 * time.Second, 5 * time.Minute, 30 * time.Minute,
	2 * time.Hour, 5 * time.Hour, 10 * time.Hour, 10 * time.Hour}

// Policy is how one sink's deliveries are attempted.
type Policy struct {
	// Schedule is the delay before each attempt (default DefaultSchedule);
	// after the last attempt fails the delivery fails (the dead letter).
	Schedule []time.Duration
	// Jitter spreads each non-zero delay by ±Jitter (default 0.2).
	Jitter float64
	// Concurrency is the number of attempts to one target at once
	// (default 4).
	Concurrency int
	// Rate, when positive, limits attempts to one target per second,
	// with bursts of Burst (default: Rate rounded up).
	Rate  float64
	Burst int
	// DisableAfter disables a target that failed without a success for
	// that long (default 5 days; negative: never).
	DisableAfter time.Duration
	// MinRetryAfter and MaxRetryAfter clamp a destination's Retry-After
	// (default 1s and 1h).
	MinRetryAfter, MaxRetryAfter time.Duration
}

func (p *Policy) setDefaults() {
	if p.Schedule == nil {
		p.Schedule = DefaultSchedule
	}
	if p.Jitter == 0 {
		p.Jitter = 0.2
	}
	if p.Concurrency == 0 {
		p.Concurrency = 4
	}
	if p.Rate > 0 && p.Burst == 0 {
		p.Burst = int(math.Ceil(p.Rate))
	}
	if p.DisableAfter == 0 {
		p.DisableAfter = 5 * 24 * time.Hour
	}
	if p.MinRetryAfter == 0 {
		p.MinRetryAfter = time.Second
	}
	if p.MaxRetryAfter == 0 {
		p.MaxRetryAfter = time.Hour
	}
}

// Validate reports the first impossible setting, by field name.
func (p *Policy) Validate() error {
	switch {
	case len(p.Schedule) == 0:
		return errors.New("delivery policy: Schedule must have at least one attempt")
	case p.Jitter < 0 || p.Jitter >= 1:
		return fmt.Errorf("delivery policy: Jitter must be in [0, 1), got %g", p.Jitter)
	case p.Concurrency < 1 || p.Concurrency > 1024:
		return fmt.Errorf("delivery policy: Concurrency must be 1 to 1024, got %d", p.Concurrency)
	case p.Rate < 0:
		return fmt.Errorf("delivery policy: Rate must not be negative, got %g", p.Rate)
	case p.Rate > 0 && p.Burst < 1:
		return fmt.Errorf("delivery policy: Burst must be at least 1 with a rate, got %d", p.Burst)
	case p.MinRetryAfter < 0 || p.MaxRetryAfter < p.MinRetryAfter:
		return fmt.Errorf("delivery policy: MinRetryAfter %s and MaxRetryAfter %s", p.MinRetryAfter, p.MaxRetryAfter)
	}
	for i, d := range p.Schedule {
		if d < 0 {
			return fmt.Errorf("delivery policy: Schedule[%d] is negative", i)
		}
	}
	return nil
}

// delay is the wait before attempt tries+1 after attempt tries failed,
// with jitter; r is uniform in [0, 1).
func (p *Policy) delay(tries int, r float64) time.Duration {
	d := p.Schedule[tries]
	if d == 0 || p.Jitter == 0 {
		return d
	}
	return time.Duration(float64(d) * (1 + p.Jitter*(2*r-1)))
}

func (p *Policy) clampRetryAfter(d time.Duration) time.Duration {
	return min(max(d, p.MinRetryAfter), p.MaxRetryAfter)
}

// Names of the policy settings a sink type may declare.
const (
	SettingRetrySchedule = "retry_schedule"
	SettingConcurrency   = "concurrency"
	SettingRateLimit     = "rate_limit"
	SettingDisableAfter  = "disable_after"
)

// PolicySettings are the settings that tune a sink's delivery policy in
// the rules file. A sink type appends them to its own settings and calls
// CheckPolicy from its Check; the engine reads them with PolicyFromConfig.
func PolicySettings() []sinks.Setting {
	return []sinks.Setting{
		{Name: SettingRetrySchedule, Kind: sinks.KindStringList,
			Doc: "delay before each attempt, from the previous failure, e.g. [0s, 5s, 5m, 30m, 2h, 5h, 10h, 10h] (the default)"},
		{Name: SettingConcurrency, Kind: sinks.KindInt, Default: "4", Doc: "attempts to one target at once"},
		{Name: SettingRateLimit, Kind: sinks.KindString,
			Doc: "attempts per target, like 10/s or 600/m (optionally /s:BURST); empty: no limit"},
		{Name: SettingDisableAfter, Kind: sinks.KindDuration, Default: "120h",
			Doc: "disable a target that failed without a success for this long (0s: never)"},
	}
}

// CheckPolicy validates the policy settings of a sink configuration.
func CheckPolicy(c *sinks.Config) []*sinks.ConfigError {
	var errs []*sinks.ConfigError
	if _, err := parseSchedule(c.List(SettingRetrySchedule)); err != nil {
		errs = append(errs, c.Errorf(SettingRetrySchedule, "%v", err))
	}
	if c.TypeSpec().Setting(SettingConcurrency) != nil {
		if n := c.Int(SettingConcurrency); n < 1 || n > 1024 {
			errs = append(errs, c.Errorf(SettingConcurrency, "must be 1 to 1024, got %d", n))
		}
	}
	if _, _, err := ParseRate(c.Text(SettingRateLimit)); err != nil {
		errs = append(errs, c.Errorf(SettingRateLimit, "%v", err))
	}
	return errs
}

// PolicyFromConfig is base with the policy settings the configuration
// declares and sets applied.
func PolicyFromConfig(c *sinks.Config, base Policy) (Policy, error) {
	p := base
	p.setDefaults()
	spec := c.TypeSpec()
	if spec == nil {
		return p, nil
	}
	if spec.Setting(SettingRetrySchedule) != nil && c.IsSet(SettingRetrySchedule) {
		s, err := parseSchedule(c.List(SettingRetrySchedule))
		if err != nil {
			return p, fmt.Errorf("sink %q: %s: %w", c.Name, SettingRetrySchedule, err)
		}
		p.Schedule = s
	}
	if spec.Setting(SettingConcurrency) != nil {
		p.Concurrency = int(c.Int(SettingConcurrency))
	}
	if spec.Setting(SettingRateLimit) != nil && c.Text(SettingRateLimit) != "" {
		r, b, err := ParseRate(c.Text(SettingRateLimit))
		if err != nil {
			return p, fmt.Errorf("sink %q: %s: %w", c.Name, SettingRateLimit, err)
		}
		p.Rate, p.Burst = r, b
	}
	if spec.Setting(SettingDisableAfter) != nil {
		p.DisableAfter = c.Duration(SettingDisableAfter)
		if p.DisableAfter == 0 {
			p.DisableAfter = -1
		}
	}
	if err := p.Validate(); err != nil {
		return p, fmt.Errorf("sink %q: %w", c.Name, err)
	}
	return p, nil
}

func parseSchedule(list []string) ([]time.Duration, error) {
	if list == nil {
		return nil, nil
	}
	if len(list) > 100 {
		return nil, fmt.Errorf("at most 100 attempts, got %d", len(list))
	}
	out := make([]time.Duration, len(list))
	for i, s := range list {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil || d < 0 {
			return nil, fmt.Errorf("item %d: %q is not a duration like 0s, 5s or 2h", i+1, s)
		}
		if d > 7*24*time.Hour {
			return nil, fmt.Errorf("item %d: %s is longer than a week", i+1, s)
		}
		out[i] = d
	}
	return out, nil
}

// ParseRate reads a rate limit like "10/s", "600/m", "5000/h" or
// "10/s:20" (burst 20). Empty means no limit (0, 0).
func ParseRate(s string) (rate float64, burst int, err error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, 0, nil
	}
	bad := fmt.Errorf("%q is not a rate like 10/s, 600/m or 10/s:20", s)
	spec, burstText, hasBurst := strings.Cut(s, ":")
	num, unit, ok := strings.Cut(spec, "/")
	if !ok {
		return 0, 0, bad
	}
	n, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || n <= 0 || math.IsInf(n, 0) || math.IsNaN(n) {
		return 0, 0, bad
	}
	switch strings.TrimSpace(unit) {
	case "s":
	case "m":
		n /= 60
	case "h":
		n /= 3600
	default:
		return 0, 0, bad
	}
	burst = int(math.Ceil(n))
	if hasBurst {
		b, err := strconv.Atoi(strings.TrimSpace(burstText))
		if err != nil || b < 1 || b > 1_000_000 {
			return 0, 0, bad
		}
		burst = b
	}
	return n, burst, nil
}

// bucket is a token bucket read with the engine's clock.
type bucket struct {
	rate, burst, tokens float64
	last                time.Time
}

// take takes a token and returns how long to wait before using it.
func (b *bucket) take(now time.Time) time.Duration {
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	} else {
		b.tokens = b.burst
	}
	b.last = now
	b.tokens--
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second))
}
