// Package builds holds the build domain: projects, builds, the state machine
// QUEUED → STARTED → FINISHED and the transition record that every state
// change produces. It imports nothing of the project so that the store, the
// queue, the runner and the bridge can all share its types.
package builds

import (
	"fmt"
	"time"
)

// State is where a build is in its life.
type State string

// The three states of a build.
const (
	Queued   State = "QUEUED"
	Started  State = "STARTED"
	Finished State = "FINISHED"
)

// Valid reports whether s is one of the three states.
func (s State) Valid() bool { return s == Queued || s == Started || s == Finished }

// Result is how a finished build ended. Empty until FINISHED.
type Result string

// The results of a finished build.
const (
	Passed   Result = "passed"
	Failed   Result = "failed"
	Errored  Result = "errored"
	Canceled Result = "canceled"
)

// Valid reports whether r is one of the four results.
func (r Result) Valid() bool {
	return r == Passed || r == Failed || r == Errored || r == Canceled
}

// Status is the state and result of a build read against the previous
// finished build of the same project and branch, as Travis names it.
type Status string

// The statuses a build-state-changed event can carry.
const (
	StatusQueued       Status = "queued"
	StatusStarted      Status = "started"
	StatusPassed       Status = "passed"
	StatusFixed        Status = "fixed"
	StatusFailed       Status = "failed"
	StatusBroken       Status = "broken"
	StatusStillFailing Status = "still_failing"
	StatusErrored      Status = "errored"
	StatusCanceled     Status = "canceled"
)

// AllStatuses lists every status, for validation and documentation.
var AllStatuses = []Status{StatusQueued, StatusStarted, StatusPassed, StatusFixed,
	StatusFailed, StatusBroken, StatusStillFailing, StatusErrored, StatusCanceled}

// ErrTransition is returned (wrapped) for a transition the state machine refuses.
var ErrTransition = fmt.Errorf("invalid build transition")

// CheckTransition reports whether a build may move from one state to
// another. The only moves are QUEUED → STARTED, QUEUED → FINISHED (a build
// canceled or refused before it ran), STARTED → FINISHED, and STARTED →
// QUEUED, which only crash recovery uses to re-queue a build whose runner
// died. A FINISHED build never changes again.
func CheckTransition(from, to State) error {
	switch {
	case from == Queued && (to == Started || to == Finished),
		from == Started && (to == Finished || to == Queued):
		return nil
	}
	return fmt.Errorf("%w: %s → %s", ErrTransition, from, to)
}

// DeriveStatus names a build's status from its state, its result and the
// result of the previous finished build of the same project and branch
// (empty when there is none). Canceled builds are not counted as previous
// builds; the store skips them when it looks the previous build up.
func DeriveStatus(state State, result, previous Result) Status {
	switch state {
	case Queued:
		return StatusQueued
	case Started:
		return StatusStarted
	}
	bad := func(r Result) bool { return r == Failed || r == Errored }
	switch result {
	case Passed:
		if bad(previous) {
			return StatusFixed
		}
		return StatusPassed
	case Failed:
		switch {
		case previous == Passed:
			return StatusBroken
		case bad(previous):
			return StatusStillFailing
		}
		return StatusFailed
	case Canceled:
		return StatusCanceled
	}
	return StatusErrored
}

// Step is one command of a build, run with `sh -c`.
type Step struct {
	Name string `json:"name" yaml:"name"`
	Run  string `json:"run" yaml:"run"`
}

// Project is a repository that buildbridge builds.
type Project struct {
	ID            int64         `json:"id"`
	Name          string        `json:"name"`
	OwnerID       int64         `json:"owner_id"`
	Repo          string        `json:"repo"`
	DefaultBranch string        `json:"default_branch"`
	Steps         []Step        `json:"steps"`
	Timeout       time.Duration `json:"-"`
	Settings      Settings      `json:"settings"`
	CreatedAt     time.Time     `json:"created_at"`
	UpdatedAt     time.Time     `json:"updated_at"`
}

// Settings are a project's choices about which pushes build.
type Settings struct {
	// BuildTags makes pushed tags start builds (branches always do).
	BuildTags bool `json:"build_tags"`
	// Branches filters pushed branches by glob: a branch builds when it
	// matches an Include pattern (or Include is empty) and no Exclude one.
	Branches BranchFilter `json:"branches"`
	// SupersedeQueued cancels a branch's still-queued builds when a newer
	// push to that branch queues one.
	SupersedeQueued bool `json:"supersede_queued"`
}

// BranchFilter is a pair of glob lists (path.Match syntax).
type BranchFilter struct {
	Include []string `json:"include,omitempty"`
	Exclude []string `json:"exclude,omitempty"`
}

// Build is one run of a project at one commit.
type Build struct {
	ID          int64  `json:"id"`
	ProjectID   int64  `json:"project_id"`
	Number      int64  `json:"number"`
	State       State  `json:"state"`
	Result      Result `json:"result,omitempty"`
	Reason      string `json:"reason,omitempty"`
	Ref         string `json:"ref"`
	Branch      string `json:"branch,omitempty"`
	SHA         string `json:"sha"`
	Author      string `json:"author,omitempty"`
	AuthorEmail string `json:"author_email,omitempty"`
	Message     string `json:"message,omitempty"`
	TriggeredBy int64  `json:"triggered_by,omitempty"`
	// CompareURL and Pusher come from a forge or hook push.
	CompareURL      string     `json:"compare_url,omitempty"`
	Pusher          string     `json:"pusher,omitempty"`
	CancelRequested bool       `json:"cancel_requested,omitempty"`
	CreatedAt       time.Time  `json:"created_at"`
	StartedAt       *time.Time `json:"started_at"`
	FinishedAt      *time.Time `json:"finished_at"`
}

// Duration is how long the build ran, or zero when it has not finished.
func (b *Build) Duration() time.Duration {
	if b.StartedAt == nil || b.FinishedAt == nil {
		return 0
	}
	return b.FinishedAt.Sub(*b.StartedAt)
}

// ProjectRef names a project in a transition without its settings.
type ProjectRef struct {
	ID      int64  `json:"id"`
	Name    string `json:"name"`
	OwnerID int64  `json:"owner_id"`
}

// Previous is the previous finished (not canceled) build of the same
// project and branch, as it stood when the transition was committed.
type Previous struct {
	Number int64  `json:"number"`
	Result Result `json:"result"`
}

// Transition is the record of one state change, written to the outbox in
// the same transaction as the change and published on the bus topic
// "build.transition". Everything the bridge needs is in it, so turning it
// into an event needs no store query and gives the same event on every
// redelivery.
type Transition struct {
	// EventID is stable: every publication of this transition carries it.
	EventID string `json:"event_id"`
	// Seq increases with every transition the store commits.
	Seq      int64      `json:"seq"`
	Time     time.Time  `json:"time"`
	From     State      `json:"from,omitempty"`
	To       State      `json:"to"`
	Build    Build      `json:"build"`
	Project  ProjectRef `json:"project"`
	Previous *Previous  `json:"previous,omitempty"`
}

// TopicTransition is the bus topic transitions are published on.
const TopicTransition = "build.transition"
