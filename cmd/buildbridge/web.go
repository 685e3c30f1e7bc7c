package main

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/buildbridge/buildbridge/web"
)

func init() { mounts = append(mounts, mountWeb) }

// mountWeb serves the dashboard at / (its pages, /assets/ and /session),
// lets the API accept its session cookie, and exposes the store's
// statement counter, which the dashboard benchmark reads.
func mountWeb(ctx context.Context, h *hub) error {
	wh, err := web.New(web.Config{Store: h.store, BaseURL: h.cfg.BaseURL, Logger: h.log.With("component", "web")})
	if err != nil {
		return err
	}
	if !wh.BundleBuilt() {
		h.log.Warn("the dashboard bundle is not built into this binary; run `make web build`")
	}
	wh.Register(h.mux)
	h.api.UseSessions(wh)
	return h.reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "buildbridge_store_queries_total",
		Help: "Statements sent to the database by the store.",
	}, func() float64 { return float64(h.store.Queries()) }))
}
