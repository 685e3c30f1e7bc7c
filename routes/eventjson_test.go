package routes

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

func TestEnvelopeJSONIsJSONMarshal(t *testing.T) {
	if !fastEnvelopeJSON {
		t.Fatal("the fast envelope encoder disagrees with json.Marshal on the samples and is off")
	}
	evs := variants()
	odd := build{result: builds.Failed, prev: builds.Passed}.event()
	odd.Build.Message = "\x00\x01\b\f\t\r\n\\\"<>&\u2028\u2029\xff\xfe é 😀"
	odd.Build.Reason = "r"
	odd.Build.CompareURL, odd.Build.Pusher = "https://git.example/compare/a...b", "pusher <p@x>"
	odd.Time = time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.FixedZone("X", 3600))
	evs = append(evs, odd)
	for _, ev := range evs {
		want, err := json.Marshal(ev)
		got, ok := appendEnvelope(nil, &ev)
		if !ok {
			if len(ev.Data) == 0 {
				t.Errorf("%s: not encoded", ev.ID)
			}
			continue
		}
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %s\nwant %s (%v)", ev.ID, got, want, err)
		}
	}
	far := build{result: builds.Passed}.event()
	far.Time = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	if _, ok := appendEnvelope(nil, &far); ok {
		t.Error("a year json.Marshal refuses was encoded")
	}
}

func FuzzEnvelopeJSON(f *testing.F) {
	f.Add("msg", "Ann <a@b>", "main", "evt_1", int64(42))
	f.Add("\xff\u2028<&>\x7f", "", "", "", int64(-1))
	f.Fuzz(func(t *testing.T, msg, author, branch, id string, n int64) {
		ev := build{result: builds.Failed, prev: builds.Passed, author: author, branch: branch}.event()
		ev.Build.Message, ev.ID, ev.Build.Number, ev.Seq = msg, id, n, n
		want, err := json.Marshal(ev)
		got, ok := appendEnvelope(nil, &ev)
		if ok && (err != nil || !bytes.Equal(got, want)) {
			t.Fatalf("got %s\nwant %s (%v)", got, want, err)
		}
	})
}

// The delivery engine stores the event only once when the rules mark a
// body as the event's JSON; the mark must be right both ways.
func TestBodyIsEventMarksExactlyTheEventJSON(t *testing.T) {
	r := mustParse(t, testSinks+`
  h2: {type: webhook, url: "https://hooks.example.com/y", secret: "${S}", template: '{"n": {{.Build.Number}}}'}
routes:
  - name: all
    to: [h, h2, s]
`)
	ev := build{result: builds.Passed}.event()
	want, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	marked := map[string]bool{}
	for _, d := range r.Match(ev) {
		marked[d.Sink] = d.BodyIsEvent
		if d.BodyIsEvent && !bytes.Equal(d.Body, want) {
			t.Errorf("%s: marked as the event's JSON, but the body is %s", d.Sink, d.Body)
		}
	}
	for sink, wantMark := range map[string]bool{"h": true, "h2": false, "s": false, "p": true} {
		if got, ok := marked[sink]; !ok || got != wantMark {
			t.Errorf("%s: BodyIsEvent %v (delivered: %v), want %v", sink, got, ok, wantMark)
		}
	}
}
