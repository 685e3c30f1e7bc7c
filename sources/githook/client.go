package githook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/buildbridge/buildbridge/sources"
)

// Client sends hook requests to the hub.
type Client struct {
	// URL is the hub's base URL, e.g. http://127.0.0.1:8080.
	URL string
	// Token is the API token sent as "Authorization: Bearer".
	Token string
	// HTTP is the client used (default: one without a timeout of its own;
	// the context bounds each call).
	HTTP *http.Client
}

// SendError is why a request was not taken. Permanent errors will not
// succeed if the same request is sent again (the hub found it malformed);
// others may (the hub is down, overloaded, or refuses the token or the
// project until someone fixes them).
type SendError struct {
	// Status is the hub's HTTP status, 0 when it did not answer.
	Status    int
	Permanent bool
	Err       error
}

func (e *SendError) Error() string { return e.Err.Error() }
func (e *SendError) Unwrap() error { return e.Err }

// Send posts one request body to POST /hooks/git and returns the hub's
// answer.
func (c *Client) Send(ctx context.Context, body []byte) (sources.ResultJSON, error) {
	var res sources.ResultJSON
	endpoint, err := url.JoinPath(c.URL, "/hooks/git")
	if err != nil {
		return res, &SendError{Permanent: true, Err: fmt.Errorf("hub URL %q: %w", c.URL, err)}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return res, &SendError{Err: fmt.Errorf("hub URL %q: %w", c.URL, err)}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.Token)
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return res, &SendError{Err: fmt.Errorf("hub %s unreachable: %s", c.URL, netReason(err))}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return res, &SendError{Status: resp.StatusCode, Err: fmt.Errorf("hub %s: reading the answer: %s", c.URL, netReason(err))}
	}
	if resp.StatusCode/100 == 2 {
		if err := json.Unmarshal(raw, &res); err != nil {
			// The hub took the request; an unreadable answer does not undo it.
			return sources.ResultJSON{Builds: []sources.BuildJSON{}}, nil
		}
		return res, nil
	}
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	msg := strings.TrimSpace(string(raw))
	if json.Unmarshal(raw, &e) == nil && e.Error.Message != "" {
		msg = e.Error.Message
	}
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	se := &SendError{Status: resp.StatusCode, Err: fmt.Errorf("hub %s refused the request (%d): %s", c.URL, resp.StatusCode, msg)}
	switch resp.StatusCode {
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusUnprocessableEntity, http.StatusMethodNotAllowed:
		se.Permanent = true
	}
	return res, se
}

// netReason is the short cause of a transport error: "connection
// refused", "timed out", …
func netReason(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		return "no answer in time"
	case strings.Contains(err.Error(), "connection refused"):
		return "connection refused"
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}
