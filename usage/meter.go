package usage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/buildbridge/buildbridge/store"
)

// Defaults and bounds of Config.
const (
	DefaultLimit         = 600
	DefaultWindow        = time.Minute
	DefaultFlushInterval = 5 * time.Second
	// MaxLimit is the largest limit: a window's count has 24 bits.
	MaxLimit  = 1<<countBits - 1
	MaxWindow = 24 * time.Hour
	// MaxRoutes bounds the routes told apart; later ones count as
	// OtherRoute.
	MaxRoutes = 4096
)

// OtherRoute names the requests of routes beyond MaxRoutes.
const OtherRoute = "(other)"

// Store is where a Meter keeps the counts: *store.DB.
type Store interface {
	AddUsage(ctx context.Context, rows []store.UsageRow) error
	Usage(ctx context.Context, q store.UsageQuery) ([]store.UsageRow, error)
}

// Config configures a Meter.
type Config struct {
	// Limit is how many requests a token may make per Window (default
	// 600, at most MaxLimit).
	Limit int
	// Window is the rate-limit window: it starts at a token's first
	// request and lasts Window (default 1m, at most MaxWindow).
	Window time.Duration
	// Limits overrides Limit for the tokens of the named users.
	Limits map[string]int
	// Store receives the counts (required).
	Store Store
	// FlushInterval is how often Run adds the counts to the store
	// (default 5s): what a crash may lose.
	FlushInterval time.Duration
	// Now is the clock (default time.Now); tests set it.
	Now    func() time.Time
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Limit == 0 {
		c.Limit = DefaultLimit
	}
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = DefaultFlushInterval
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports the first impossible setting.
func (c *Config) Validate() error {
	switch {
	case c.Store == nil:
		return errors.New("usage: Store is required")
	case c.Limit < 1 || c.Limit > MaxLimit:
		return fmt.Errorf("usage: Limit must be between 1 and %d, got %d", MaxLimit, c.Limit)
	case c.Window < time.Second || c.Window > MaxWindow:
		return fmt.Errorf("usage: Window must be between 1s and %s, got %s", MaxWindow, c.Window)
	case c.FlushInterval < 10*time.Millisecond:
		return fmt.Errorf("usage: FlushInterval must be at least 10ms, got %s", c.FlushInterval)
	}
	for name, n := range c.Limits {
		if n < 1 || n > MaxLimit {
			return fmt.Errorf("usage: Limits[%q] must be between 1 and %d, got %d", name, MaxLimit, n)
		}
	}
	return nil
}

// Caller is who makes a request.
type Caller struct {
	// TokenID is the API token's id; 0 for a dashboard session, whose
	// requests are limited per user.
	TokenID int64
	UserID  int64
	// User is the user's name, which Config.Limits is keyed by.
	User string
}

// Decision is Begin's answer about one request, handed back to End.
type Decision struct {
	// Allowed is false when the token is over its limit: answer 429.
	Allowed bool
	// Limit is the token's limit per window; Remaining what is left of
	// it after this request.
	Limit, Remaining int
	// Reset is how long until the window ends and the limit is whole
	// again.
	Reset time.Duration
	t     *tokenState
}

// Bits of tokenState.window: the window's start in milliseconds since
// the Meter's epoch above, the requests counted in it below.
const (
	countBits = 24
	countMask = 1<<countBits - 1
	numShards = 64
)

// Meter meters and rate-limits API requests. Begin and End are safe for
// any number of goroutines at once.
type Meter struct {
	cfg      Config
	epoch    time.Time
	windowMS uint64
	shards   [numShards]shard

	routeMu    sync.Mutex
	maxRoutes  int
	routeIDs   atomic.Pointer[map[routeKey]int32]
	routeNames atomic.Pointer[[]string]

	flushMu sync.Mutex // serializes flushes, and reads against them
	unsaved []store.UsageRow
	retired []*tokenState

	threshMu    sync.Mutex
	thresholds  []Threshold
	threshReady chan struct{}
}

type shard struct {
	mu     sync.RWMutex
	tokens map[int64]*tokenState
	sys    sysCounters
	_      [64]byte // keeps the next shard's lock off this cache line
}

// tokenState is one token's window and counters.
type tokenState struct {
	key       int64 // the token id, or -user id for a session
	tokenID   int64
	userID    int64
	user      string
	shard     uint32
	limit     uint64
	limitText string // limit, for the RateLimit-Limit header
	at80      uint64
	// window is start<<countBits | count.
	window  atomic.Uint64
	lastUse atomic.Int64 // milliseconds since the epoch
	mu      sync.Mutex   // serializes growth of routes
	routes  atomic.Pointer[[]*routeCounter]
}

// routeCounter counts one token's requests on one route: the first four
// until the next flush, the last two until the next activity report.
type routeCounter struct {
	requests, errors, latencyUS, maxUS atomic.Int64
	actRequests, actErrors             atomic.Int64
}

type routeKey struct{ method, path string }

// New makes a Meter.
func New(cfg Config) (*Meter, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Meter{cfg: cfg, maxRoutes: MaxRoutes, epoch: cfg.Now(), windowMS: uint64(cfg.Window / time.Millisecond), threshReady: make(chan struct{}, 1)}
	for i := range m.shards {
		m.shards[i].tokens = map[int64]*tokenState{}
	}
	ids := map[routeKey]int32{}
	names := []string{OtherRoute}
	m.routeIDs.Store(&ids)
	m.routeNames.Store(&names)
	return m, nil
}

// LimitFor is the limit per window of a user's tokens, and the window.
func (m *Meter) LimitFor(user string) (int, time.Duration) {
	if n, ok := m.cfg.Limits[user]; ok {
		return n, m.cfg.Window
	}
	return m.cfg.Limit, m.cfg.Window
}

// Route returns the id of a route, by method and gin's route pattern
// (c.FullPath(); "" for none). Known routes cost one map read.
func (m *Meter) Route(method, path string) int32 {
	if id, ok := (*m.routeIDs.Load())[routeKey{method, path}]; ok {
		return id
	}
	return m.addRoute(method, path)
}

func (m *Meter) addRoute(method, path string) int32 {
	m.routeMu.Lock()
	defer m.routeMu.Unlock()
	old := *m.routeIDs.Load()
	if id, ok := old[routeKey{method, path}]; ok {
		return id
	}
	names := *m.routeNames.Load()
	if len(names) >= m.maxRoutes {
		return 0
	}
	name := method + " " + path
	if path == "" {
		name = method + " (unmatched)"
	}
	id := int32(len(names))
	ids := make(map[routeKey]int32, len(old)+1)
	for k, v := range old {
		ids[k] = v
	}
	ids[routeKey{method, path}] = id
	names = append(names[:len(names):len(names)], name)
	m.routeNames.Store(&names)
	m.routeIDs.Store(&ids)
	return id
}

// routeName names a route id.
func (m *Meter) routeName(id int32) string {
	names := *m.routeNames.Load()
	if int(id) < len(names) {
		return names[id]
	}
	return OtherRoute
}

func keyOf(c Caller) int64 {
	if c.TokenID > 0 {
		return c.TokenID
	}
	return -c.UserID
}

func shardOf(key int64) uint32 {
	return uint32((uint64(key) * 0x9E3779B97F4A7C15) >> (64 - 6))
}

// token returns the state of the caller's token, made on first use.
func (m *Meter) token(c Caller) *tokenState {
	key := keyOf(c)
	i := shardOf(key)
	sh := &m.shards[i]
	sh.mu.RLock()
	t := sh.tokens[key]
	sh.mu.RUnlock()
	if t != nil {
		return t
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if t = sh.tokens[key]; t != nil {
		return t
	}
	limit, _ := m.LimitFor(c.User)
	t = &tokenState{key: key, tokenID: max(c.TokenID, 0), userID: c.UserID, user: c.User, shard: i,
		limit: uint64(limit), limitText: strconv.Itoa(limit), at80: uint64(4*limit+4) / 5} // ⌈80%⌉
	sh.tokens[key] = t
	return t
}

func (m *Meter) ms(t time.Time) uint64 {
	d := t.Sub(m.epoch)
	if d < 0 {
		return 0
	}
	return uint64(d / time.Millisecond)
}

// Begin decides whether the caller may make a request at now, and counts
// it against the token's limit when it may.
func (m *Meter) Begin(c Caller, now time.Time) Decision {
	t := m.token(c)
	nowMS := m.ms(now)
	t.lastUse.Store(int64(nowMS))
	for {
		old := t.window.Load()
		start, n := old>>countBits, old&countMask
		var next uint64
		switch {
		case n == 0 || nowMS >= start+m.windowMS:
			start, next = nowMS, nowMS<<countBits|1
		case n >= t.limit:
			return Decision{Limit: int(t.limit), Reset: m.reset(start, nowMS), t: t}
		default:
			next = old + 1
		}
		if t.window.CompareAndSwap(old, next) {
			n = next & countMask
			if n == t.at80 || n == t.limit {
				m.crossed(t, n, start, now)
			}
			return Decision{Allowed: true, Limit: int(t.limit), Remaining: int(t.limit - n), Reset: m.reset(start, nowMS), t: t}
		}
	}
}

func (m *Meter) reset(start, nowMS uint64) time.Duration {
	end := start + m.windowMS
	if end <= nowMS {
		return 0
	}
	return time.Duration(end-nowMS) * time.Millisecond
}

// End counts a request Begin was asked about, with its route (from
// Route), answer status and latency. Refused requests are counted too.
func (m *Meter) End(d Decision, route int32, status int, latency time.Duration) {
	t := d.t
	if t == nil {
		return
	}
	us := max(latency.Microseconds(), 0)
	rc := t.counter(route)
	rc.requests.Add(1)
	rc.actRequests.Add(1)
	rc.latencyUS.Add(us)
	storeMax(&rc.maxUS, us)
	if status >= 400 {
		rc.errors.Add(1)
		rc.actErrors.Add(1)
	}
	s := &m.shards[t.shard].sys
	s.requests.Add(1)
	switch {
	case status >= 500:
		s.serverErrors.Add(1)
	case status == 429:
		s.rateLimited.Add(1)
		s.clientErrors.Add(1)
	case status >= 400:
		s.clientErrors.Add(1)
	}
	s.hist[bucketOf(us)].Add(1)
	storeMax(&s.maxUS, us)
}

func storeMax(v *atomic.Int64, x int64) {
	for {
		cur := v.Load()
		if x <= cur || v.CompareAndSwap(cur, x) {
			return
		}
	}
}

// counter returns the token's counter of a route, made on first use.
func (t *tokenState) counter(id int32) *routeCounter {
	if rs := t.routes.Load(); rs != nil && int(id) < len(*rs) {
		if c := (*rs)[id]; c != nil {
			return c
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var old []*routeCounter
	if rs := t.routes.Load(); rs != nil {
		old = *rs
	}
	if int(id) < len(old) && old[id] != nil {
		return old[id]
	}
	rs := make([]*routeCounter, max(len(old), int(id)+1))
	copy(rs, old)
	c := &routeCounter{}
	rs[id] = c
	t.routes.Store(&rs)
	return c
}

// counters returns the token's route counters, indexed by route id; some
// are nil.
func (t *tokenState) counters() []*routeCounter {
	if rs := t.routes.Load(); rs != nil {
		return *rs
	}
	return nil
}

// state reads the token's window at nowMS: requests counted, what
// remains and when it resets.
func (m *Meter) state(t *tokenState, nowMS uint64) (remaining int, reset time.Duration) {
	w := t.window.Load()
	start, n := w>>countBits, w&countMask
	if n == 0 || nowMS >= start+m.windowMS {
		return int(t.limit), m.cfg.Window
	}
	return int(t.limit - min(n, t.limit)), m.reset(start, nowMS)
}

// tokens returns every token state.
func (m *Meter) tokens() []*tokenState {
	var out []*tokenState
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.RLock()
		for _, t := range sh.tokens {
			out = append(out, t)
		}
		sh.mu.RUnlock()
	}
	return out
}
