package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/buildbridge/buildbridge/api"
	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/routes"
	"github.com/buildbridge/buildbridge/store"
	"github.com/buildbridge/buildbridge/usage"
)

func init() {
	mounts = append(mounts, mountUsage)
	subcommands = append(subcommands, newUsageCmd)
}

// EventSystemFigures is the event of the private-system channel that
// carries each sample of the system figures.
const EventSystemFigures = "system-figures"

// usageFeature meters the API and reports on it: the middleware on every
// authenticated request, the flushes to the store, api-usage events to
// active users, usage-threshold events through the rules, and every
// system_interval the system figures on private-system and the alerts.
type usageFeature struct {
	h      *hub
	meter  *usage.Meter
	system *usage.System
	eval   *usage.Evaluator
	// alerts holds the rules file's alerts; it reloads after every reload
	// of the rules (hub.onRulesReload).
	alerts *routes.Manager
	log    *slog.Logger
}

// mountUsage wires the usage feature into the hub. Its loops start once
// the hub is ready and stop at shutdown, after the HTTP server: the last
// flush then stores every request that was answered.
func mountUsage(ctx context.Context, h *hub) error {
	uc := h.cfg.Usage
	log := h.log.With("component", "usage")
	m, err := usage.New(usage.Config{Limit: uc.RateLimit, Window: uc.RateWindow, Limits: uc.Limits, Store: h.store,
		FlushInterval: uc.FlushInterval, Logger: log})
	if err != nil {
		return fmt.Errorf("usage: %w", err)
	}
	// The rules file is loaded (and its errors reported) by the
	// deliveries; this copy serves the alerts and logs only its failures.
	alerts, err := routes.NewManager(routes.ManagerConfig{Path: h.cfg.Rules,
		Logger: slog.New(minLevel{slog.LevelWarn, log.Handler()})})
	if err != nil {
		return fmt.Errorf("rules (setting rules):\n%w", err)
	}
	u := &usageFeature{h: h, meter: m, eval: usage.NewEvaluator(log), alerts: alerts, log: log}
	u.system, err = usage.NewSystem(usage.SystemConfig{Meter: m, Outside: u.outside})
	if err != nil {
		return err
	}
	meter := usage.Middleware(m, h.api)
	h.api.UseAfterAuth(meter)
	h.onRulesReload = append(h.onRulesReload, u.reloadAlerts)
	if err := h.api.EnableUsage(api.UsageConfig{Reader: m,
		RateLimit: func(us store.User) (int, time.Duration) { return m.LimitFor(us.Name) }}); err != nil {
		return err
	}

	loops, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	run := func(fn func(context.Context)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-h.ready:
			case <-loops.Done():
				select {
				case <-h.ready: // ready, then stopped at once: fn still ends its work
				default:
					return // never ready: nothing was metered
				}
			}
			fn(loops)
		}()
	}
	run(func(ctx context.Context) {
		if err := m.Run(ctx); err != nil {
			log.Error("usage: the last counts could not be stored", "err", err)
		}
	})
	run(u.publishActivity)
	run(u.emitThresholds)
	run(u.watchSystem)
	h.onShutdown = append(h.onShutdown, func(context.Context) {
		stop()
		wg.Wait()
	})
	return nil
}

// reloadAlerts reloads the alerts of the rules file; a file with errors
// keeps the alerts in force.
func (u *usageFeature) reloadAlerts() {
	if err := u.alerts.Reload(); err == nil {
		u.log.Info("usage: alerts reloaded", "alerts", len(u.alerts.Current().Alerts()))
	}
}

// publish sends one message on the embedded realtime server.
func (u *usageFeature) publish(ctx context.Context, channel, name string, data []byte) {
	if u.h.rt == nil {
		return
	}
	if err := u.h.rt.Publish(ctx, u.h.cfg.Realtime.AppID, []string{channel}, name, string(data), ""); err != nil {
		u.log.Debug("usage: publish", "channel", channel, "event", name, "err", err)
	}
}

// publishActivity sends, every api_usage_interval, an api-usage event to
// each user who used the API since the last one, on their own channel.
// It goes straight to the channel (not through the rules): it is
// frequent, and worthless a moment later.
func (u *usageFeature) publishActivity(ctx context.Context) {
	interval := u.h.cfg.Usage.APIUsageInterval
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := time.Now()
		for _, a := range u.meter.Activity(now) {
			ev, err := a.Event(now, interval)
			if err != nil {
				u.log.Warn("usage: api-usage event", "user_id", a.UserID, "err", err)
				continue
			}
			raw, err := json.Marshal(ev)
			if err != nil {
				continue
			}
			u.publish(ctx, event.UserChannel(a.UserID), event.TypeAPIUsage, raw)
		}
	}
}

