package routes

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/sinks"
)

func rulesFile(name, logPath string) string {
	return fmt.Sprintf(`
sinks:
  l: {type: log, output: %q, format: json}
routes:
  - name: %s
    to: [l]
`, logPath, name)
}

const invalidRules = "routes:\n  - name: broken\n    to: [nope]\n"

func writeFile(t testing.TB, path, data string) {
	t.Helper()
	// Write then rename, as editors and config tools do, so that a reader
	// never sees a half-written file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == name {
			m := f.GetMetric()[0]
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

func TestManagerReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rules.yaml")
	logPath := filepath.Join(dir, "d.log")
	writeFile(t, path, rulesFile("a", logPath))
	reg := prometheus.NewRegistry()
	m, err := NewManager(ManagerConfig{Path: path, Registerer: reg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Current().RouteNames(); len(got) != 1 || got[0] != "a" {
		t.Fatalf("routes %v", got)
	}
	if metric(t, reg, "buildbridge_rules_reload_success") != 1 {
		t.Fatal("success gauge not 1 after a good load")
	}

	writeFile(t, path, invalidRules)
	err = m.Reload()
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 1 {
		t.Fatalf("Reload of an invalid file: %v", err)
	}
	if got := m.Current().RouteNames(); got[0] != "a" {
		t.Fatalf("invalid file replaced the rules: %v", got)
	}
	if m.LastError() == nil || metric(t, reg, "buildbridge_rules_reload_success") != 0 ||
		metric(t, reg, "buildbridge_rules_reload_failures_total") != 1 {
		t.Fatal("failure not recorded")
	}

	os.Remove(path)
	if err := m.Reload(); err == nil || m.Current().RouteNames()[0] != "a" {
		t.Fatalf("missing file: %v", err)
	}

	writeFile(t, path, rulesFile("b", logPath))
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := m.Current().RouteNames(); got[0] != "b" || m.LastError() != nil ||
		metric(t, reg, "buildbridge_rules_reload_success") != 1 || metric(t, reg, "buildbridge_rules_reload_failures_total") != 2 {
		t.Fatalf("after a good reload: %v, %v", got, m.LastError())
	}
}

func TestNewManager(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rules.yaml")
	writeFile(t, path, invalidRules)
	if _, err := NewManager(ManagerConfig{Path: path, Logger: slog.New(slog.DiscardHandler)}); err == nil {
		t.Fatal("NewManager accepted an invalid file")
	}
	m, err := NewManager(ManagerConfig{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Reload(); err != nil || len(m.Current().Match(SampleEvent())) != 1 {
		t.Fatal("built-in rules without a file")
	}
	if _, err := NewManager(ManagerConfig{PollInterval: time.Microsecond}); err == nil {
		t.Fatal("bad PollInterval accepted")
	}
}

func TestManagerWatch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rules.yaml")
	logPath := filepath.Join(dir, "d.log")
	writeFile(t, path, rulesFile("a", logPath))
	m, err := NewManager(ManagerConfig{Path: path, PollInterval: 20 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Watch(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	writeFile(t, path, rulesFile("b", logPath))
	waitFor("the change to be loaded", func() bool { return m.Current().RouteNames()[0] == "b" })
	writeFile(t, path, invalidRules)
	waitFor("the invalid file to be refused", func() bool { return m.LastError() != nil })
	if m.Current().RouteNames()[0] != "b" {
		t.Fatal("invalid file replaced the rules")
	}
	writeFile(t, path, rulesFile("c", logPath))
	waitFor("the fixed file to be loaded", func() bool { return m.Current().RouteNames()[0] == "c" && m.LastError() == nil })
}

// TestReloadUnderSteadyStream matches a steady stream of events while the
// file is replaced by valid and invalid versions and reloaded: every event
// is delivered exactly once to the log sink and to its user channel, by
// one version of the rules or the other, never by both or neither.
func TestReloadUnderSteadyStream(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rules.yaml")
	logPath := filepath.Join(dir, "deliveries.log")
	writeFile(t, path, rulesFile("a", logPath))
	m, err := NewManager(ManagerConfig{Path: path, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := m.Current().Sink("l")
	logSink, err := sinks.New(cfg)
	if err != nil {
		t.Fatal(err)
	}

	const events = 2000
	var reloads, refused atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the reloader: valid, invalid, other valid, …
		defer wg.Done()
		versions := []string{rulesFile("b", logPath), invalidRules, rulesFile("a", logPath), "routes: [oops"}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			writeFile(t, path, versions[i%len(versions)])
			if m.Reload() != nil {
				refused.Add(1)
			}
			reloads.Add(1)
		}
	}()

	userChannel := map[string]int{}
	byRoute := map[string]int{}
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < events || reloads.Load() < 20; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("stream too slow: %d events, %d reloads", i, reloads.Load())
		}
		b := build{result: builds.Passed}
		ev := b.event()
		ev.ID = fmt.Sprintf("evt_%06d", i)
		for _, d := range m.Current().Match(ev) {
			switch d.SinkType {
			case "pusher":
				userChannel[d.EventID]++
			case "log":
				byRoute[d.Route]++
				if err := logSink.Deliver(context.Background(), d); err != nil {
					t.Fatal(err)
				}
			}
		}
		if i%100 == 0 {
			time.Sleep(time.Millisecond) // a steady stream, not a burst
		}
	}
	close(stop)
	wg.Wait()
	if err := logSink.Close(); err != nil {
		t.Fatal(err)
	}

	f, err := os.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	logged := map[string]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var rec struct {
			EventID string `json:"event_id"`
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatal(err)
		}
		logged[rec.EventID]++
	}
	n := len(userChannel)
	if n < events {
		t.Fatalf("only %d events streamed", n)
	}
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("evt_%06d", i)
		if userChannel[id] != 1 || logged[id] != 1 {
			t.Fatalf("%s: %d user-channel and %d log deliveries, want 1 and 1", id, userChannel[id], logged[id])
		}
	}
	if len(logged) != n {
		t.Fatalf("%d events logged, %d streamed", len(logged), n)
	}
	if byRoute["a"] == 0 || byRoute["b"] == 0 || refused.Load() == 0 {
		t.Fatalf("reloads did not interleave: routes %v, %d reloads, %d refused", byRoute, reloads.Load(), refused.Load())
	}
	t.Logf("%d events, %d reloads (%d refused), deliveries by route %v", n, reloads.Load(), refused.Load(), byRoute)
}
