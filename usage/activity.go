package usage

import (
	"cmp"
	"encoding/json"
	"slices"
	"strconv"
	"time"

	"github.com/buildbridge/buildbridge/event"
)

// Bounds of an api-usage event, which must fit in one realtime message.
const (
	maxActivityTokens = 20
	maxActivityRoutes = 20
)

// UserActivity is one user's use of the API since the last report.
type UserActivity struct {
	UserID   int64  `json:"user_id"`
	User     string `json:"user"`
	Requests int64  `json:"requests"`
	Errors   int64  `json:"errors"`
	// Limit, Remaining and Reset (seconds) are those of the user's token
	// with the least remaining.
	Limit     int     `json:"limit"`
	Remaining int     `json:"remaining"`
	Reset     float64 `json:"reset"`
	// Tokens and Routes are the busiest, up to 20 each.
	Tokens []TokenActivity `json:"tokens"`
	Routes []RouteActivity `json:"routes"`
}

// TokenActivity is one token's part of a UserActivity.
type TokenActivity struct {
	// TokenID is 0 for the dashboard session.
	TokenID   int64   `json:"token_id"`
	Requests  int64   `json:"requests"`
	Errors    int64   `json:"errors"`
	Limit     int     `json:"limit"`
	Remaining int     `json:"remaining"`
	Reset     float64 `json:"reset"`
}

// RouteActivity is one route's part of a UserActivity.
type RouteActivity struct {
	Route    string `json:"route"`
	Requests int64  `json:"requests"`
	Errors   int64  `json:"errors"`
}

// Activity returns the users who made requests since the last call, by
// user id, each with the counts of that time and their tokens' remaining
// quota at now. Users who made none are left out.
func (m *Meter) Activity(now time.Time) []UserActivity {
	nowMS := m.ms(now)
	byUser := map[int64]*UserActivity{}
	for _, t := range m.tokens() {
		ta := TokenActivity{TokenID: t.tokenID}
		var routes []RouteActivity
		for id, c := range t.counters() {
			if c == nil || c.actRequests.Load() == 0 {
				continue
			}
			r := RouteActivity{Route: m.routeName(int32(id)), Requests: c.actRequests.Swap(0), Errors: c.actErrors.Swap(0)}
			ta.Requests += r.Requests
			ta.Errors += r.Errors
			routes = append(routes, r)
		}
		if ta.Requests == 0 {
			continue
		}
		remaining, reset := m.state(t, nowMS)
		ta.Limit, ta.Remaining, ta.Reset = int(t.limit), remaining, reset.Seconds()
		ua := byUser[t.userID]
		if ua == nil {
			ua = &UserActivity{UserID: t.userID, User: t.user, Limit: ta.Limit, Remaining: ta.Remaining, Reset: ta.Reset}
			byUser[t.userID] = ua
		}
		ua.Requests += ta.Requests
		ua.Errors += ta.Errors
		if ta.Remaining < ua.Remaining {
			ua.Limit, ua.Remaining, ua.Reset = ta.Limit, ta.Remaining, ta.Reset
		}
		ua.Tokens = append(ua.Tokens, ta)
		for _, r := range routes {
			i := slices.IndexFunc(ua.Routes, func(x RouteActivity) bool { return x.Route == r.Route })
			if i < 0 {
				ua.Routes = append(ua.Routes, r)
				continue
			}
			ua.Routes[i].Requests += r.Requests
			ua.Routes[i].Errors += r.Errors
		}
	}
	out := make([]UserActivity, 0, len(byUser))
	for _, ua := range byUser {
		slices.SortFunc(ua.Tokens, func(a, b TokenActivity) int {
			return cmp.Or(cmp.Compare(b.Requests, a.Requests), cmp.Compare(a.TokenID, b.TokenID))
		})
		slices.SortFunc(ua.Routes, func(a, b RouteActivity) int {
			return cmp.Or(cmp.Compare(b.Requests, a.Requests), cmp.Compare(a.Route, b.Route))
		})
		ua.Tokens = ua.Tokens[:min(len(ua.Tokens), maxActivityTokens)]
		ua.Routes = ua.Routes[:min(len(ua.Routes), maxActivityRoutes)]
		out = append(out, *ua)
	}
	slices.SortFunc(out, func(a, b UserActivity) int { return cmp.Compare(a.UserID, b.UserID) })
	return out
}

// activityBody is the data of an api-usage event.
type activityBody struct {
	UserActivity
	IntervalSeconds float64 `json:"interval_seconds"`
}

// Event is the api-usage event of the activity, reported at now for the
// interval before it.
func (a UserActivity) Event(now time.Time, interval time.Duration) (event.Envelope, error) {
	body, err := json.Marshal(activityBody{UserActivity: a, IntervalSeconds: interval.Seconds()})
	if err != nil {
		return event.Envelope{}, err
	}
	return event.Envelope{
		ID:   "evt_apiusage_" + strconv.FormatInt(a.UserID, 10) + "_" + strconv.FormatInt(now.UnixMilli(), 10),
		Type: event.TypeAPIUsage, Time: now.UTC(), Data: body,
	}, nil
}

// ActiveUsers counts the users who made a request since since.
func (m *Meter) ActiveUsers(since time.Time) int {
	sinceMS := int64(m.ms(since))
	seen := map[int64]bool{}
	for _, t := range m.tokens() {
		if t.lastUse.Load() >= sinceMS {
			seen[t.userID] = true
		}
	}
	return len(seen)
}
