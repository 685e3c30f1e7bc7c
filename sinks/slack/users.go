package slack

import (
	"context"
	"errors"
	"sync"
	"time"

	slackapi "github.com/slack-go/slack"
)

// userCache remembers users.lookupByEmail answers, found or not, so a
// failing branch does not call Slack on every build.
type userCache struct {
	api *slackapi.Client
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	entries map[string]userEntry
}

type userEntry struct {
	id      string // "" when the email is not a workspace member
	expires time.Time
}

// maxCachedUsers bounds the cache; it is emptied when full.
const maxCachedUsers = 10000

func newUserCache(api *slackapi.Client, ttl time.Duration, now func() time.Time) *userCache {
	return &userCache{api: api, ttl: ttl, now: now, entries: map[string]userEntry{}}
}

// lookup returns the Slack user id of an email, "" when no member has it.
func (c *userCache) lookup(ctx context.Context, email string) (string, error) {
	now := c.now()
	c.mu.Lock()
	e, ok := c.entries[email]
	c.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.id, nil
	}
	u, err := c.api.GetUserByEmailContext(ctx, email)
	var se slackapi.SlackErrorResponse
	switch {
	case errors.As(err, &se) && (se.Err == "users_not_found" || se.Err == "user_not_found"):
		e = userEntry{expires: now.Add(c.ttl / 10)}
	case err != nil:
		return "", err
	default:
		e = userEntry{id: u.ID, expires: now.Add(c.ttl)}
	}
	c.mu.Lock()
	if len(c.entries) >= maxCachedUsers {
		c.entries = map[string]userEntry{}
	}
	c.entries[email] = e
	c.mu.Unlock()
	return e.id, nil
}
