package event

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

func TestBuildLogSplits(t *testing.T) {
	p := builds.Project{ID: 1, Name: "app", OwnerID: 2}
	b := builds.Build{ID: 3, Number: 4}
	text := strings.Repeat("héllo wörld \x01\n", 3000) // multi-byte runes and escapes
	evs := BuildLog(p, b, 100, []byte(text), time.Unix(0, 0))
	if len(evs) < 5 {
		t.Fatalf("%d events for %d bytes", len(evs), len(text))
	}
	var joined strings.Builder
	next := int64(100)
	for _, raw := range evs {
		if len(raw) > MaxLogEvent {
			t.Fatalf("event of %d bytes", len(raw))
		}
		var ev Envelope
		if err := json.Unmarshal(raw, &ev); err != nil {
			t.Fatal(err)
		}
		var c LogChunk
		json.Unmarshal(ev.Data, &c)
		if c.Offset != next || ev.Type != TypeBuildLog || ev.Build.ID != 3 || ev.Project.OwnerID != 2 {
			t.Fatalf("chunk at %d, want %d: %+v", c.Offset, next, ev)
		}
		next += int64(len(c.Text))
		joined.WriteString(c.Text)
	}
	if joined.String() != text {
		t.Fatal("chunks do not join back to the log")
	}
}