// emitThresholds routes each usage-threshold crossing through the rules
// as it happens. A crossing the rules could not take is tried again with
// the next ones (its id is stable: never delivered twice).
func (u *usageFeature) emitThresholds(ctx context.Context) {
	var waiting []event.Envelope
	retry := time.NewTicker(5 * time.Second)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			u.emit(context.Background(), append(waiting, thresholdEvents(u.meter.Thresholds())...))
			return
		case <-u.meter.ThresholdsReady():
		case <-retry.C:
			if len(waiting) == 0 {
				continue
			}
		}
		waiting = u.emit(ctx, append(waiting, thresholdEvents(u.meter.Thresholds())...))
	}
}

func thresholdEvents(ths []usage.Threshold) []event.Envelope {
	out := make([]event.Envelope, len(ths))
	for i, th := range ths {
		out[i] = th.Event()
	}
	return out
}

// emit routes events through the rules and returns those it could not.
func (u *usageFeature) emit(ctx context.Context, evs []event.Envelope) []event.Envelope {
	var failed []event.Envelope
	for _, ev := range evs {
		if u.h.emit == nil {
			return nil
		}
		if err := u.h.emit(ctx, ev); err != nil {
			u.log.Warn("usage: event not routed", "event_id", ev.ID, "type", ev.Type, "err", err)
			failed = append(failed, ev)
		}
	}
	return failed
}

// watchSystem samples the system figures every system_interval, sends
// them to private-system, holds the alerts against them and routes
// system-alert and system-recovered through the rules (and sends them to
// private-system too).
func (u *usageFeature) watchSystem(ctx context.Context) {
	tick := time.NewTicker(u.h.cfg.Usage.SystemInterval)
	defer tick.Stop()
	var waiting []event.Envelope
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		f, err := u.system.Sample(ctx)
		if err != nil {
			u.log.Warn("usage: some system figures could not be read; the last ones are used", "err", err)
		}
		if raw, err := json.Marshal(f); err == nil {
			u.publish(ctx, api.SystemChannel, EventSystemFigures, raw)
		}
		evs := u.eval.Evaluate(u.alerts.Current().Alerts(), f)
		for _, ev := range evs {
			if raw, err := json.Marshal(ev); err == nil {
				u.publish(ctx, api.SystemChannel, ev.Type, raw)
			}
			u.log.Info("usage: "+ev.Type, "event_id", ev.ID, "data", string(ev.Data))
		}
		waiting = u.emit(ctx, append(waiting, evs...))
	}
}

// outside reads the figures of the rest of the hub from its Prometheus
// registry (the queue, the delivery engine, the store's collector) and
// the realtime server.
func (u *usageFeature) outside(context.Context) (usage.Outside, error) {
	var o usage.Outside
	if u.h.rt != nil {
		o.Connections = int64(u.h.rt.Stats().Connections)
	}
	mfs, err := u.h.reg.Gather()
	if mfs == nil && err != nil {
		return o, fmt.Errorf("gather metrics: %w", err)
	}
	sum := func(name string) int64 {
		var total float64
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				// A metric has one of these; the others read 0.
				total += m.GetCounter().GetValue() + m.GetGauge().GetValue() + m.GetUntyped().GetValue()
			}
		}
		return int64(total)
	}
	o.BuildsFinished = sum("buildbridge_builds_finished_total")
	o.BuildsRunning = sum("buildbridge_builds_running")
	o.QueueDepth = sum("buildbridge_queue_depth")
	o.DeliveryFailures = sum("buildbridge_delivery_failures_total")
	o.DeliveryBacklog = sum("buildbridge_delivery_pending")
	return o, nil
}

// minLevel drops records below a level.
type minLevel struct {
	min slog.Level
	slog.Handler
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{h.min, h.Handler.WithAttrs(as)}
}

func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{h.min, h.Handler.WithGroup(name)}
}

// newUsageCmd is `buildbridge usage`: every user's API usage (admins), or
// the caller's own by day and route (--mine), as a table.
func newUsageCmd() *cobra.Command {
	c := &apiClient{}
	var from, to, user string
	var mine, asJSON bool
	cmd := &cobra.Command{
		Use:   "usage",
		Short: "API usage per user (admins), or yours by day and route (--mine)",
		Long: "Prints the API usage of the hub at --url (BUILDBRIDGE_URL) as a table: every user's, from\n" +
			"GET /api/v1/admin/usage, with an admin's --token (BUILDBRIDGE_TOKEN); with --mine, the\n" +
			"caller's own by day and route, from GET /api/v1/user/usage. The range is the last 7 days\n" +
			"unless --from and --to (YYYY-MM-DD, UTC) say otherwise.",
		Args:              cobra.NoArgs,
		PersistentPreRunE: func(*cobra.Command, []string) error { return c.resolve() },
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			for k, v := range map[string]string{"from": from, "to": to, "user": user} {
				if v != "" {
					q.Set(k, v)
				}
			}
			path := "/api/v1/admin/usage"
			if mine {
				if user != "" {
					return errors.New("--user and --mine exclude each other")
				}
				path = "/api/v1/user/usage"
			}
			if len(q) > 0 {
				path += "?" + q.Encode()
			}
			var raw json.RawMessage
			if err := c.do(cmd.Context(), "GET", path, nil, &raw); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				_, err := fmt.Fprintln(out, string(raw))
				return err
			}
			if mine {
				return printMyUsage(out, raw)
			}
			return printAllUsage(out, raw)
		},
	}
	addAPIFlags(cmd, c)
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "first day, YYYY-MM-DD (default: 6 days before --to)")
	f.StringVar(&to, "to", "", "last day, YYYY-MM-DD (default: today, UTC)")
	f.StringVar(&user, "user", "", "only this user")
	f.BoolVar(&mine, "mine", false, "your own usage by day and route")
	f.BoolVar(&asJSON, "json", false, "print the API's JSON answer")
	return cmd
}

