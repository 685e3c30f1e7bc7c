package slack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	slackapi "github.com/slack-go/slack"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/sources"
	"github.com/buildbridge/buildbridge/store"
)

// ServeCommands serves POST /slack/commands: the slash command.
func (h *Handler) ServeCommands(w http.ResponseWriter, r *http.Request) {
	body, e := h.verify(w, r)
	if e != nil {
		h.log.Warn("slack command refused", "code", e.Code, "remote", r.RemoteAddr)
		sources.WriteError(w, e)
		return
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		sources.WriteError(w, sources.Errorf(http.StatusBadRequest, "bad_form", "the body is not a form"))
		return
	}
	cmd := command{user: form.Get("user_id"), text: strings.TrimSpace(form.Get("text")),
		name: form.Get("command"), responseURL: form.Get("response_url")}
	if cmd.name == "" {
		cmd.name = "/buildbridge"
	}
	// The work runs in the background; the answer goes in the response
	// when it is ready within ReplyWithin, to the response URL otherwise.
	done := make(chan reply, 1)
	started := h.goBackground(func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		done <- h.run(ctx, cmd)
	})
	if !started {
		sources.WriteError(w, sources.Errorf(http.StatusServiceUnavailable, "shutting_down", "the server is shutting down"))
		return
	}
	timer := time.NewTimer(h.cfg.ReplyWithin)
	defer timer.Stop()
	select {
	case m := <-done:
		sources.WriteJSON(w, http.StatusOK, m.json())
	case <-timer.C:
		sources.WriteJSON(w, http.StatusOK, ephemeral("⏳ Working on it…").json())
		h.goBackground(func(ctx context.Context) {
			select {
			case m := <-done:
				h.postResponse(ctx, cmd.responseURL, m)
			case <-ctx.Done():
			}
		})
	}
}

type command struct {
	user, text, name, responseURL string
}

func (h *Handler) usage(name string) string {
	return fmt.Sprintf("*%[1]s build PROJECT [BRANCH]* queues a build (default branch: the project's)\n"+
		"*%[1]s status PROJECT* shows the project's latest builds\n*%[1]s help* shows this", name)
}

// run carries out a command and says what happened.
func (h *Handler) run(ctx context.Context, c command) reply {
	args := strings.Fields(c.text)
	if len(args) == 0 || args[0] == "help" {
		return ephemeral("%s", h.usage(c.name))
	}
	switch args[0] {
	case "build", "status":
	default:
		return ephemeral("Unknown command `%s`.\n%s", escape(truncate(args[0], 40)), h.usage(c.name))
	}
	if len(args) < 2 || (args[0] == "status" && len(args) > 2) || len(args) > 3 {
		return ephemeral("Usage:\n%s", h.usage(c.name))
	}
	u, m := h.user(ctx, c.user)
	if m != nil {
		return *m
	}
	p, m := h.project(ctx, u, args[1])
	if m != nil {
		return *m
	}
	if args[0] == "status" {
		return h.status(ctx, p)
	}
	branch := p.DefaultBranch
	if len(args) == 3 {
		branch = args[2]
	}
	return h.build(ctx, u, c.user, p, branch)
}

// user maps a Slack user to a buildbridge user; the reply says why not.
func (h *Handler) user(ctx context.Context, slackUser string) (store.User, *reply) {
	name, ok := h.users[slackUser]
	if !ok && h.emails && h.api != nil && slackUser != "" {
		email, err := h.email(ctx, slackUser)
		if err != nil {
			h.log.Warn("users.info failed", "user", slackUser, "err", err)
			m := ephemeral("Cannot look up your Slack account right now; try again later.")
			return store.User{}, &m
		}
		name, ok = h.users[strings.ToLower(email)]
	}
	if !ok {
		h.log.Info("slack user not mapped to a buildbridge user", "slack_user", slackUser)
		m := ephemeral("Your Slack account (%s) is not linked to a buildbridge user, so nothing was run. Ask an admin to add your Slack user id or email under slack.users.", escape(slackUser))
		return store.User{}, &m
	}
	u, err := h.cfg.Store.UserByName(ctx, name)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			m := ephemeral("Your Slack account is linked to buildbridge user %q, which does not exist; nothing was run.", name)
			return store.User{}, &m
		}
		h.log.Error("loading a user", "user", name, "err", err)
		m := ephemeral("Something went wrong; nothing was run. Try again later.")
		return store.User{}, &m
	}
	return u, nil
}

