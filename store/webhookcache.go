package store

import (
	"sync"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

// webhookCache keeps ProjectWebhook's answers for a short while: every
// forge delivery looks its project and secret up by name, and at
// thousands of deliveries a second the query (a join and two JSON
// columns) was a tenth of a delivery's cost.
//
// This store's own writes to a project or its secret clear the cache, so
// on one node a rotated secret or a changed setting applies to the next
// delivery. A write made elsewhere (another node, the CLI on the same
// SQLite file) applies within the time to live. Unknown names are not
// cached: a project created elsewhere is found at once.
type webhookCache struct {
	ttl time.Duration

	mu      sync.Mutex
	gen     uint64 // counts invalidations
	entries map[string]webhookEntry
}

type webhookEntry struct {
	project builds.Project
	secret  WebhookSecret
	at      time.Time
}

// webhookCacheSize bounds the entries; a full cache starts over.
const webhookCacheSize = 4096

// get returns the entry for name if it is younger than the time to live,
// and the generation a lookup made now must be stored under.
func (c *webhookCache) get(name string, now time.Time) (webhookEntry, uint64, bool) {
	if c.ttl <= 0 {
		return webhookEntry{}, 0, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[name]
	if !ok || now.Sub(e.at) >= c.ttl || now.Before(e.at) {
		return webhookEntry{}, c.gen, false
	}
	return e, c.gen, true
}

// put stores a lookup made under generation gen, unless the cache was
// cleared since: the lookup may have read what that write replaced.
func (c *webhookCache) put(name string, gen uint64, e webhookEntry) {
	if c.ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if c.entries == nil || len(c.entries) >= webhookCacheSize {
		c.entries = make(map[string]webhookEntry)
	}
	c.entries[name] = e
}

// clear forgets every entry; called after a write to a project or a
// webhook secret.
func (c *webhookCache) clear() {
	c.mu.Lock()
	c.gen++
	c.entries = nil
	c.mu.Unlock()
}
