package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/realtime"
)

func TestLoopbackOnly(t *testing.T) {
	for _, u := range []string{"nats://127.0.0.1:4222", "postgres://postgres@127.0.0.1:5432/test", "nats://localhost:4222", "postgres://[::1]:5432/x"} {
		if err := loopbackURL(u); err != nil {
			t.Errorf("%s refused: %v", u, err)
		}
	}
	for _, u := range []string{"nats://10.0.0.1:4222", "postgres://db.example.com/test", "nats://0.0.0.0:4222"} {
		if err := loopbackURL(u); err == nil {
			t.Errorf("%s accepted", u)
		}
	}
}

func TestOptionsBounded(t *testing.T) {
	o := options{scenario: "all", natsURL: "nats://127.0.0.1:4222", pgDSN: "postgres://127.0.0.1/test", timeout: time.Minute,
		subs: 10, rate: 10, duration: time.Second, payload: 600, remote: 10, viewRate: 10, phase: time.Second, logRunrs: 1}
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]func(o *options){
		"timeout over 10m": func(o *options) { o.timeout = 11 * time.Minute },
		"scenario":         func(o *options) { o.scenario = "everything" },
		"remote nats":      func(o *options) { o.natsURL = "nats://192.0.2.1:4222" },
		"phase over 1m":    func(o *options) { o.phase = 2 * time.Minute },
	} {
		c := o
		bad(&c)
		if c.validate() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := ints("2,4,x", 1, 32); err == nil {
		t.Error("ints accepted x")
	}
	if got, err := ints("2, 16", 1, 32); err != nil || len(got) != 2 || got[1] != 16 {
		t.Errorf("ints: %v, %v", got, err)
	}
}

// The event data is the size asked for, valid JSON, and fits a
// realtime event.
func TestEventData(t *testing.T) {
	for _, n := range []int{600, 2000} {
		d := eventData(n)
		if len(d) != n {
			t.Errorf("eventData(%d) is %d bytes", n, len(d))
		}
		if !json.Valid([]byte(d)) || len(d) > realtime.MaxEventDataSize {
			t.Errorf("eventData(%d) is not a valid event", n)
		}
	}
}

func TestWalkPlan(t *testing.T) {
	raw := `{"Node Type":"Limit","Plans":[{"Node Type":"LockRows","Plans":[{"Node Type":"Nested Loop","Plans":[
		{"Node Type":"Index Scan","Index Name":"builds_state","Relation Name":"builds"},
		{"Node Type":"Seq Scan","Relation Name":"project_labels","Actual Rows":10,"Rows Removed by Filter":3}]}]}]}`
	var n map[string]any
	if err := json.Unmarshal([]byte(raw), &n); err != nil {
		t.Fatal(err)
	}
	var nodes []string
	var p plan
	walkPlan(n, &nodes, &p)
	got := strings.Join(nodes, " › ")
	want := "LockRows › Nested Loop › Index Scan builds_state › Seq Scan project_labels (10 rows out, 3 filtered)"
	if got != want || !p.seqScan {
		t.Fatalf("plan %q (seq scan %v), want %q", got, p.seqScan, want)
	}
}

func TestProcCPU(t *testing.T) {
	end := time.Now().Add(50 * time.Millisecond)
	for time.Now().Before(end) {
	}
	c, err := procCPU(os.Getpid())
	if err != nil || c <= 0 {
		t.Fatalf("procCPU of self: %v, %v", c, err)
	}
	if self := selfCPU(); self < c-20*time.Millisecond {
		t.Fatalf("getrusage %v < /proc %v", self, c)
	}
}
