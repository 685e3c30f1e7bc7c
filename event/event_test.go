package event

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

func TestFromTransitionContract(t *testing.T) {
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	end := start.Add(72 * time.Second)
	tr := builds.Transition{
		EventID: "evt_1", Seq: 7, Time: end, From: builds.Started, To: builds.Finished,
		Build: builds.Build{ID: 9, Number: 42, State: builds.Finished, Result: builds.Failed,
			Ref: "refs/heads/main", Branch: "main", SHA: "abc", Author: "Ann", Message: "m",
			StartedAt: &start, FinishedAt: &end},
		Project:  builds.ProjectRef{ID: 3, Name: "app", OwnerID: 5},
		Previous: &builds.Previous{Number: 41, Result: builds.Passed},
	}
	raw, err := json.Marshal(FromTransition(tr, "http://h/builds/"))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	b := got["build"].(map[string]any)
	checks := map[string]any{
		"state": "FINISHED", "success": false, "result": "failed", "status": "broken",
		"number": 42.0, "duration_ms": 72000.0, "url": "http://h/builds/9", "sha": "abc",
	}
	for k, want := range checks {
		if b[k] != want {
			t.Errorf("build.%s = %v, want %v (%s)", k, b[k], want, raw)
		}
	}
	if got["type"] != "build-state-changed" || got["id"] != "evt_1" || got["seq"] != 7.0 {
		t.Errorf("envelope head wrong: %s", raw)
	}
	prev := got["previous"].(map[string]any)
	if prev["build_number"] != 41.0 || prev["result"] != "passed" {
		t.Errorf("previous = %v", prev)
	}
	if job := got["job"].(map[string]any); job["name"] != "app" {
		t.Errorf("job = %v", job)
	}
}

func TestQueuedHasNullResult(t *testing.T) {
	tr := builds.Transition{EventID: "e", To: builds.Queued,
		Build: builds.Build{ID: 1, State: builds.Queued}}
	raw, _ := json.Marshal(FromTransition(tr, ""))
	var got struct {
		Build    map[string]any `json:"build"`
		Previous map[string]any `json:"previous"`
	}
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"result", "success", "duration_ms", "started_at"} {
		if v, ok := got.Build[k]; !ok || v != nil {
			t.Errorf("build.%s = %v (present %v), want null", k, v, ok)
		}
	}
	if got.Build["status"] != "queued" {
		t.Errorf("status = %v", got.Build["status"])
	}
	if v, ok := got.Previous["result"]; !ok || v != nil {
		t.Errorf("previous.result = %v, want null", v)
	}
}
