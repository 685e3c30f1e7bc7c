package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/routes"
	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/sinks/delivery"
	"github.com/buildbridge/buildbridge/sinks/webhook"
	"github.com/buildbridge/buildbridge/store"
)

// The deliveries consumer persists a whole batch in one Enqueue; each
// build's events still reach a target in seq order, whatever their order
// in the batch (a redelivered event comes back behind later ones) and
// with the sink sending several requests at once.
func TestDeliveriesBatchKeepsSeqOrderPerBuild(t *testing.T) {
	recv := newHookReceiver(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	rules := writeRules(t, filepath.Join(t.TempDir(), "rules.yaml"), `sinks:
  deploy:
    type: webhook
    url: `+recv.srv.URL+`/hook
    secret: `+hookSecret+`
    concurrency: 8
routes:
  - name: every build event
    to: [deploy]
`)
	mgr, err := routes.NewManager(routes.ManagerConfig{Path: rules, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(t.Context(), store.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	allow, _ := webhook.ParseAllowList("127.0.0.1")
	eng, err := delivery.New(delivery.Config{Store: st, Logger: quiet,
		NewSink: func(c *sinks.Config) (sinks.Sink, error) {
			if c.Type == webhook.Type.Name {
				return webhook.NewSink(c, webhook.Options{Allow: allow})
			}
			return sinks.New(c)
		}})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Configure(mgr.Current().Sinks()); err != nil {
		t.Fatal(err)
	}
	if err := eng.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	d := &deliveries{rules: mgr, engine: eng}

	// Three builds, five events each, every build's events in reverse
	// seq order, the builds interleaved.
	const nb, ne = 3, 5
	var batch []event.Envelope
	for s := int64(ne); s >= 1; s-- {
		for b := int64(1); b <= nb; b++ {
			state := builds.Started
			if s == ne {
				state = builds.Finished
			}
			tr := builds.Transition{EventID: fmt.Sprintf("evt_b%d_s%d", b, s), Seq: b*100 + s, Time: time.Now(),
				From: builds.Queued, To: state,
				Build:   builds.Build{ID: b, Number: b, State: state, Ref: "refs/heads/main", Branch: "main", SHA: fmt.Sprintf("%040d", b)},
				Project: builds.ProjectRef{ID: 1, Name: "app", OwnerID: 1}}
			if state == builds.Finished {
				tr.Build.Result = builds.Passed
			}
			batch = append(batch, event.FromTransition(tr, "http://bb.test/builds/"))
		}
	}
	if err := d.consume(t.Context(), batch); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(recv.accepted("/hook")) < nb*ne {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d webhooks received", len(recv.accepted("/hook")), nb*ne)
		}
		time.Sleep(20 * time.Millisecond)
	}
	last := map[int64]int64{}
	var order []string
	for _, q := range recv.accepted("/hook") {
		order = append(order, q.ev.ID)
		b := q.ev.Build.ID
		if q.ev.Seq < last[b] {
			t.Errorf("build %d: seq %d after %d", b, q.ev.Seq, last[b])
		}
		last[b] = q.ev.Seq
	}
	if t.Failed() {
		t.Logf("received %v", order)
	}
	if n := len(recv.all()); n != nb*ne {
		t.Errorf("%d requests, want %d", n, nb*ne)
	}
}
