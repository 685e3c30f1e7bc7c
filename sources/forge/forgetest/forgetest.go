// Package forgetest makes webhook deliveries the way GitHub, GitLab and
// Gitea send them (headers and payloads in each forge's documented
// format, signed with a given secret), for tests and benchmarks of the
// forge handler.
package forgetest

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"time"
)

// ZeroSHA is git's "no object" id.
const ZeroSHA = "0000000000000000000000000000000000000000"

// Push describes a push to turn into a delivery.
type Push struct {
	Ref    string // full ref: refs/heads/main, refs/tags/v1
	Before string // ZeroSHA for a created ref
	After  string // ZeroSHA for a deleted ref
	// Message, Author, Email and Time describe the head commit.
	Message, Author, Email string
	Time                   time.Time
	// Pusher is the pushing account's login.
	Pusher string
	// Repo is owner/name on the forge (default "acme/app").
	Repo string
}

func (p *Push) setDefaults() {
	if p.Before == "" {
		p.Before = ZeroSHA
	}
	if p.Repo == "" {
		p.Repo = "acme/app"
	}
	if p.Time.IsZero() {
		p.Time = time.Date(2024, 5, 6, 7, 8, 9, 0, time.FixedZone("", 2*3600))
	}
	if p.Pusher == "" {
		p.Pusher = "octocat"
	}
}

func (p *Push) deleted() bool { return p.After == ZeroSHA }

// Delivery is one webhook request.
type Delivery struct {
	Header http.Header
	Body   []byte
}

// Request makes the HTTP request of the delivery to url.
func (d Delivery) Request(url string) *http.Request {
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(d.Body))
	for k, v := range d.Header {
		req.Header[k] = append([]string(nil), v...)
	}
	return req
}

