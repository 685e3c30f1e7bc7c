package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

func init() { mounts = append(mounts, mountDebug) }

// mountDebug serves Go's profiles on debug_addr, a loopback listener of
// its own so that no route of the public address exposes them; it closes
// when the hub shuts down.
func mountDebug(_ context.Context, h *hub) error {
	if h.cfg.DebugAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", h.cfg.DebugAddr)
	if err != nil {
		return fmt.Errorf("debug_addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.log.Error("debug listener stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	h.onShutdown = append(h.onShutdown, func(context.Context) { srv.Close() })
	h.log.Info("profiles served", "url", "http://"+ln.Addr().String()+"/debug/pprof/")
	return nil
}
