package main

import (
	"context"
	"errors"
	"net/url"
	"strings"

	"github.com/buildbridge/buildbridge/api"
	"github.com/buildbridge/buildbridge/sources/slack"
	"github.com/buildbridge/buildbridge/store"
)

func init() { mounts = append(mounts, mountSlack) }

// SlackConfig configures the Slack source: the /buildbridge slash command
// and the Rebuild button of Slack messages.
type SlackConfig struct {
	// SigningSecret is the Slack app's signing secret; without it the
	// Slack endpoints are not served. Better given in the environment
	// (BUILDBRIDGE_SLACK_SIGNING_SECRET) than in a file or a flag.
	SigningSecret string `yaml:"signing_secret" help:"Slack app signing secret; enables /slack/commands and /slack/interactions (prefer the environment)"`
	// BotToken looks up users' emails (users.info) for email keys of Users.
	BotToken string `yaml:"bot_token" help:"Slack bot token (scope users:read.email) to map Slack users by email"`
	// APIURL is Slack's Web API; response URLs may also point to its host.
	APIURL string `yaml:"api_url" help:"Slack Web API URL (default https://slack.com/api/), for a proxy or a test server"`
	// Users maps Slack user ids (U…) or emails to buildbridge user names
	// (file only).
	Users map[string]string `yaml:"users" help:"Slack user id or email to buildbridge user name"`
}

func (s *SlackConfig) validate(bad func(key, format string, args ...any)) {
	if len(s.Users) > 0 && s.SigningSecret == "" {
		bad("slack.users", "needs slack.signing_secret: without it the Slack endpoints are off")
	}
	for key, name := range s.Users {
		if err := slack.ValidUserKey(key); err != nil {
			bad("slack.users", "%v", err)
		}
		if err := store.ValidUserName(name); err != nil {
			bad("slack.users."+key, "%v", err)
		}
		if strings.Contains(key, "@") && s.BotToken == "" {
			bad("slack.users."+key, "an email needs slack.bot_token to look Slack users up")
		}
	}
	if s.APIURL != "" {
		if u, err := url.Parse(s.APIURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("slack.api_url", "%q must be an http:// or https:// URL", s.APIURL)
		}
	}
}

// mountSlack serves POST /slack/commands and POST /slack/interactions
// when slack.signing_secret is set.
func mountSlack(_ context.Context, h *hub) error {
	c := h.cfg.Slack
	if c.SigningSecret == "" {
		return nil
	}
	src, err := slack.New(slack.Config{SigningSecret: c.SigningSecret, Users: c.Users, BotToken: c.BotToken, APIURL: c.APIURL,
		BuildURL: h.cfg.BaseURL + "/builds/", Store: h.store, Scheduler: h.queue, Logger: h.log,
		Resolve: func(ctx context.Context, repo, ref string) (slack.Commit, error) {
			cm, err := resolveCommit(ctx, repo, ref)
			if errors.Is(err, api.ErrRefNotFound) {
				return slack.Commit{}, errors.New("no such branch")
			}
			return slack.Commit(cm), err
		},
		MaxBodyBytes: min(h.cfg.MaxBodyBytes, 1<<20)})
	if err != nil {
		return err
	}
	h.mux.HandleFunc("POST /slack/commands", src.ServeCommands)
	h.mux.HandleFunc("POST /slack/interactions", src.ServeInteractions)
	h.onShutdown = append(h.onShutdown, func(context.Context) { src.Close() })
	h.log.Info("slack source on", "commands", h.cfg.BaseURL+"/slack/commands", "interactions", h.cfg.BaseURL+"/slack/interactions",
		"users", len(c.Users))
	return nil
}
