package realtime

import (
	"strings"
	"testing"
)

// BenchmarkReceiveNoSubscriber is what every node pays for an event of a
// channel none of its connections holds (with several nodes, nearly every
// event a node receives): no frame is built.
func BenchmarkReceiveNoSubscriber(b *testing.B) {
	s, _ := newTestServer(b, nil)
	m := Message{Kind: KindEvent, AppID: testAppID, Channels: []string{"private-user-42"},
		Event: "build-state-changed", Data: `{"build":{"id":1,"state":"STARTED"},"payload":"` + strings.Repeat("x", 600) + `"}`}
	b.ReportAllocs()
	for b.Loop() {
		s.receive(m)
	}
}
