package forge

import (
	"bytes"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/buildbridge/buildbridge/sources"
)

// person is an author, committer or pusher in any of the three forges'
// payloads; each uses some of the fields.
type person struct {
	Name     string `json:"name"`
	Email    string `json:"email"`
	Username string `json:"username"`
	Login    string `json:"login"`
	FullName string `json:"full_name"`
}

// commit is a commit in a push payload (GitHub, GitLab and Gitea agree on
// these fields).
type commit struct {
	ID        string `json:"id"`
	Message   string `json:"message"`
	Timestamp string `json:"timestamp"`
	URL       string `json:"url"`
	Author    person `json:"author"`
}

func (c *commit) meta() sources.Commit {
	if c == nil {
		return sources.Commit{}
	}
	out := sources.Commit{Author: c.Author.Name, AuthorEmail: c.Author.Email, Message: strings.TrimRight(c.Message, "\n")}
	if sources.ValidSHA(c.ID) {
		out.SHA = c.ID
	}
	if t, err := time.Parse(time.RFC3339, c.Timestamp); err == nil {
		out.Time = t
	}
	return out
}

// findCommit returns the commit of the list with the given id, or nil.
func findCommit(list []commit, id string) *commit {
	for i := range list {
		if list[i].ID == id {
			return &list[i]
		}
	}
	return nil
}