// email is a Slack user's email, from users.info, cached for an hour.
func (h *Handler) email(ctx context.Context, slackUser string) (string, error) {
	now := h.cfg.Now()
	h.emailMu.Lock()
	c, ok := h.emailOf[slackUser]
	h.emailMu.Unlock()
	if ok && now.Before(c.expires) {
		return c.email, nil
	}
	u, err := h.api.GetUserInfoContext(ctx, slackUser)
	var se slackapi.SlackErrorResponse
	switch {
	case errors.As(err, &se) && se.Err == "user_not_found":
		u = &slackapi.User{}
	case err != nil:
		return "", err
	}
	h.emailMu.Lock()
	if len(h.emailOf) > 10000 {
		h.emailOf = map[string]cachedEmail{}
	}
	h.emailOf[slackUser] = cachedEmail{email: u.Profile.Email, expires: now.Add(time.Hour)}
	h.emailMu.Unlock()
	return u.Profile.Email, nil
}

// project loads a project the user may see; others are "not found".
func (h *Handler) project(ctx context.Context, u store.User, name string) (builds.Project, *reply) {
	notFound := ephemeral("Project `%s` not found.", escape(truncate(name, 80)))
	if store.ValidProjectName(name) != nil {
		return builds.Project{}, &notFound
	}
	p, err := h.cfg.Store.ProjectByName(ctx, name)
	switch {
	case errors.Is(err, store.ErrNotFound), err == nil && !u.Admin && p.OwnerID != u.ID:
		return p, &notFound
	case err != nil:
		h.log.Error("loading a project", "project", name, "err", err)
		m := ephemeral("Something went wrong; nothing was run. Try again later.")
		return p, &m
	}
	return p, nil
}

// build queues a build of a branch.
func (h *Handler) build(ctx context.Context, u store.User, slackUser string, p builds.Project, branch string) reply {
	if !validRef(branch) {
		return ephemeral("`%s` is not a valid branch name.", escape(truncate(branch, 80)))
	}
	c, err := h.cfg.Resolve(ctx, p.Repo, branch)
	if err != nil {
		h.log.Info("slack build: branch not resolved", "project", p.Name, "branch", branch, "err", err)
		return ephemeral("Cannot build `%s` of *%s*: %s", escape(branch), escape(p.Name), escape(truncate(err.Error(), 300)))
	}
	nb := store.NewBuild{ProjectID: p.ID, Ref: c.Ref, Branch: c.Branch, SHA: c.SHA, Author: c.Author,
		AuthorEmail: c.AuthorEmail, Message: c.Message, TriggeredBy: u.ID}
	if nb.Ref == "" {
		nb.Ref, nb.Branch = "refs/heads/"+branch, branch
	}
	b, err := h.cfg.Store.CreateBuild(ctx, nb)
	if err != nil {
		h.log.Error("slack build: creating the build", "project", p.Name, "err", err)
		return ephemeral("Something went wrong; nothing was queued. Try again later.")
	}
	h.cfg.Scheduler.Wake()
	h.log.Info("build queued from Slack", "project", p.Name, "build_id", b.ID, "number", b.Number, "user", u.Name, "slack_user", slackUser)
	return reply{InChannel: true, Text: fmt.Sprintf("🚀 <@%s> queued *%s* #%d on `%s` (%s %s)%s", slackUser, escape(p.Name), b.Number,
		escape(b.Branch), short(b.SHA), escape(truncate(firstLine(b.Message), 80)), h.link(b.ID))}
}

// status lists a project's latest builds.
func (h *Handler) status(ctx context.Context, p builds.Project) reply {
	list, err := h.cfg.Store.ListBuilds(ctx, store.BuildFilter{ProjectID: p.ID, Limit: 5})
	if err != nil {
		h.log.Error("slack status: listing builds", "project", p.Name, "err", err)
		return ephemeral("Something went wrong. Try again later.")
	}
	if len(list) == 0 {
		return ephemeral("*%s* has no builds yet.", escape(p.Name))
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "Latest builds of *%s*:", escape(p.Name))
	for _, b := range list {
		state := strings.ToLower(string(b.State))
		if b.State == builds.Finished {
			state = string(b.Result)
		}
		fmt.Fprintf(&sb, "\n%s #%d `%s` %s %s %s", stateEmoji(b), b.Number, escape(b.Branch), state, short(b.SHA),
			escape(truncate(firstLine(b.Message), 60)))
		if b.FinishedAt != nil && b.StartedAt != nil {
			fmt.Fprintf(&sb, " (%s)", b.Duration().Round(time.Second))
		}
		sb.WriteString(h.link(b.ID))
	}
	return ephemeral("%s", sb.String())
}

