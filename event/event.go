// Package event holds the envelope that every buildbridge event travels in:
// build-state-changed and the event types later added (endpoint-disabled,
// api-usage, system-alert, …). Rules match it, sinks render and deliver it,
// and clients receive it as JSON. It is a leaf package: the bridge builds
// envelopes, routes and sinks read them, and neither depends on the other.
package event

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

// Event type names.
const (
	TypeBuildStateChanged = "build-state-changed"
	TypeBuildLog          = "build-log"
	TypeEndpointDisabled  = "endpoint-disabled"
	TypeAPIUsage          = "api-usage"
	TypeUsageThreshold    = "usage-threshold"
	TypeSystemAlert       = "system-alert"
	TypeSystemRecovered   = "system-recovered"
)

// TopicBuildStateChanged is the bus topic build-state-changed envelopes are
// published on.
const TopicBuildStateChanged = "build-state-changed"

// Envelope is one event. For build-state-changed, Build, Job, Project and
// Previous are set; other event types carry their body in Data.
type Envelope struct {
	// ID is stable across redeliveries of the same event.
	ID   string    `json:"id"`
	Type string    `json:"type"`
	Time time.Time `json:"time"`
	// Seq orders events: it increases with every committed transition.
	Seq      int64           `json:"seq"`
	Build    *Build          `json:"build,omitempty"`
	Job      *Job            `json:"job,omitempty"`
	Project  *Project        `json:"project,omitempty"`
	Previous *Previous       `json:"previous,omitempty"`
	Data     json.RawMessage `json:"data,omitempty"`
}

// Build is the build as the public contract shows it.
type Build struct {
	ID     int64        `json:"id"`
	Number int64        `json:"number"`
	State  builds.State `json:"state"`
	// Success is true for passed, false for any other result, and null
	// (nil) before the build finished.
	Success *bool         `json:"success"`
	Result  builds.Result `json:"result"`
	Status  builds.Status `json:"status"`
	Ref     string        `json:"ref"`
	Branch  string        `json:"branch"`
	SHA     string        `json:"sha"`
	Author  string        `json:"author"`
	// AuthorEmail is the commit author's email, for rules and mail.
	AuthorEmail string `json:"author_email"`
	Message     string `json:"message"`
	// CompareURL and Pusher are set for builds a push started.
	CompareURL string     `json:"compare_url,omitempty"`
	Pusher     string     `json:"pusher,omitempty"`
	Reason     string     `json:"reason,omitempty"`
	URL        string     `json:"url"`
	StartedAt  *time.Time `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at"`
	// DurationMS is nil until the build finished.
	DurationMS *int64 `json:"duration_ms"`
}

// MarshalJSON writes an empty result as null, as the contract has it.
func (b Build) MarshalJSON() ([]byte, error) {
	type plain Build
	out := struct {
		plain
		Result *builds.Result `json:"result"`
	}{plain: plain(b)}
	if b.Result != "" {
		out.Result = &b.Result
	}
	return json.Marshal(out)
}

// Job names the job the build ran: in buildbridge, one job per project.
type Job struct {
	ID   int64  `json:"id"`
	Name string `json:"name"`
}

// Project names the build's project and its owner.
type Project struct {
	ID      int64  `json:"id"`
	Name    string `json:"name"`
	OwnerID int64  `json:"owner_id"`
}

// Previous is the previous finished build of the same project and branch;
// both fields are null when there is none.
type Previous struct {
	BuildNumber *int64         `json:"build_number"`
	Result      *builds.Result `json:"result"`
}

// UserChannel is the private channel every user's own events go to.
func UserChannel(userID int64) string {
	return "private-user-" + strconv.FormatInt(userID, 10)
}

// FromTransition turns a committed transition into its build-state-changed
// envelope. buildURL, when not empty, is the prefix of the build's page
// (the build id is appended). The result depends only on its arguments,
// so a redelivered transition gives the same event with the same id.
func FromTransition(t builds.Transition, buildURL string) Envelope {
	b := t.Build
	var prevResult builds.Result
	prev := &Previous{}
	if t.Previous != nil {
		n, r := t.Previous.Number, t.Previous.Result
		prev.BuildNumber, prev.Result, prevResult = &n, &r, r
	}
	eb := &Build{
		ID: b.ID, Number: b.Number, State: b.State, Result: b.Result,
		Status: builds.DeriveStatus(b.State, b.Result, prevResult),
		Ref:    b.Ref, Branch: b.Branch, SHA: b.SHA,
		Author: b.Author, AuthorEmail: b.AuthorEmail, Message: b.Message,
		CompareURL: b.CompareURL, Pusher: b.Pusher,
		Reason: b.Reason, StartedAt: b.StartedAt, FinishedAt: b.FinishedAt,
	}
	if buildURL != "" {
		eb.URL = buildURL + strconv.FormatInt(b.ID, 10)
	}
	if b.State == builds.Finished {
		ok := b.Result == builds.Passed
		eb.Success = &ok
		if b.StartedAt != nil && b.FinishedAt != nil {
			ms := b.FinishedAt.Sub(*b.StartedAt).Milliseconds()
			eb.DurationMS = &ms
		}
	}
	return Envelope{
		ID: t.EventID, Type: TypeBuildStateChanged, Time: t.Time, Seq: t.Seq,
		Build:    eb,
		Job:      &Job{ID: t.Project.ID, Name: t.Project.Name},
		Project:  &Project{ID: t.Project.ID, Name: t.Project.Name, OwnerID: t.Project.OwnerID},
		Previous: prev,
	}
}