// checkUpdate validates the ref and object ids a payload gives, naming
// the field at fault.
func checkUpdate(ref, before, after, beforeField, afterField string) *sources.Error {
	if ref == "" {
		return sources.Errorf(http.StatusBadRequest, "invalid_field", `field "ref" is required`)
	}
	if err := sources.CheckRef(ref); err != nil {
		return sources.Errorf(http.StatusBadRequest, "invalid_field", `field "ref": %v`, err)
	}
	for _, f := range [][2]string{{beforeField, before}, {afterField, after}} {
		if !sources.ValidSHA(f[1]) {
			return sources.Errorf(http.StatusBadRequest, "invalid_field", "field %q must be a 40 or 64 digit lowercase hexadecimal object id, got %q", f[0], clip(f[1], 80))
		}
	}
	if len(before) != len(after) {
		return sources.Errorf(http.StatusBadRequest, "invalid_field", "fields %q and %q are object ids of different lengths", beforeField, afterField)
	}
	return nil
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// githubPush is the part of GitHub's push payload buildbridge reads.
type githubPush struct {
	Ref        string   `json:"ref"`
	Before     string   `json:"before"`
	After      string   `json:"after"`
	Deleted    bool     `json:"deleted"`
	Compare    string   `json:"compare"`
	HeadCommit *commit  `json:"head_commit"`
	Commits    []commit `json:"commits"`
	Pusher     person   `json:"pusher"`
}

// ParseGitHubPush reads a GitHub push event payload, sent either as JSON
// or as a form with the JSON in its "payload" field.
func ParseGitHubPush(contentType string, body []byte) (sources.Push, *sources.Error) {
	raw, e := githubJSON(contentType, body)
	if e != nil {
		return sources.Push{}, e
	}
	var p githubPush
	if e := sources.DecodeJSON(raw, &p); e != nil {
		return sources.Push{}, e
	}
	if e := checkUpdate(p.Ref, p.Before, p.After, "before", "after"); e != nil {
		return sources.Push{}, e
	}
	u := sources.RefUpdate{Ref: p.Ref, Old: p.Before, New: p.After, CompareURL: p.Compare}
	if p.Deleted && !sources.IsZeroSHA(p.After) {
		return sources.Push{}, sources.Errorf(http.StatusBadRequest, "invalid_field", `field "deleted" is true but "after" is not the zero object id`)
	}
	if !sources.IsZeroSHA(p.After) {
		head := p.HeadCommit
		if head == nil {
			head = findCommit(p.Commits, p.After)
		}
		u.Commit = head.meta()
	}
	pusher := p.Pusher.Name
	if pusher == "" {
		pusher = p.Pusher.Login
	}
	return sources.Push{Source: sources.SourceGitHub, Pusher: pusher, Refs: []sources.RefUpdate{u}}, nil
}

// githubJSON returns the JSON of a GitHub delivery: the body, or the
// "payload" field of a form-encoded one.
func githubJSON(contentType string, body []byte) ([]byte, *sources.Error) {
	// A JSON body is taken as JSON whatever its content type says (curl
	// sends form as the default type).
	if !strings.HasPrefix(strings.ToLower(strings.TrimSpace(contentType)), "application/x-www-form-urlencoded") ||
		bytes.HasPrefix(bytes.TrimLeft(body, " \t\r\n"), []byte("{")) {
		return body, nil
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, sources.Errorf(http.StatusBadRequest, "invalid_form", "form-encoded body: %v", err)
	}
	payload := form.Get("payload")
	if payload == "" {
		return nil, sources.Errorf(http.StatusBadRequest, "invalid_form", `form-encoded body has no "payload" field`)
	}
	return []byte(payload), nil
}

// gitlabPush is the part of GitLab's Push Hook and Tag Push Hook payloads
// buildbridge reads.
type gitlabPush struct {
	ObjectKind   string   `json:"object_kind"`
	Ref          string   `json:"ref"`
	Before       string   `json:"before"`
	After        string   `json:"after"`
	CheckoutSHA  *string  `json:"checkout_sha"`
	UserName     string   `json:"user_name"`
	UserUsername string   `json:"user_username"`
	Commits      []commit `json:"commits"`
	Project      struct {
		WebURL string `json:"web_url"`
	} `json:"project"`
}

// ParseGitLabPush reads a GitLab push or tag_push payload; kind is the
// object_kind the event header announced.
func ParseGitLabPush(kind string, body []byte) (sources.Push, *sources.Error) {
	var p gitlabPush
	if e := sources.DecodeJSON(body, &p); e != nil {
		return sources.Push{}, e
	}
	if p.ObjectKind != kind {
		return sources.Push{}, sources.Errorf(http.StatusBadRequest, "invalid_field", `field "object_kind" is %q, the event header announced %q`, clip(p.ObjectKind, 40), kind)
	}
	if e := checkUpdate(p.Ref, p.Before, p.After, "before", "after"); e != nil {
		return sources.Push{}, e
	}
	u := sources.RefUpdate{Ref: p.Ref, Old: p.Before, New: p.After}
	if !sources.IsZeroSHA(p.After) {
		// checkout_sha is the commit; for an annotated tag "after" is the
		// tag object.
		head := p.After
		if p.CheckoutSHA != nil && sources.ValidSHA(*p.CheckoutSHA) {
			head = *p.CheckoutSHA
		}
		c := findCommit(p.Commits, head)
		u.Commit = c.meta()
		u.Commit.SHA = head
		switch web := strings.TrimRight(p.Project.WebURL, "/"); {
		case web != "" && !sources.IsZeroSHA(p.Before):
			u.CompareURL = web + "/-/compare/" + p.Before + "..." + p.After
		case c != nil:
			u.CompareURL = c.URL
		}
	}
	pusher := p.UserUsername
	if pusher == "" {
		pusher = p.UserName
	}
	return sources.Push{Source: sources.SourceGitLab, Pusher: pusher, Refs: []sources.RefUpdate{u}}, nil
}

// giteaPush is the part of Gitea's push payload buildbridge reads.
type giteaPush struct {
	Ref        string   `json:"ref"`
	Before     string   `json:"before"`
	After      string   `json:"after"`
	CompareURL string   `json:"compare_url"`
	HeadCommit *commit  `json:"head_commit"`
	Commits    []commit `json:"commits"`
	Pusher     person   `json:"pusher"`
}

// ParseGiteaPush reads a Gitea push payload.
func ParseGiteaPush(body []byte) (sources.Push, *sources.Error) {
	var p giteaPush
	if e := sources.DecodeJSON(body, &p); e != nil {
		return sources.Push{}, e
	}
	if e := checkUpdate(p.Ref, p.Before, p.After, "before", "after"); e != nil {
		return sources.Push{}, e
	}
	u := sources.RefUpdate{Ref: p.Ref, Old: p.Before, New: p.After, CompareURL: p.CompareURL}
	if !sources.IsZeroSHA(p.After) {
		head := p.HeadCommit
		if head == nil || head.ID == "" {
			head = findCommit(p.Commits, p.After)
		}
		u.Commit = head.meta()
	}
	pusher := p.Pusher.Login
	if pusher == "" {
		pusher = p.Pusher.Username
	}
	return sources.Push{Source: sources.SourceGitea, Pusher: pusher, Refs: []sources.RefUpdate{u}}, nil
}