// ServeInteractions serves POST /slack/interactions: the Rebuild button.
// Slack wants an empty 200 at once; the result goes to the response URL.
func (h *Handler) ServeInteractions(w http.ResponseWriter, r *http.Request) {
	body, e := h.verify(w, r)
	if e != nil {
		h.log.Warn("slack interaction refused", "code", e.Code, "remote", r.RemoteAddr)
		sources.WriteError(w, e)
		return
	}
	form, err := url.ParseQuery(string(body))
	if err != nil || form.Get("payload") == "" {
		sources.WriteError(w, sources.Errorf(http.StatusBadRequest, "bad_payload", "the body has no payload field"))
		return
	}
	var cb slackapi.InteractionCallback
	if err := json.Unmarshal([]byte(form.Get("payload")), &cb); err != nil {
		sources.WriteError(w, sources.Errorf(http.StatusBadRequest, "bad_payload", "the payload is not an interaction: %v", err))
		return
	}
	var action *slackapi.BlockAction
	if cb.Type == slackapi.InteractionTypeBlockActions {
		for _, a := range cb.ActionCallback.BlockActions {
			if a.ActionID == RebuildActionID {
				action = a
				break
			}
		}
	}
	// Other interactions (the Open build link button) need nothing.
	w.WriteHeader(http.StatusOK)
	if action == nil {
		return
	}
	user, value, responseURL := cb.User.ID, action.Value, cb.ResponseURL
	h.goBackground(func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		h.postResponse(ctx, responseURL, h.rebuild(ctx, user, value))
	})
}

// rebuild queues the same commit as a build again.
func (h *Handler) rebuild(ctx context.Context, slackUser, value string) reply {
	u, m := h.user(ctx, slackUser)
	if m != nil {
		return *m
	}
	id, err := strconv.ParseInt(value, 10, 64)
	if err != nil || id <= 0 {
		return ephemeral("This button names no build.")
	}
	notFound := ephemeral("Build %d not found.", id)
	b, err := h.cfg.Store.Build(ctx, id)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			h.log.Error("slack rebuild: loading the build", "build_id", id, "err", err)
			return ephemeral("Something went wrong; nothing was queued. Try again later.")
		}
		return notFound
	}
	p, err := h.cfg.Store.ProjectByID(ctx, b.ProjectID)
	if err != nil || (!u.Admin && p.OwnerID != u.ID) {
		return notFound
	}
	nb, err := h.cfg.Store.CreateBuild(ctx, store.NewBuild{ProjectID: p.ID, Ref: b.Ref, Branch: b.Branch, SHA: b.SHA,
		Author: b.Author, AuthorEmail: b.AuthorEmail, Message: b.Message, TriggeredBy: u.ID})
	if err != nil {
		h.log.Error("slack rebuild: creating the build", "build_id", id, "err", err)
		return ephemeral("Something went wrong; nothing was queued. Try again later.")
	}
	h.cfg.Scheduler.Wake()
	h.log.Info("rebuild queued from Slack", "project", p.Name, "of", b.ID, "build_id", nb.ID, "user", u.Name, "slack_user", slackUser)
	return reply{InChannel: true, Text: fmt.Sprintf("🔁 <@%s> rebuilt *%s* #%d as #%d (`%s` %s)%s", slackUser, escape(p.Name), b.Number, nb.Number,
		escape(nb.Branch), short(nb.SHA), h.link(nb.ID))}
}

func (h *Handler) link(id int64) string {
	if h.cfg.BuildURL == "" {
		return ""
	}
	return fmt.Sprintf(" <%s%d|open>", h.cfg.BuildURL, id)
}

func stateEmoji(b builds.Build) string {
	switch {
	case b.State == builds.Queued:
		return "⏳"
	case b.State == builds.Started:
		return "🏃"
	case b.Result == builds.Passed:
		return "✅"
	case b.Result == builds.Canceled:
		return "🚫"
	case b.Result == builds.Errored:
		return "⚠️"
	}
	return "❌"
}

// validRef refuses branch names git would read as options or that hold
// characters git forbids in ref names.
func validRef(ref string) bool {
	if ref == "" || len(ref) > 255 || strings.HasPrefix(ref, "-") || strings.Contains(ref, "..") {
		return false
	}
	return !strings.ContainsAny(ref, " ~^:?*[\\\x00\x7f")
}

// escape escapes &, < and > for mrkdwn.
func escape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

func short(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}

func firstLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
