package main

import (
	"testing"

	"github.com/buildbridge/buildbridge/event"
)

func TestDescribeEvent(t *testing.T) {
	ms := int64(72_400)
	cases := []struct {
		b    event.Build
		want string
	}{
		{event.Build{Number: 42, Branch: "main", State: "FINISHED", Status: "passed", DurationMS: &ms}, "✓ app #42 main passed in 1m12s"},
		{event.Build{Number: 43, Branch: "main", State: "FINISHED", Status: "still_failing", DurationMS: &ms, Reason: `step "test" exited with status 1`},
			`✗ app #43 main still failing in 1m12s: step "test" exited with status 1`},
		{event.Build{Number: 44, Ref: "refs/tags/v1", State: "STARTED", Status: "started", SHA: "0123456789", Message: "fix it\n\nbody"},
			`▶ app #44 refs/tags/v1 started (0123456 "fix it")`},
	}
	for _, c := range cases {
		b := c.b
		if got := describeEvent(event.Envelope{Build: &b, Job: &event.Job{Name: "app"}}); got != c.want {
			t.Errorf("got %q, want %q", got, c.want)
		}
	}
}
