package main

import (
	"bufio"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/store/storetest"
)

// lastRulesLoad reads when the node last loaded its rules file
// successfully, from its /metrics.
func lastRulesLoad(t *testing.T, base string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "buildbridge_rules_last_reload_success_timestamp_seconds "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("%s/metrics has no rules reload timestamp", base)
	return 0
}

// waitReload waits until the node's rules load time passes since.
func waitReload(t *testing.T, base string, since float64, within time.Duration, what string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for lastRulesLoad(t, base) <= since {
		if time.Now().After(deadline) {
			t.Fatalf("%s: no reload within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRulesReloadReachesEveryNode: POST /api/v1/admin/rules/reload on
// node A makes node B reread its own copy of the file at once (B's file
// is unchanged, so its file watch cannot be what reloads it); and a
// change of a node's file is picked up by that node's watch alone.
func TestRulesReloadReachesEveryNode(t *testing.T) {
	if testing.Short() {
		t.Skip("two-node test skipped in -short mode")
	}
	nurl := natsURL(t)
	dsn := storetest.PostgresDSN(t)
	ns := uniqueNamespace(t)
	dataA, dataB := t.TempDir(), t.TempDir()
	token := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--admin", "--data", dataA, "--postgres", dsn))
	rules := "version: 1\nsinks:\n  log:\n    type: log\nroutes:\n  - name: all to log\n    to: [log]\n"
	fileA := writeRules(t, filepath.Join(t.TempDir(), "rules.yaml"), rules)
	fileB := writeRules(t, filepath.Join(t.TempDir(), "rules.yaml"), rules)
	args := []string{"--postgres", dsn, "--nats-url", nurl, "--nats-namespace", ns}
	addrA, addrB := freeAddr(t), freeAddr(t)
	startServer(t, dataA, addrA, newEventLog(), append(args, "--rules", fileA)...)
	startServer(t, dataB, addrB, newEventLog(), append(args, "--rules", fileB)...)
	a := client{base: "http://" + addrA, token: token}
	b := client{base: "http://" + addrB, token: token}

	before := lastRulesLoad(t, b.base)
	a.mustCall(t, 200, "POST", "/api/v1/admin/rules/reload", nil)
	waitReload(t, b.base, before, 900*time.Millisecond, "node B after a reload requested on node A")

	before = lastRulesLoad(t, a.base)
	writeRules(t, fileA, rules+"# changed\n")
	waitReload(t, a.base, before, 10*time.Second, "node A after its file changed")
}
