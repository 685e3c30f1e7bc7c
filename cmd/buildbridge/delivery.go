package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/buildbridge/buildbridge/api"
	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/routes"
	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/sinks/delivery"
	"github.com/buildbridge/buildbridge/sinks/webhook"
)

func init() { mounts = append(mounts, mountDeliveries) }

// deliveries wires the rules to the delivery engine: a bridge batch
// consumer matches build-state-changed events and persists their
// deliveries, several events in one commit under load, before the events
// are acknowledged; the engine's own events
// (endpoint-disabled) take the same match-and-persist path in process.
type deliveries struct {
	h      *hub
	rules  *routes.Manager
	engine *delivery.Engine
	mu     sync.Mutex // serializes reloads
}

// mountDeliveries loads the rules (--rules; without a file, the built-in
// rules: the user-channel delivery only), starts the delivery engine with
// the hub, consumes build-state-changed, serves the delivery API and
// reloads the rules on SIGHUP and POST /api/v1/admin/rules/reload.
func mountDeliveries(ctx context.Context, h *hub) error {
	allow, err := webhook.ParseAllowList(h.cfg.Deliveries.WebhookAllow)
	if err != nil {
		return fmt.Errorf("setting deliveries.webhook_allow: %w", err)
	}
	var d *deliveries // set below; the file watch starts only after it is
	mgr, err := routes.NewManager(routes.ManagerConfig{Path: h.cfg.Rules, Logger: h.log, Registerer: h.reg,
		OnChange: func() { d.reload() }}) // reload logs its own errors
	if err != nil {
		return fmt.Errorf("rules (setting rules):\n%w", err)
	}
	secrets, err := mountSinkSecrets(h, mgr)
	if err != nil {
		return err
	}
	d = &deliveries{h: h, rules: mgr}
	h.emit = d.emit
	d.engine, err = delivery.New(delivery.Config{
		Store: h.store, Emit: d.emit, Logger: h.log, Registerer: h.reg,
		NodeID: h.node, LeaseTTL: h.cfg.Deliveries.LeaseTTL, Retention: retention(h.cfg.Deliveries.Retention),
		NewSink: func(c *sinks.Config) (sinks.Sink, error) {
			if c.Type == webhook.Type.Name {
				return webhook.NewSink(c, webhook.Options{Allow: allow, UserAgent: "buildbridge-webhook/" + version, Secrets: secrets})
			}
			return sinks.New(c)
		},
	})
	if err != nil {
		return err
	}
	if err := d.engine.Configure(mgr.Current().Sinks()); err != nil {
		return fmt.Errorf("rules %s: %w", mgr.Current().Name(), err)
	}
	if err := h.br.AddBatchConsumer("deliveries", d.consume); err != nil {
		return err
	}
	if err := h.api.EnableDeliveries(d.engine); err != nil {
		return err
	}
	h.api.Group.POST("/admin/rules/reload", d.reloadHandler)

	// A reload through the API reaches every node: each rereads its own
	// copy of the file (core NATS, at most once; the file watch below
	// catches a change on a node that missed the notice).
	stopListen, err := h.bus.Listen(rulesReloadTopic, func(from []byte) {
		if string(from) != h.node {
			h.log.Info("rules reload requested by another node", "node", string(from))
			d.reload()
		}
	})
	if err != nil {
		return err
	}
	// The engine and the file watch start once the hub is ready (every
	// feature mounted, the embedded realtime server running), and stop
	// before the store closes.
	loops, stopLoops := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		select {
		case <-h.ready:
		case <-loops.Done():
			return
		}
		if err := d.engine.Start(ctx); err != nil && !errors.Is(err, delivery.ErrClosed) {
			h.log.Error("delivery engine did not start; deliveries stay pending", "err", err)
		}
		mgr.Watch(loops)
	}()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-hup:
				h.log.Info("SIGHUP: reloading the rules", "file", h.cfg.Rules)
				d.reload() // logs its own errors
			case <-loops.Done():
				return
			}
		}
	}()
	h.onShutdown = append(h.onShutdown, func(context.Context) {
		signal.Stop(hup)
		stopListen()
		stopLoops()
		wg.Wait()
		d.engine.Close()
	})
	return nil
}

// consume persists the deliveries of a batch of events in one Enqueue
// (one commit): the events come in publication order, and the engine
// orders each build's deliveries by seq anyway. An error refuses the
// whole batch, which the bus delivers again (and the engine
// de-duplicates by event, sink and target).
func (d *deliveries) consume(ctx context.Context, evs []event.Envelope) error {
	rules := d.rules.Current()
	var ds []sinks.Delivery
	for _, ev := range evs {
		ds = append(ds, rules.Match(ev)...)
	}
	return d.engine.Enqueue(ctx, ds)
}

// emit is the path of the events raised inside the hub (the engine's
// endpoint-disabled, and h.emit's): matched against the rules in force
// and persisted like any other, with no bus in between. Their ids are
// stable and the engine de-duplicates by (event id, sink, target), so
// emitting one again creates nothing twice; an error means nothing is
// known to be persisted, and the emitter tries again.
func (d *deliveries) emit(ctx context.Context, ev event.Envelope) error {
	return d.engine.Enqueue(ctx, d.rules.Current().Match(ev))
}

// rulesReloadTopic is the bus broadcast that asks every node to reload.
const rulesReloadTopic = "rules.reload"

// reload reloads the rules file and reconfigures the engine's sinks. A
// file with errors changes nothing.
func (d *deliveries) reload() (*routes.Rules, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.rules.Reload(); err != nil {
		return nil, err // logged by the manager
	}
	for _, fn := range d.h.onRulesReload {
		fn()
	}
	r := d.rules.Current()
	if err := d.engine.Configure(r.Sinks()); err != nil {
		d.h.log.Error("rules reloaded, but some sinks cannot be made; their deliveries wait", "err", err)
		return r, err
	}
	return r, nil
}

func (d *deliveries) reloadHandler(c *gin.Context) {
	if !api.CurrentUser(c).Admin {
		d.h.api.Fail(c, api.NewError(http.StatusForbidden, "forbidden", "only admins reload the rules"))
		return
	}
	if d.h.cfg.Rules == "" {
		d.h.api.Fail(c, api.NewError(http.StatusConflict, "no_rules_file", "the server runs without a rules file (setting rules): nothing to reload"))
		return
	}
	r, err := d.reload()
	if r != nil {
		if berr := d.h.bus.Broadcast(rulesReloadTopic, []byte(d.h.node)); berr != nil {
			d.h.log.Warn("rules reloaded here; other nodes not told (they still reload when their file changes)", "err", berr)
		}
	}
	var rerrs routes.Errors
	switch {
	case errors.As(err, &rerrs):
		d.h.api.Fail(c, api.NewError(http.StatusUnprocessableEntity, "invalid_rules",
			"the rules file was refused; the previous rules stay in force:\n%s", rerrs.Error()))
		return
	case err != nil && r == nil:
		d.h.api.Fail(c, err)
		return
	}
	resp := gin.H{"summary": r.Summary(), "warnings": r.Warnings()}
	if err != nil {
		resp["sink_errors"] = err.Error()
	}
	c.JSON(http.StatusOK, resp)
}

// retention maps the setting (0: forever) to delivery.Config's (negative:
// forever).
func retention(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
