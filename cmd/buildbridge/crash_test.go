package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/store"
)

// TestCrashRecovery kills `buildbridge serve` with SIGKILL while builds
// run and transitions are in flight, restarts it on the same data
// directory several times, and then checks that every committed
// transition produced its build-state-changed event (duplicates only with
// the same id), that no event exists without its transition, and that the
// store is consistent.
func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test skipped in -short mode")
	}
	data := t.TempDir()
	token := runCLI(t, "user", "add", "ann", "--data", data)
	repo := newTestRepo(t)
	repo.commit(t, "main", "work", map[string]string{".buildbridge.yml": "steps:\n  - name: a\n    run: sleep 1\n  - name: b\n    run: echo done\n"})
	addr := freeAddr(t)
	logs := newEventLog()
	c := client{base: "http://" + addr, token: strings.TrimSpace(token)}
	rng := rand.New(rand.NewPCG(1, 2))

	p := startServer(t, data, addr, logs, "--concurrency", "3")
	c.mustCall(t, 201, "POST", "/api/v1/projects", map[string]any{"name": "app", "repo": repo.bare})
	triggered := 0
	for round := 0; round < 4; round++ {
		for i := 0; i < 6; i++ {
			c.mustCall(t, 201, "POST", "/api/v1/projects/app/builds", map[string]any{"branch": "main"})
			triggered++
		}
		time.Sleep(time.Duration(400+rng.IntN(800)) * time.Millisecond)
		p.kill()
		p = startServer(t, data, addr, logs, "--concurrency", "3")
	}
	// Let the last server run everything to the end, then stop it cleanly.
	deadline := time.Now().Add(60 * time.Second)
	for {
		m := c.mustCall(t, 200, "GET", "/api/v1/projects/app/builds?state=FINISHED&limit=500", nil)
		if l, _ := m["builds"].([]any); len(l) == triggered {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every build finished: %v\n%s", m, p.log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitOutboxDrained(t, data, logs)
	p.stop(t)

	s, err := store.Open(context.Background(), store.Config{DataDir: data})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	list, err := s.ListBuilds(ctx, store.BuildFilter{Limit: 500})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != triggered {
		t.Fatalf("%d builds stored, %d triggered", len(list), triggered)
	}
	byID := map[string]event.Envelope{}
	for _, ev := range logs.all() {
		if prev, ok := byID[ev.ID]; ok && (prev.Seq != ev.Seq || prev.Build.State != ev.Build.State || prev.Build.ID != ev.Build.ID) {
			t.Fatalf("event %s delivered twice with different content: %+v vs %+v", ev.ID, prev.Build, ev.Build)
		}
		byID[ev.ID] = ev
	}
	committed, interrupted := 0, 0
	for _, b := range list {
		if b.Result == builds.Errored && strings.Contains(b.Reason, "stopped") {
			interrupted++
		}
		if b.State != builds.Finished || !b.Result.Valid() || b.FinishedAt == nil {
			t.Errorf("build %d inconsistent: state %s result %q", b.ID, b.State, b.Result)
		}
		if b.Result == builds.Errored && b.Reason == "" {
			t.Errorf("build %d errored without a reason", b.ID)
		}
		evs, err := s.BuildEvents(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		var states string
		for _, e := range evs {
			committed++
			states += string(e.State)[:1]
			got, ok := byID[e.EventID]
			if !ok {
				t.Errorf("committed transition %s (build %d → %s, seq %d) produced no event", e.EventID, b.ID, e.State, e.Seq)
				continue
			}
			if got.Seq != e.Seq || got.Build.State != e.State {
				t.Errorf("event %s says seq %d %s, store says %d %s", e.EventID, got.Seq, got.Build.State, e.Seq, e.State)
			}
		}
		if states != "QSF" && states != "QF" {
			t.Errorf("build %d went through %s", b.ID, states)
		}
	}
	if len(byID) != committed {
		t.Errorf("%d distinct events seen, %d transitions committed", len(byID), committed)
	}
	if n, _, _ := s.OutboxBacklog(ctx); n != 0 {
		t.Errorf("outbox still holds %d rows", n)
	}
	if interrupted == 0 {
		t.Errorf("no SIGKILL landed while a build was running; the test did not exercise recovery")
	}
	t.Logf("%d builds (%d interrupted by a kill), %d transitions, %d event deliveries (%d distinct) over 4 SIGKILLs", triggered, interrupted, committed, len(logs.all()), len(byID))
}

// waitOutboxDrained waits until the events seen cover every committed
// transition, so the final clean stop is not racing the relay.
func waitOutboxDrained(t *testing.T, data string, logs *eventLog) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		seen := map[string]bool{}
		for _, ev := range logs.all() {
			seen[ev.ID] = true
		}
		s, err := store.Open(context.Background(), store.Config{DataDir: data})
		if err != nil {
			t.Fatal(err)
		}
		rows, _ := s.SQL().Query(`SELECT event_id FROM build_events`)
		missing := 0
		for rows.Next() {
			var id string
			rows.Scan(&id)
			if !seen[id] {
				missing++
			}
		}
		rows.Close()
		s.Close()
		if missing == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Println("outbox did not drain in time")
}
