package usage

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/buildbridge/buildbridge/api"
)

// Response headers of every metered request (IETF draft
// ratelimit-headers): the token's limit per window, what remains of it,
// and the seconds until the window ends; Retry-After on a 429.
const (
	HeaderLimit      = "RateLimit-Limit"
	HeaderRemaining  = "RateLimit-Remaining"
	HeaderReset      = "RateLimit-Reset"
	HeaderRetryAfter = "Retry-After"
)

var (
	canonLimit     = http.CanonicalHeaderKey(HeaderLimit)
	canonRemaining = http.CanonicalHeaderKey(HeaderRemaining)
	canonReset     = http.CanonicalHeaderKey(HeaderReset)
)

// Middleware returns the handler that meters and rate-limits every
// authenticated request of a; install it with a.UseAfterAuth. A request
// over its token's limit is answered 429 with code rate_limited and
// Retry-After, and is counted like any other.
func Middleware(m *Meter, a *api.API) gin.HandlerFunc {
	return func(c *gin.Context) {
		u := api.CurrentUser(c)
		start := m.cfg.Now()
		d := m.Begin(Caller{TokenID: api.CurrentTokenID(c), UserID: u.ID, User: u.Name}, start)
		route := m.Route(c.Request.Method, c.FullPath())
		reset := seconds(d.Reset)
		// One allocation for the three values; keys in canonical form,
		// as Header.Set would write them.
		vals := make([]string, 3)
		vals[0], vals[1], vals[2] = d.t.limitText, numText(d.Remaining), numText(reset)
		h := c.Writer.Header()
		h[canonLimit], h[canonRemaining], h[canonReset] = vals[0:1:1], vals[1:2:2], vals[2:3:3]
		if d.Allowed {
			c.Next()
		} else {
			h.Set(HeaderRetryAfter, strconv.Itoa(max(reset, 1)))
			a.Fail(c, api.NewError(http.StatusTooManyRequests, "rate_limited",
				"rate limit reached: %d requests per %s for this token; try again in %d seconds", d.Limit, FormatWindow(m.cfg.Window), max(reset, 1)))
		}
		m.End(d, route, c.Writer.Status(), m.cfg.Now().Sub(start))
	}
}

// smallNums are the texts of 0 to 1023: the remaining requests of the
// default limit and the seconds of a window of up to 17 minutes, written
// without an allocation.
var smallNums = func() []string {
	out := make([]string, 1024)
	for i := range out {
		out[i] = strconv.Itoa(i)
	}
	return out
}()

func numText(n int) string {
	if n >= 0 && n < len(smallNums) {
		return smallNums[n]
	}
	return strconv.Itoa(n)
}

// FormatWindow writes a window as people do: 1m, 1h30m, 45s.
func FormatWindow(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// seconds rounds up to whole seconds, as the headers carry them.
func seconds(d time.Duration) int {
	return int((d + time.Second - 1) / time.Second)
}
