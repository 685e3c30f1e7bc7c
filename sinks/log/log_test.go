package log

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/sinks"
)

func config(t *testing.T, src string) *sinks.Config {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
		t.Fatal(err)
	}
	tp, ok := sinks.Lookup("log")
	if !ok || tp.New == nil {
		t.Fatal("log type not registered with an implementation")
	}
	c, errs := tp.Decode("audit", doc.Content[0], &sinks.Resolver{})
	if len(errs) > 0 {
		t.Fatal(errs[0])
	}
	return c
}

func TestDeliverWritesOneRecordPerDelivery(t *testing.T) {
	path := filepath.Join(t.TempDir(), "deliveries.log")
	s, err := sinks.New(config(t, "type: log\noutput: "+path+"\nformat: json\n"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	const n = 50
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			level := "info"
			if i%2 == 0 {
				level = "warn"
			}
			d := sinks.Delivery{EventID: "evt_" + string(rune('a'+i%26)), Event: event.Envelope{Type: "build-state-changed"},
				Route: "r", Sink: "audit", SinkType: "log", Target: "default", Body: []byte("app #42 broken"),
				Params: map[string]string{"level": level}}
			if err := s.Deliver(context.Background(), d); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Deliver(context.Background(), sinks.Delivery{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Deliver after Close: %v", err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lines, warns := 0, 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if rec["msg"] != "app #42 broken" || rec["sink"] != "audit" || rec["route"] != "r" || rec["event_type"] != "build-state-changed" {
			t.Fatalf("record %v", rec)
		}
		if rec["level"] == "WARN" {
			warns++
		}
		lines++
	}
	if lines != n || warns != n/2 {
		t.Fatalf("%d records (%d warn), want %d (%d)", lines, warns, n, n/2)
	}
}

func TestOutputThatCannotBeOpened(t *testing.T) {
	_, err := sinks.New(config(t, "type: log\noutput: "+filepath.Join(t.TempDir(), "no", "such", "dir", "f.log")+"\n"))
	if err == nil {
		t.Fatal("New accepted an output it cannot open")
	}
}
