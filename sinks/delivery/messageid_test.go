package delivery_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/sinks/delivery"
	"github.com/buildbridge/buildbridge/store"
)

// oldMessageID is the message id of earlier versions, written out here
// independently of the package.
func oldMessageID(eventID, sink, target string) string {
	h := sha256.New()
	for _, s := range []string{eventID, sink, target} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return "msg_" + hex.EncodeToString(h.Sum(nil)[:16])
}

func TestMessageIDsFollowTheEventsTime(t *testing.T) {
	var prev string
	for i := range 50 {
		at := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC).Add(time.Duration(i) * 1500 * time.Microsecond)
		ev := "evt_" + strings.ToLower(ulid.MustNew(ulid.Timestamp(at), ulid.DefaultEntropy()).String())
		id := delivery.MessageID(ev, "hook", "https://example.com/x")
		if len(id) != 36 || !strings.HasPrefix(id, "msg_"+ev[4:14]) {
			t.Fatalf("%s: message id %s", ev, id)
		}
		if id != delivery.MessageID(ev, "hook", "https://example.com/x") {
			t.Fatal("not stable")
		}
		if id == delivery.MessageID(ev, "hook", "https://example.com/y") || id == delivery.MessageID(ev, "hook2", "https://example.com/x") {
			t.Fatal("another target or sink, the same id")
		}
		if i > 0 && id <= prev { // 1.5 ms apart: another millisecond each time
			t.Fatalf("ids out of time order: %s after %s", id, prev)
		}
		prev = id
	}
	// An event id that is not a ULID still gets an id of the same shape.
	if id := delivery.MessageID("endpoint-disabled:hook:x", "ops", "#ops"); len(id) != 36 || !strings.HasPrefix(id, "msg_") {
		t.Fatalf("other event id: %s", id)
	}
}

// An event the bus delivers again after an upgrade may have been stored
// by the earlier version under its old message id: it is not sent again.
func TestDeliveryStoredUnderTheOldMessageIDIsNotSentAgain(t *testing.T) {
	r := newReceiver(t)
	h := newHarness(t, "", false, []*sinks.Config{sinkConfig(t, "hook", r.srv.URL, "")}, nil)
	h.start()
	old := buildEvent(1, 1, builds.Queued)
	old.Time = time.Now().Add(-time.Minute)
	earlier := buildEvent(2, 1, builds.Queued)
	earlier.Time = old.Time
	fresh := buildEvent(3, 1, builds.Queued)
	// What the earlier version stored (and sent) for old.
	if _, err := h.store.CreateSinkDeliveries(context.Background(), []store.SinkDelivery{{
		MessageID: oldMessageID(old.ID, "hook", r.srv.URL), EventID: old.ID, EventType: old.Type, Sink: "hook",
		SinkType: "webhook", Target: r.srv.URL, Status: store.DeliverySucceeded}}); err != nil {
		t.Fatal(err)
	}
	h.enqueue(to(old, "hook", r.srv.URL), to(earlier, "hook", r.srv.URL), to(fresh, "hook", r.srv.URL))
	r.wait(2, 5*time.Second)
	time.Sleep(100 * time.Millisecond)
	got := map[string]bool{}
	for _, m := range r.got() {
		got[m.id] = true
	}
	if len(r.got()) != 2 || !got[delivery.MessageID(earlier.ID, "hook", r.srv.URL)] || !got[delivery.MessageID(fresh.ID, "hook", r.srv.URL)] {
		t.Fatalf("received %v; want the two events not stored before, once each", got)
	}
}
