package delivery

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/buildbridge/buildbridge/sinks"
)

// Attempt is one try of one delivery, as a Sender sees it.
type Attempt struct {
	Delivery sinks.Delivery
	// ID is the message id: the same on every attempt of the delivery,
	// across restarts and redeliveries (the webhook-id header).
	ID string
	// Number counts the delivery's attempts from 1.
	Number int
}

// Response is what the destination answered to an attempt, kept in the
// attempt log (the engine caps Body).
type Response struct {
	StatusCode int
	Header     http.Header
	Body       []byte
}

// Sender is implemented by sinks that take the message id from the
// engine and report the destination's answer, for the attempt log. A sink
// that only implements sinks.Sink is called through Deliver.
type Sender interface {
	Send(ctx context.Context, a Attempt) (Response, error)
}

// MessageID is the id of the delivery of an event to a sink's target,
// derived from the three so that it is the same on every attempt and
// after any restart: "msg_", the ten characters of the event id's ULID
// that hold its time (hex digits of the hash for an event id without
// one), and 22 hex digits of a hash of the three. The time first keeps
// the store's unique index on message ids in insertion order: with a
// hash first, every new delivery wrote a page of the index somewhere in
// the middle (bench: 67 µs of writes per delivery at 100,000 rows,
// 37–45 µs in time order).
func MessageID(eventID, sink, target string) string {
	sum := messageHash(eventID, sink, target)
	prefix := hex.EncodeToString(sum[11:16])
	if u, ok := strings.CutPrefix(eventID, "evt_"); ok && len(u) == 26 {
		prefix = u[:10]
	}
	return "msg_" + prefix + hex.EncodeToString(sum[:11])
}

// legacyMessageID is the message id earlier versions gave a delivery:
// "msg_" and 32 hex digits of the same hash. A delivery an earlier
// version stored under it is not created again under the new one (an
// event the bus delivers again after an upgrade).
func legacyMessageID(eventID, sink, target string) string {
	sum := messageHash(eventID, sink, target)
	return "msg_" + hex.EncodeToString(sum[:16])
}

func messageHash(eventID, sink, target string) [sha256.Size]byte {
	h := sha256.New()
	for _, s := range []string{eventID, sink, target} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// Error classifies the failure of an attempt. A sink returns one
// (through Permanent, Gone, RetryAfter or ClassifyHTTP) to say more than
// "temporary"; any other error is temporary.
type Error struct {
	Err error
	// Permanent failures are not retried: the delivery fails at once.
	Permanent bool
	// Gone means the endpoint no longer exists (HTTP 410): it is disabled.
	Gone bool
	// RetryAfter, when positive, is how long the destination asked to
	// wait before the next attempt (Retry-After).
	RetryAfter time.Duration
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Permanent marks err as a failure that retrying cannot fix (a request
// the destination refuses, an invalid configuration).
func Permanent(err error) error { return &Error{Err: err, Permanent: true} }

// Gone marks err as the answer of an endpoint that no longer exists.
func Gone(err error) error { return &Error{Err: err, Permanent: true, Gone: true} }

// RetryAfter marks err as temporary with the wait the destination asked for.
func RetryAfter(err error, d time.Duration) error { return &Error{Err: err, RetryAfter: d} }

// classify unpacks an attempt's error.
func classify(err error) Error {
	var e *Error
	if errors.As(err, &e) {
		return *e
	}
	return Error{Err: err}
}

// StatusError is the failure of an HTTP attempt answered with a status
// outside 2xx.
type StatusError struct {
	Code int
}

func (e *StatusError) Error() string {
	if t := http.StatusText(e.Code); t != "" {
		return fmt.Sprintf("HTTP %d %s", e.Code, t)
	}
	return fmt.Sprintf("HTTP %d", e.Code)
}

// ClassifyHTTP turns an HTTP answer into nil (2xx) or a classified error:
// 410 is Gone; 4xx other than 408, 409, 425 and 429 is permanent; 3xx
// (redirects are not followed), 5xx and the four above are temporary,
// with the Retry-After header honoured.
func ClassifyHTTP(code int, header http.Header, now time.Time) error {
	if code >= 200 && code < 300 {
		return nil
	}
	err := &StatusError{Code: code}
	switch {
	case code == http.StatusGone:
		return Gone(err)
	case code == http.StatusRequestTimeout, code == http.StatusConflict, code == http.StatusTooEarly, code == http.StatusTooManyRequests:
	case code >= 400 && code < 500:
		return Permanent(err)
	}
	if d, ok := ParseRetryAfter(header.Get("Retry-After"), now); ok {
		return RetryAfter(err, d)
	}
	return err
}

// ParseRetryAfter reads a Retry-After value: seconds, or an HTTP date
// (a date in the past is a wait of zero).
func ParseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		if n > int64(365*24*time.Hour/time.Second) {
			n = int64(365 * 24 * time.Hour / time.Second)
		}
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}
