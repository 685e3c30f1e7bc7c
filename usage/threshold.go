package usage

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/buildbridge/buildbridge/event"
)

// Threshold is a token's crossing of 80% or 100% of its limit: at most
// one of each per window.
type Threshold struct {
	TokenID int64
	UserID  int64
	User    string
	// Percent is 80 or 100.
	Percent int
	Limit   int
	// Used is the requests counted in the window when it was crossed.
	Used        int
	Window      time.Duration
	WindowStart time.Time
	// At is when the crossing request came.
	At time.Time
}

// thresholdBody is the data of a usage-threshold event.
type thresholdBody struct {
	UserID        int64     `json:"user_id"`
	User          string    `json:"user"`
	TokenID       int64     `json:"token_id"`
	Percent       int       `json:"percent"`
	Limit         int       `json:"limit"`
	Used          int       `json:"used"`
	WindowSeconds float64   `json:"window_seconds"`
	WindowStart   time.Time `json:"window_start"`
	ResetAt       time.Time `json:"reset_at"`
}

// Event is the usage-threshold event of the crossing. Its id depends only
// on the token, the window and the level, so the same crossing emitted
// twice is delivered once.
func (th Threshold) Event() event.Envelope {
	who := "t" + strconv.FormatInt(th.TokenID, 10)
	if th.TokenID == 0 {
		who = "u" + strconv.FormatInt(th.UserID, 10)
	}
	body, _ := json.Marshal(thresholdBody{UserID: th.UserID, User: th.User, TokenID: th.TokenID, Percent: th.Percent,
		Limit: th.Limit, Used: th.Used, WindowSeconds: th.Window.Seconds(),
		WindowStart: th.WindowStart.UTC(), ResetAt: th.WindowStart.Add(th.Window).UTC()})
	return event.Envelope{
		ID:   "evt_usage_" + who + "_" + strconv.FormatInt(th.WindowStart.UnixMilli(), 10) + "_" + strconv.Itoa(th.Percent),
		Type: event.TypeUsageThreshold, Time: th.At.UTC(), Data: body,
	}
}

// crossed records a crossing; it runs once per level and window, from
// Begin, so it may allocate.
func (m *Meter) crossed(t *tokenState, n, start uint64, now time.Time) {
	th := Threshold{TokenID: t.tokenID, UserID: t.userID, User: t.user, Percent: 80, Limit: int(t.limit), Used: int(n),
		Window: m.cfg.Window, WindowStart: m.epoch.Add(time.Duration(start) * time.Millisecond), At: now}
	if n == t.limit {
		th.Percent = 100
	}
	m.threshMu.Lock()
	if n == t.limit && n == t.at80 {
		// A limit of 1 to 4: the first request crosses both levels.
		low := th
		low.Percent = 80
		m.thresholds = append(m.thresholds, low)
	}
	m.thresholds = append(m.thresholds, th)
	m.threshMu.Unlock()
	select {
	case m.threshReady <- struct{}{}:
	default:
	}
}

// Thresholds returns the crossings since the last call, oldest first.
func (m *Meter) Thresholds() []Threshold {
	m.threshMu.Lock()
	defer m.threshMu.Unlock()
	out := m.thresholds
	m.thresholds = nil
	return out
}

// ThresholdsReady receives a value when crossings wait for Thresholds.
func (m *Meter) ThresholdsReady() <-chan struct{} { return m.threshReady }
