// Package remote lets builds run on other machines. The hub side (Hub)
// serves the runner protocol over HTTP: a runner authenticates with its
// own token, claims a build with a lease, heartbeats to keep the lease and
// learn of cancel requests, streams its log, uploads its artifacts and
// reports how the build ended. A lease that is not renewed in time is
// taken back by the reaper, which re-queues the build or finishes it as
// errored; a runner that reports on a build it no longer holds gets 409.
// The runner side (Client) claims builds and runs them with builds/runner.
//
// Every call is JSON over HTTP with "Authorization: Bearer <runner token>";
// calls about a build also carry "X-Buildbridge-Lease: <lease token>".
//
//	POST /runner/v1/claim                         → 200 Job | 204
//	POST /runner/v1/builds/{id}/heartbeat         → 200 Heartbeat
//	POST /runner/v1/builds/{id}/log               (raw bytes) → 200 {"size":n}
//	PUT  /runner/v1/builds/{id}/artifacts/{path…} (raw bytes) → 200 Artifact
//	POST /runner/v1/builds/{id}/finish            Finish → 200 {"state":"FINISHED"}
//
// Errors are {"error":{"code":…,"message":…}}: 401 bad_runner_token,
// 403 runner_revoked, 409 lease_lost, 400 invalid_*, 413 too_large.
package remote

import (
	"github.com/buildbridge/buildbridge/builds"
)

// LeaseHeader carries the lease token of calls about one build.
const LeaseHeader = "X-Buildbridge-Lease"

// Claim is what a runner asks for.
type Claim struct {
	// Labels are the runner's; they may narrow, never widen, the labels
	// its token was created with.
	Labels []string `json:"labels"`
}

// Job is a build handed to a runner.
type Job struct {
	BuildID   int64             `json:"build_id"`
	Number    int64             `json:"number"`
	Project   string            `json:"project"`
	Lease     string            `json:"lease"`
	LeaseTTL  int64             `json:"lease_ttl_ms"`
	Repo      string            `json:"repo"`
	SHA       string            `json:"sha"`
	Ref       string            `json:"ref"`
	Steps     []builds.Step     `json:"steps"`
	TimeoutMS int64             `json:"timeout_ms"`
	Env       map[string]string `json:"env"`
}

// Heartbeat is the hub's answer to a heartbeat.
type Heartbeat struct {
	CancelRequested bool `json:"cancel_requested"`
}

// Artifact is one uploaded file of a build.
type Artifact struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Finish reports how a build ended.
type Finish struct {
	Result    builds.Result `json:"result"`
	Reason    string        `json:"reason"`
	Artifacts []Artifact    `json:"artifacts"`
}

// Error is the body of every refusal.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Codes of Error a runner acts on.
const (
	CodeBadToken  = "bad_runner_token"
	CodeRevoked   = "runner_revoked"
	CodeLeaseLost = "lease_lost"
)
