package api

import (
	"cmp"
	"context"
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/buildbridge/buildbridge/store"
)

// UsageReader reads metered API usage: what is stored, and what the
// server has metered but not stored yet.
type UsageReader interface {
	Usage(ctx context.Context, q store.UsageQuery) ([]store.UsageRow, error)
}

// UsageConfig enables the usage endpoints.
type UsageConfig struct {
	Reader UsageReader
	// RateLimit returns a user's API rate limit per token: requests per
	// window. Nil leaves it out of the answers.
	RateLimit func(u store.User) (limit int, window time.Duration)
	// MaxDays bounds the range of one query (default 366).
	MaxDays int
	// Now is the clock that says what today is (default time.Now).
	Now func() time.Time
}

// DefaultUsageDays is the range of a usage query without from: the last
// week, today included.
const DefaultUsageDays = 7

// EnableUsage adds GET /api/v1/user/usage (the caller's usage by day and
// route) and GET /api/v1/admin/usage (every user's, admins only).
func (a *API) EnableUsage(cfg UsageConfig) error {
	if cfg.Reader == nil {
		return errors.New("api: usage needs a Reader")
	}
	if cfg.MaxDays == 0 {
		cfg.MaxDays = 366
	}
	if cfg.MaxDays < 1 {
		return errors.New("api: usage MaxDays must be at least 1")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	u := &usageAPI{a: a, cfg: cfg}
	a.Group.GET("/user/usage", u.user)
	a.Group.GET("/admin/usage", u.admin)
	return nil
}

type usageAPI struct {
	a   *API
	cfg UsageConfig
}

// UsageFigures are the counts of one day, route, user or range.
type UsageFigures struct {
	Requests     int64   `json:"requests"`
	Errors       int64   `json:"errors"`
	LatencyAvgMS float64 `json:"latency_avg_ms"`
	LatencyMaxMS float64 `json:"latency_max_ms"`
	latencyUS    int64
}

func (f *UsageFigures) add(r store.UsageRow) {
	f.Requests += r.Requests
	f.Errors += r.Errors
	f.latencyUS += r.LatencyUS
	f.LatencyMaxMS = max(f.LatencyMaxMS, float64(r.MaxLatencyUS)/1000)
	if f.Requests > 0 {
		f.LatencyAvgMS = float64(f.latencyUS) / float64(f.Requests) / 1000
	}
}

// RouteUsage is the usage of one route.
type RouteUsage struct {
	Route string `json:"route"`
	UsageFigures
}

// DayUsage is the usage of one day, by route.
type DayUsage struct {
	Day string `json:"day"`
	UsageFigures
	Routes []RouteUsage `json:"routes"`
}

// UserUsage is the usage of one user over the range, by route.
type UserUsage struct {
	UserID int64  `json:"user_id"`
	User   string `json:"user"`
	UsageFigures
	// Days is how many days of the range had requests.
	Days   int          `json:"days"`
	Routes []RouteUsage `json:"routes"`
}

// RateLimit is a user's limit per token.
type RateLimit struct {
	Limit         int     `json:"limit"`
	WindowSeconds float64 `json:"window_seconds"`
}

// usageRange reads from and to (YYYY-MM-DD, UTC, inclusive); without
// them, the last DefaultUsageDays days.
func (u *usageAPI) usageRange(c *gin.Context) (string, string, error) {
	today := u.cfg.Now().UTC()
	parse := func(field, def string) (time.Time, error) {
		v := c.Query(field)
		if v == "" {
			v = def
		}
		t, err := time.Parse(store.DayLayout, v)
		if err != nil {
			return t, errorf(http.StatusBadRequest, "invalid_field", "%s=%q must be a day like 2006-01-02", field, v)
		}
		return t, nil
	}
	to, err := parse("to", today.Format(store.DayLayout))
	if err != nil {
		return "", "", err
	}
	from, err := parse("from", to.AddDate(0, 0, -(DefaultUsageDays-1)).Format(store.DayLayout))
	if err != nil {
		return "", "", err
	}
	if from.After(to) {
		return "", "", errorf(http.StatusBadRequest, "invalid_field", "from (%s) is after to (%s)", from.Format(store.DayLayout), to.Format(store.DayLayout))
	}
	if days := int(to.Sub(from)/(24*time.Hour)) + 1; days > u.cfg.MaxDays {
		return "", "", errorf(http.StatusBadRequest, "invalid_field", "the range has %d days; at most %d", days, u.cfg.MaxDays)
	}
	return from.Format(store.DayLayout), to.Format(store.DayLayout), nil
}

func (u *usageAPI) user(c *gin.Context) {
	from, to, err := u.usageRange(c)
	if err != nil {
		u.a.fail(c, err)
		return
	}
	me := CurrentUser(c)
	rows, err := u.cfg.Reader.Usage(c.Request.Context(), store.UsageQuery{UserID: me.ID, From: from, To: to})
	if err != nil {
		u.a.fail(c, err)
		return
	}
	sortRows(rows)
	var total UsageFigures
	days := []DayUsage{}
	for _, r := range rows {
		if len(days) == 0 || days[len(days)-1].Day != r.Day {
			days = append(days, DayUsage{Day: r.Day})
		}
		d := &days[len(days)-1]
		d.add(r)
		total.add(r)
		d.Routes = addRoute(d.Routes, r)
	}
	for i := range days {
		sortRoutes(days[i].Routes)
	}
	resp := gin.H{"from": from, "to": to, "user_id": me.ID, "total": total, "days": days}
	if u.cfg.RateLimit != nil {
		limit, window := u.cfg.RateLimit(me)
		resp["rate_limit"] = RateLimit{Limit: limit, WindowSeconds: window.Seconds()}
	}
	c.JSON(http.StatusOK, resp)
}

func (u *usageAPI) admin(c *gin.Context) {
	if !CurrentUser(c).Admin {
		u.a.fail(c, errorf(http.StatusForbidden, "forbidden", "only admins see every user's usage; yours is at GET /api/v1/user/usage"))
		return
	}
	from, to, err := u.usageRange(c)
	if err != nil {
		u.a.fail(c, err)
		return
	}
	ctx := c.Request.Context()
	q := store.UsageQuery{From: from, To: to}
	if name := c.Query("user"); name != "" {
		who, err := u.a.cfg.Store.UserByName(ctx, name)
		if errors.Is(err, store.ErrNotFound) {
			err = errorf(http.StatusNotFound, "not_found", "user %q not found", name)
		}
		if err != nil {
			u.a.fail(c, err)
			return
		}
		q.UserID = who.ID
	}
	rows, err := u.cfg.Reader.Usage(ctx, q)
	if err != nil {
		u.a.fail(c, err)
		return
	}
	users, err := u.a.cfg.Store.ListUsers(ctx)
	if err != nil {
		u.a.fail(c, err)
		return
	}
	names := make(map[int64]store.User, len(users))
	for _, us := range users {
		names[us.ID] = us
	}
	sortRows(rows)
	var total UsageFigures
	byUser := map[int64]*UserUsage{}
	lastDay := map[int64]string{}
	for _, r := range rows {
		uu := byUser[r.UserID]
		if uu == nil {
			uu = &UserUsage{UserID: r.UserID, User: names[r.UserID].Name}
			byUser[r.UserID] = uu
		}
		uu.add(r)
		total.add(r)
		uu.Routes = addRoute(uu.Routes, r)
		if lastDay[r.UserID] != r.Day {
			lastDay[r.UserID] = r.Day
			uu.Days++
		}
	}
	out := make([]UserUsage, 0, len(byUser))
	for _, uu := range byUser {
		sortRoutes(uu.Routes)
		out = append(out, *uu)
	}
	slices.SortFunc(out, func(a, b UserUsage) int {
		return cmp.Or(cmp.Compare(b.Requests, a.Requests), cmp.Compare(a.User, b.User), cmp.Compare(a.UserID, b.UserID))
	})
	resp := gin.H{"from": from, "to": to, "total": total, "users": out}
	if u.cfg.RateLimit != nil {
		limits := map[string]RateLimit{}
		for i := range out {
			limit, window := u.cfg.RateLimit(names[out[i].UserID])
			limits[out[i].User] = RateLimit{Limit: limit, WindowSeconds: window.Seconds()}
		}
		resp["rate_limits"] = limits
	}
	c.JSON(http.StatusOK, resp)
}

// addRoute adds a row to its route's figures.
func addRoute(routes []RouteUsage, r store.UsageRow) []RouteUsage {
	for i := range routes {
		if routes[i].Route == r.Route {
			routes[i].add(r)
			return routes
		}
	}
	ru := RouteUsage{Route: r.Route}
	ru.add(r)
	return append(routes, ru)
}

// sortRoutes puts the busiest routes first.
func sortRoutes(routes []RouteUsage) {
	slices.SortFunc(routes, func(a, b RouteUsage) int {
		return cmp.Or(cmp.Compare(b.Requests, a.Requests), cmp.Compare(a.Route, b.Route))
	})
}

// sortRows orders rows by day, user and route, as the aggregation reads
// them.
func sortRows(rows []store.UsageRow) {
	slices.SortFunc(rows, func(a, b store.UsageRow) int {
		return cmp.Or(cmp.Compare(a.Day, b.Day), cmp.Compare(a.UserID, b.UserID), cmp.Compare(a.Route, b.Route))
	})
}