// Post sends the delivery to url and returns the status and the body of
// the answer.
func (d Delivery) Post(c *http.Client, url string) (int, []byte, error) {
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(d.Request(url))
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// With returns a copy of the delivery with one header set (removed when
// value is empty).
func (d Delivery) With(name, value string) Delivery {
	h := d.Header.Clone()
	if value == "" {
		h.Del(name)
	} else {
		h.Set(name, value)
	}
	return Delivery{Header: h, Body: d.Body}
}

// WithBody returns a copy of the delivery with another body and the same
// headers (its signature no longer matches, unless re-signed).
func (d Delivery) WithBody(body []byte) Delivery {
	return Delivery{Header: d.Header.Clone(), Body: body}
}

// HMAC is the hexadecimal HMAC-SHA256 of body under secret.
func HMAC(secret string, body []byte) string {
	h := hmac.New(sha256.New, []byte(secret))
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

type obj = map[string]any

func repoName(full string) string {
	_, name, _ := strings.Cut(full, "/")
	return name
}

func repoOwner(full string) string {
	owner, _, _ := strings.Cut(full, "/")
	return owner
}

// GitHubPush is a GitHub "push" delivery; secret signs it
// (X-Hub-Signature-256) unless empty.
func GitHubPush(p Push, deliveryID, secret string) Delivery {
	p.setDefaults()
	web := "https://github.com/" + p.Repo
	commit := obj{
		"id": p.After, "tree_id": strings.Repeat("e", 40), "distinct": true, "message": p.Message,
		"timestamp": p.Time.Format(time.RFC3339), "url": web + "/commit/" + p.After,
		"author":    obj{"name": p.Author, "email": p.Email, "username": p.Pusher},
		"committer": obj{"name": p.Author, "email": p.Email, "username": p.Pusher},
		"added":     []string{"README.md"}, "removed": []string{}, "modified": []string{},
	}
	var commits []obj
	var head any
	compare := web + "/compare/" + p.Before[:12] + "..." + p.After[:12]
	if !p.deleted() {
		commits, head = []obj{commit}, commit
	} else {
		commits = []obj{}
	}
	if p.Before == ZeroSHA {
		compare = web + "/commit/" + p.After[:12]
	}
	body := mustJSON(obj{
		"ref": p.Ref, "before": p.Before, "after": p.After,
		"repository": githubRepository(p),
		"pusher":     obj{"name": p.Pusher, "email": p.Email},
		"sender":     obj{"login": p.Pusher, "id": 583231, "type": "User", "site_admin": false},
		"created":    p.Before == ZeroSHA, "deleted": p.deleted(), "forced": false, "base_ref": nil,
		"compare": compare, "commits": commits, "head_commit": head,
	})
	return githubDelivery("push", deliveryID, secret, body)
}

// githubRepository is the repository object of a push payload, with the
// many URL and counter fields GitHub sends (a real payload is a few KB).
func githubRepository(p Push) obj {
	api := "https://api.github.com/repos/" + p.Repo
	web := "https://github.com/" + p.Repo
	r := obj{
		"id": 1296269, "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5", "name": repoName(p.Repo), "full_name": p.Repo,
		"private": false, "html_url": web, "description": "The app", "fork": false, "url": web,
		"created_at": 1296068472, "updated_at": "2024-05-06T07:08:09Z", "pushed_at": p.Time.Unix(),
		"git_url": "git://github.com/" + p.Repo + ".git", "ssh_url": "git@github.com:" + p.Repo + ".git",
		"clone_url": web + ".git", "svn_url": web, "homepage": nil, "size": 4096, "stargazers_count": 80,
		"watchers_count": 80, "language": "Go", "has_issues": true, "has_projects": true, "has_downloads": true,
		"has_wiki": true, "has_pages": false, "has_discussions": false, "forks_count": 9, "mirror_url": nil,
		"archived": false, "disabled": false, "open_issues_count": 2, "license": nil, "allow_forking": true,
		"is_template": false, "web_commit_signoff_required": false, "topics": []string{}, "visibility": "public",
		"forks": 9, "open_issues": 2, "watchers": 80, "default_branch": "main", "stargazers": 80,
		"master_branch": "main",
		"owner": obj{"name": repoOwner(p.Repo), "email": nil, "login": repoOwner(p.Repo), "id": 1,
			"node_id": "MDQ6VXNlcjE=", "avatar_url": "https://avatars.githubusercontent.com/u/1?v=4", "gravatar_id": "",
			"url": "https://api.github.com/users/" + repoOwner(p.Repo), "html_url": "https://github.com/" + repoOwner(p.Repo),
			"type": "Organization", "site_admin": false},
	}
	for _, name := range []string{"forks", "keys", "collaborators", "teams", "hooks", "issue_events", "events",
		"assignees", "branches", "tags", "blobs", "git_tags", "git_refs", "trees", "statuses", "languages",
		"stargazers", "contributors", "subscribers", "subscription", "commits", "git_commits", "comments",
		"issue_comment", "contents", "compare", "merges", "archive", "downloads", "issues", "pulls",
		"milestones", "notifications", "labels", "releases", "deployments"} {
		r[name+"_url"] = api + "/" + name
	}
	return r
}

// GitHubPing is the "ping" delivery GitHub sends when a webhook is made.
func GitHubPing(deliveryID, secret string) Delivery {
	body := mustJSON(obj{
		"zen": "Keep it logically awesome.", "hook_id": 109948940,
		"hook": obj{"type": "Repository", "id": 109948940, "name": "web", "active": true, "events": []string{"push"},
			"config": obj{"content_type": "json", "insecure_ssl": "0", "url": "https://buildbridge.example/hooks/github/app"}},
		"repository": obj{"id": 1296269, "name": "app", "full_name": "acme/app"},
		"sender":     obj{"login": "octocat", "id": 583231},
	})
	return githubDelivery("ping", deliveryID, secret, body)
}

func githubDelivery(event, id, secret string, body []byte) Delivery {
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", "GitHub-Hookshot/044aadd")
	h.Set("X-GitHub-Event", event)
	h.Set("X-GitHub-Delivery", id)
	h.Set("X-GitHub-Hook-ID", "109948940")
	if secret != "" {
		h.Set("X-Hub-Signature-256", "sha256="+HMAC(secret, body))
	}
	return Delivery{Header: h, Body: body}
}

// GitLabPush is a GitLab "Push Hook" delivery, or "Tag Push Hook" for a
// refs/tags/ ref; token is sent as X-Gitlab-Token unless empty.
// idempotencyKey, when not empty, is sent as Idempotency-Key (GitLab 17.4+).
func GitLabPush(p Push, eventUUID, token, idempotencyKey string) Delivery {
	p.setDefaults()
	web := "https://gitlab.example.com/" + p.Repo
	kind, event := "push", "Push Hook"
	if strings.HasPrefix(p.Ref, "refs/tags/") {
		kind, event = "tag_push", "Tag Push Hook"
	}
	var checkout any
	commits := []obj{}
	if !p.deleted() {
		checkout = p.After
		title, _, _ := strings.Cut(p.Message, "\n")
		commits = append(commits, obj{
			"id": p.After, "message": p.Message, "title": title, "timestamp": p.Time.Format(time.RFC3339),
			"url": web + "/-/commit/" + p.After, "author": obj{"name": p.Author, "email": p.Email},
			"added": []string{"README.md"}, "modified": []string{}, "removed": []string{},
		})
	}
	body := mustJSON(obj{
		"object_kind": kind, "event_name": kind, "before": p.Before, "after": p.After, "ref": p.Ref,
		"ref_protected": true, "checkout_sha": checkout, "message": nil,
		"user_id": 4, "user_name": "John Smith", "user_username": p.Pusher, "user_email": "", "user_avatar": "https://gitlab.example.com/uploads/user/avatar/4/avatar.jpg",
		"project_id": 15,
		"project": obj{"id": 15, "name": repoName(p.Repo), "description": "", "web_url": web, "avatar_url": nil,
			"git_ssh_url": "git@gitlab.example.com:" + p.Repo + ".git", "git_http_url": web + ".git",
			"namespace": repoOwner(p.Repo), "visibility_level": 0, "path_with_namespace": p.Repo, "default_branch": "main",
			"homepage": web, "url": "git@gitlab.example.com:" + p.Repo + ".git", "ssh_url": "git@gitlab.example.com:" + p.Repo + ".git", "http_url": web + ".git"},
		"commits": commits, "total_commits_count": len(commits),
		"repository": obj{"name": repoName(p.Repo), "url": "git@gitlab.example.com:" + p.Repo + ".git", "description": "",
			"homepage": web, "git_http_url": web + ".git", "git_ssh_url": "git@gitlab.example.com:" + p.Repo + ".git", "visibility_level": 0},
	})
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", "GitLab/17.5.0")
	h.Set("X-Gitlab-Event", event)
	h.Set("X-Gitlab-Event-UUID", eventUUID)
	h.Set("X-Gitlab-Webhook-UUID", "6f9fc4b6-6b15-4a3a-9b88-1c2c7bb3a2b1")
	h.Set("X-Gitlab-Instance", "https://gitlab.example.com")
	if idempotencyKey != "" {
		h.Set("Idempotency-Key", idempotencyKey)
	}
	if token != "" {
		h.Set("X-Gitlab-Token", token)
	}
	return Delivery{Header: h, Body: body}
}

// GiteaPush is a Gitea "push" delivery; secret signs it
// (X-Gitea-Signature, and X-Hub-Signature-256 as Gitea also sends)
// unless empty.
func GiteaPush(p Push, deliveryID, secret string) Delivery {
	p.setDefaults()
	web := "https://gitea.example.com/" + p.Repo
	user := obj{"id": 1, "login": p.Pusher, "full_name": p.Author, "email": p.Email,
		"avatar_url": "https://gitea.example.com/avatars/1", "username": p.Pusher}
	commits := []obj{}
	var head any
	if !p.deleted() {
		c := obj{
			"id": p.After, "message": p.Message + "\n", "url": web + "/commit/" + p.After,
			"author":       obj{"name": p.Author, "email": p.Email, "username": p.Pusher},
			"committer":    obj{"name": p.Author, "email": p.Email, "username": p.Pusher},
			"verification": nil, "timestamp": p.Time.Format(time.RFC3339),
			"added": []string{"README.md"}, "removed": []string{}, "modified": []string{},
		}
		commits, head = append(commits, c), c
	}
	compare := ""
	if p.Before != ZeroSHA && !p.deleted() {
		compare = web + "/compare/" + p.Before + "..." + p.After
	}
	body := mustJSON(obj{
		"ref": p.Ref, "before": p.Before, "after": p.After, "compare_url": compare,
		"commits": commits, "total_commits": len(commits), "head_commit": head,
		"repository": obj{"id": 140, "owner": user, "name": repoName(p.Repo), "full_name": p.Repo, "description": "",
			"private": false, "fork": false, "html_url": web, "ssh_url": "git@gitea.example.com:" + p.Repo + ".git",
			"clone_url": web + ".git", "default_branch": "main"},
		"pusher": user, "sender": user,
	})
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", "Go-http-client/1.1")
	for _, prefix := range []string{"X-Gitea", "X-Gogs", "X-GitHub"} {
		h.Set(prefix+"-Delivery", deliveryID)
		h.Set(prefix+"-Event", "push")
		h.Set(prefix+"-Event-Type", "push")
	}
	if secret != "" {
		sig := HMAC(secret, body)
		h.Set("X-Gitea-Signature", sig)
		h.Set("X-Gogs-Signature", sig)
		h.Set("X-Hub-Signature-256", "sha256="+sig)
	}
	return Delivery{Header: h, Body: body}
}
