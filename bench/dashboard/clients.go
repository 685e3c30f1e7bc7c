package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// account is a seeded user: its token and its projects.
type account struct {
	id       int64
	token    string
	projects []string
}

// counters are what the simulated dashboards saw; read is every byte the
// server sent them (HTTP responses and WebSocket frames, as read from the
// sockets).
type counters struct {
	read     atomic.Int64
	requests atomic.Int64
	errors   atomic.Int64
	events   atomic.Int64 // build-state-changed
	logs     atomic.Int64 // build-log
	lastErr  atomic.Pointer[string]
}

func (c *counters) fail(err error) {
	c.errors.Add(1)
	s := err.Error()
	c.lastErr.Store(&s)
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// newClient is an HTTP client whose connections count what they read.
// Each dashboard keeps its connection alive, as a browser tab does.
func newClient(c *counters, conns int) *http.Client {
	d := &net.Dialer{Timeout: 10 * time.Second}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			nc, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return countingConn{Conn: nc, n: &c.read}, nil
		},
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     2 * time.Minute,
	}}
}

func get(ctx context.Context, hc *http.Client, c *counters, token, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	r, err := hc.Do(req)
	c.requests.Add(1)
	if err != nil {
		return err
	}
	defer r.Body.Close()
	if r.StatusCode != 200 {
		b, _ := io.ReadAll(io.LimitReader(r.Body, 512))
		return fmt.Errorf("GET %s: %d %s", u, r.StatusCode, b)
	}
	if v == nil {
		_, err = io.Copy(io.Discard, r.Body)
		return err
	}
	return json.NewDecoder(r.Body).Decode(v)
}

// snapshot is what a dashboard page reads to show a user's projects with
// their latest builds: the project list, then each project's builds.
func snapshot(ctx context.Context, hc *http.Client, c *counters, base string, a account) error {
	var ps struct {
		Projects []struct {
			Name string `json:"name"`
		} `json:"projects"`
	}
	if err := get(ctx, hc, c, a.token, base+"/api/v1/projects", &ps); err != nil {
		return err
	}
	if len(ps.Projects) == 0 {
		return errors.New("no projects listed")
	}
	for _, p := range ps.Projects {
		if err := get(ctx, hc, c, a.token, base+"/api/v1/projects/"+url.PathEscape(p.Name)+"/builds?limit=5", nil); err != nil {
			return err
		}
	}
	return nil
}

// runPollers runs n polling dashboards until ctx ends: each reads the
// snapshot every interval, starting at a random point of the first one.
func runPollers(ctx context.Context, base string, accounts []account, n int, interval time.Duration, c *counters) *sync.WaitGroup {
	hc := newClient(c, n)
	var wg sync.WaitGroup
	for i := range n {
		a := accounts[i%len(accounts)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTimer(rand.N(interval))
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				if err := snapshot(ctx, hc, c, base, a); err != nil && ctx.Err() == nil {
					c.fail(err)
				}
				t.Reset(interval)
			}
		}()
	}
	return &wg
}

type pusherMsg struct {
	Event   string `json:"event"`
	Channel string `json:"channel,omitempty"`
	Data    any    `json:"data"`
}