type usageFigures struct {
	Requests     int64   `json:"requests"`
	Errors       int64   `json:"errors"`
	LatencyAvgMS float64 `json:"latency_avg_ms"`
	LatencyMaxMS float64 `json:"latency_max_ms"`
}

type routeFigures struct {
	Route string `json:"route"`
	usageFigures
}

func (f usageFigures) cells() string {
	rate := 0.0
	if f.Requests > 0 {
		rate = 100 * float64(f.Errors) / float64(f.Requests)
	}
	return fmt.Sprintf("%d\t%d\t%.1f%%\t%.1f\t%.1f", f.Requests, f.Errors, rate, f.LatencyAvgMS, f.LatencyMaxMS)
}

func printAllUsage(w io.Writer, raw []byte) error {
	var resp struct {
		From, To string
		Total    usageFigures
		Users    []struct {
			User string `json:"user"`
			usageFigures
			Days   int            `json:"days"`
			Routes []routeFigures `json:"routes"`
		} `json:"users"`
		RateLimits map[string]struct {
			Limit         int     `json:"limit"`
			WindowSeconds float64 `json:"window_seconds"`
		} `json:"rate_limits"`
	}
	if err := json.Unmarshal(raw, &resp); err != nil {
		return fmt.Errorf("unexpected answer: %w", err)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "USER\tREQUESTS\tERRORS\tERROR %\tAVG MS\tMAX MS\tDAYS\tRATE LIMIT\tBUSIEST ROUTE")
	for _, u := range resp.Users {
		limit := "-"
		if l, ok := resp.RateLimits[u.User]; ok {
			limit = fmt.Sprintf("%d/%s", l.Limit, usage.FormatWindow(time.Duration(l.WindowSeconds*float64(time.Second))))
		}
		busiest := "-"
		if len(u.Routes) > 0 {
			busiest = fmt.Sprintf("%s (%d)", u.Routes[0].Route, u.Routes[0].Requests)
		}
		name := u.User
		if name == "" {
			name = "(deleted)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", name, u.cells(), u.Days, limit, busiest)
	}
	fmt.Fprintf(tw, "TOTAL\t%s\t\t\t\n", resp.Total.cells())
	if err := tw.Flush(); err != nil {
		return err
	}
	users := "users"
	if len(resp.Users) == 1 {
		users = "user"
	}
	_, err := fmt.Fprintf(w, "%d %s, %s to %s (UTC)\n", len(resp.Users), users, resp.From, resp.To)
	return err
}

func printMyUsage(w io.Writer, raw []byte) error {
	var resp struct {
		From, To string
		Total    usageFigures
		Days     []struct {
			Day string `json:"day"`
			usageFigures
			Routes []routeFigures `json:"routes"`
		} `json:"days"`
		RateLimit *struct {
			Limit         int     `json:"limit"`
			WindowSeconds float64 `json:"window_seconds"`
		} `json:"rate_limit"`
	}
	if err := json.Unmarshal(raw, &resp); err != nil {
		return fmt.Errorf("unexpected answer: %w", err)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DAY\tROUTE\tREQUESTS\tERRORS\tERROR %\tAVG MS\tMAX MS")
	for _, d := range resp.Days {
		fmt.Fprintf(tw, "%s\t(all)\t%s\n", d.Day, d.cells())
		for _, r := range d.Routes {
			fmt.Fprintf(tw, "\t%s\t%s\n", r.Route, r.cells())
		}
	}
	fmt.Fprintf(tw, "TOTAL\t\t%s\n", resp.Total.cells())
	if err := tw.Flush(); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s to %s (UTC)", resp.From, resp.To)
	if l := resp.RateLimit; l != nil {
		fmt.Fprintf(&b, "; rate limit %d requests per %s per token", l.Limit, usage.FormatWindow(time.Duration(l.WindowSeconds*float64(time.Second))))
	}
	_, err := fmt.Fprintln(w, b.String())
	return err
}
