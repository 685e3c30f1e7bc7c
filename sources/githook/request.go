package githook

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/buildbridge/buildbridge/sources"
)

// Request is the body of POST /hooks/git: the refs one push updated.
type Request struct {
	// Project names the project to build.
	Project string `json:"project"`
	// ID is the idempotency key: a request with an id the hub has seen for
	// the project already builds nothing. 8 to 128 letters, digits, '.',
	// '_' or '-'.
	ID string `json:"id"`
	// Pusher is who pushed, as the hook knows them (optional).
	Pusher string `json:"pusher,omitempty"`
	Refs   []Ref  `json:"refs"`
}

// Ref is one updated ref with the metadata of the commit it now points at.
type Ref struct {
	Old string `json:"old"`
	New string `json:"new"`
	Ref string `json:"ref"`
	// Commit is the commit to build when New is not one (an annotated
	// tag); empty means New.
	Commit      string `json:"commit,omitempty"`
	Author      string `json:"author,omitempty"`
	AuthorEmail string `json:"author_email,omitempty"`
	Message     string `json:"message,omitempty"`
	// Timestamp is the author date, RFC 3339.
	Timestamp string `json:"timestamp,omitempty"`
}

// Limits a request must keep.
const (
	MaxRefsPerRequest = 1000
	maxNameBytes      = 256
)

// NewID makes a random idempotency key.
func NewID() (string, error) {
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("idempotency key: %w", err)
	}
	return hex.EncodeToString(raw[:]), nil
}

// Validate reports the first thing wrong with a request, naming the field.
func (r *Request) Validate() error {
	switch {
	case r.Project == "":
		return fmt.Errorf(`field "project" is required`)
	case len(r.ID) < 8 || len(r.ID) > 128 || !idChars(r.ID):
		return fmt.Errorf(`field "id" must be 8 to 128 letters, digits, '.', '_' or '-' (an idempotency key)`)
	case len(r.Pusher) > maxNameBytes:
		return fmt.Errorf(`field "pusher" is longer than %d bytes`, maxNameBytes)
	case len(r.Refs) == 0:
		return fmt.Errorf(`field "refs" must list at least one updated ref`)
	case len(r.Refs) > MaxRefsPerRequest:
		return fmt.Errorf(`field "refs" lists %d refs; at most %d fit in one request`, len(r.Refs), MaxRefsPerRequest)
	}
	for i, ref := range r.Refs {
		if err := ref.validate(); err != nil {
			return fmt.Errorf("refs[%d]: %w", i, err)
		}
	}
	return nil
}

func (r *Ref) validate() error {
	if err := sources.CheckRef(r.Ref); err != nil {
		return fmt.Errorf(`field "ref": %w`, err)
	}
	switch {
	case !sources.ValidSHA(r.Old):
		return fmt.Errorf(`field "old" must be a full lowercase object id`)
	case !sources.ValidSHA(r.New):
		return fmt.Errorf(`field "new" must be a full lowercase object id`)
	case len(r.Old) != len(r.New):
		return fmt.Errorf(`fields "old" and "new" differ in length`)
	case r.Commit != "" && (!sources.ValidSHA(r.Commit) || len(r.Commit) != len(r.New)):
		return fmt.Errorf(`field "commit" must be a full lowercase object id`)
	case len(r.Author) > maxNameBytes || len(r.AuthorEmail) > maxNameBytes:
		return fmt.Errorf(`fields "author" and "author_email" must be at most %d bytes`, maxNameBytes)
	}
	if r.Timestamp != "" {
		if _, err := time.Parse(time.RFC3339, r.Timestamp); err != nil {
			return fmt.Errorf(`field "timestamp" must be an RFC 3339 time: %q`, clip(r.Timestamp))
		}
	}
	return nil
}

func idChars(s string) bool {
	for i := range len(s) {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Push turns a validated request into the push the ingester plans.
func (r *Request) Push(triggeredBy int64) sources.Push {
	p := sources.Push{Source: sources.SourceGit, DeliveryID: r.ID, Pusher: r.Pusher, TriggeredBy: triggeredBy}
	for _, ref := range r.Refs {
		u := sources.RefUpdate{Ref: ref.Ref, Old: ref.Old, New: ref.New, Commit: sources.Commit{
			SHA: ref.Commit, Author: ref.Author, AuthorEmail: ref.AuthorEmail, Message: ref.Message,
		}}
		if t, err := time.Parse(time.RFC3339, ref.Timestamp); err == nil {
			u.Commit.Time = t
		}
		p.Refs = append(p.Refs, u)
	}
	return p
}