// pushDashboard is one dashboard as the real page behaves: connect over
// the Pusher protocol, get its private channel signed by the auth
// endpoint, read the snapshot once, then only receive events.
func pushDashboard(ctx context.Context, hc *http.Client, c *counters, base, key string, a account, ready chan<- error) {
	wsURL := "ws" + strings.TrimPrefix(base, "http") + "/app/" + key + "?protocol=7&client=bench&version=1.0"
	ws, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		ready <- fmt.Errorf("dial: %w", err)
		return
	}
	defer ws.CloseNow()
	read := func() (pusherMsg, string, error) {
		_, b, err := ws.Read(ctx)
		if err != nil {
			return pusherMsg{}, "", err
		}
		var m pusherMsg
		if err := json.Unmarshal(b, &m); err != nil {
			return m, "", fmt.Errorf("bad frame %q: %w", b, err)
		}
		s, _ := m.Data.(string)
		return m, s, nil
	}
	m, data, err := read()
	var est struct {
		SocketID        string `json:"socket_id"`
		ActivityTimeout int    `json:"activity_timeout"`
	}
	if err == nil && (m.Event != "pusher:connection_established" || json.Unmarshal([]byte(data), &est) != nil) {
		err = fmt.Errorf("unexpected first message %q", m.Event)
	}
	if err != nil {
		ready <- err
		return
	}
	channel := fmt.Sprintf("private-user-%d", a.id)
	form := url.Values{"socket_id": {est.SocketID}, "channel_name": {channel}}
	req, _ := http.NewRequestWithContext(ctx, "POST", base+"/user/channel/auth", strings.NewReader(form.Encode()))
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r, err := hc.Do(req)
	if err != nil {
		ready <- fmt.Errorf("auth: %w", err)
		return
	}
	var auth struct {
		Auth string `json:"auth"`
	}
	err = json.NewDecoder(r.Body).Decode(&auth)
	r.Body.Close()
	if err != nil || r.StatusCode != 200 || auth.Auth == "" {
		ready <- fmt.Errorf("auth: %d %v", r.StatusCode, err)
		return
	}
	sub, _ := json.Marshal(pusherMsg{Event: "pusher:subscribe", Data: map[string]string{"channel": channel, "auth": auth.Auth}})
	if err := ws.Write(ctx, websocket.MessageText, sub); err != nil {
		ready <- err
		return
	}
	for {
		m, _, err := read()
		if err != nil {
			ready <- fmt.Errorf("subscribe: %w", err)
			return
		}
		if m.Event == "pusher_internal:subscription_succeeded" {
			break
		}
		if m.Event == "pusher:error" {
			ready <- fmt.Errorf("subscribe: %v", m.Data)
			return
		}
	}
	// The page reads its snapshot once, after subscribing.
	if err := snapshot(ctx, hc, c, base, a); err != nil {
		ready <- fmt.Errorf("snapshot: %w", err)
		return
	}
	ready <- nil
	ping, _ := json.Marshal(pusherMsg{Event: "pusher:ping", Data: map[string]string{}})
	pong, _ := json.Marshal(pusherMsg{Event: "pusher:pong", Data: map[string]string{}})
	// Like pusher-js: after activity_timeout without a message, ping.
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	idle := time.Duration(max(est.ActivityTimeout, 10)) * time.Second
	pctx, stopPinger := context.WithCancel(ctx)
	pinger := make(chan struct{})
	go func() {
		defer close(pinger)
		t := time.NewTicker(idle / 4)
		defer t.Stop()
		for {
			select {
			case <-pctx.Done():
				return
			case <-t.C:
				if time.Since(time.Unix(0, last.Load())) >= idle {
					ws.Write(ctx, websocket.MessageText, ping)
					last.Store(time.Now().UnixNano())
				}
			}
		}
	}()
	defer func() { stopPinger(); <-pinger }()
	for {
		_, b, err := ws.Read(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			c.fail(err)
			return
		}
		last.Store(time.Now().UnixNano())
		var m pusherMsg
		if json.Unmarshal(b, &m) != nil {
			continue
		}
		switch {
		case m.Event == "pusher:ping":
			ws.Write(ctx, websocket.MessageText, pong)
		case m.Event == "build-state-changed":
			c.events.Add(1)
		case m.Event == "build-log":
			c.logs.Add(1)
		}
	}
}

// runPushers connects n push dashboards, returning when all are ready
// (or the first failed); they run until ctx ends.
func runPushers(ctx context.Context, base, key string, accounts []account, n int, c *counters) (*sync.WaitGroup, error) {
	hc := newClient(c, n)
	var wg sync.WaitGroup
	ready := make(chan error, n)
	sem := make(chan struct{}, 16) // connect a few at a time, as tabs open
	for i := range n {
		a := accounts[i%len(accounts)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			r := make(chan error, 1)
			go func() {
				err := <-r
				<-sem
				ready <- err
			}()
			pushDashboard(ctx, hc, c, base, key, a, r)
		}()
	}
	for range n {
		if err := <-ready; err != nil {
			return &wg, err
		}
	}
	return &wg, nil
}
