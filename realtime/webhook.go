package realtime

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// Webhook is one signed, batched server webhook request, ready to send:
// a POST of Body to URL with Header (Content-Type, X-Pusher-Key and
// X-Pusher-Signature, the hex HMAC-SHA256 of Body with the app secret).
type Webhook struct {
	AppID  string
	URL    string
	Header http.Header
	Body   []byte
}

// A WebhookSender delivers server webhooks. A delivery engine with retries
// can take the place of the default HTTPWebhookSender.
type WebhookSender interface {
	SendWebhook(ctx context.Context, w Webhook) error
}

// HTTPWebhookSender posts webhooks with net/http, once, without retries.
type HTTPWebhookSender struct {
	// Client sends the requests; nil means a client with a 10s timeout.
	Client *http.Client

	once sync.Once
	def  *http.Client
}

// SendWebhook posts w and fails on a transport error or a non-2xx status.
func (s *HTTPWebhookSender) SendWebhook(ctx context.Context, w Webhook) error {
	c := s.Client
	if c == nil {
		s.once.Do(func() { s.def = &http.Client{Timeout: 10 * time.Second} })
		c = s.def
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(w.Body))
	if err != nil {
		return fmt.Errorf("realtime: webhook request: %w", err)
	}
	for k, v := range w.Header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("realtime: webhook to %s: %w", w.URL, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("realtime: webhook to %s: status %d", w.URL, resp.StatusCode)
	}
	return nil
}

// WebhookEvent is one event inside a webhook body.
type WebhookEvent struct {
	Name    string `json:"name"`
	Channel string `json:"channel"`
	UserID  string `json:"user_id,omitempty"`
}

// WebhookBody is the JSON body of a webhook.
type WebhookBody struct {
	TimeMS int64          `json:"time_ms"`
	Events []WebhookEvent `json:"events"`
}

// maxWebhookEvents bounds one webhook body; more events make more requests.
const maxWebhookEvents = 100

// webhookQueueSize bounds events waiting for the batcher; beyond it
// events are dropped and logged rather than blocking connections.
const webhookQueueSize = 4096

type queuedWebhook struct {
	app *app
	ev  WebhookEvent
}

// webhookBatcher collects webhook events per app and sends one request
// per app and window.
type webhookBatcher struct {
	srv  *Server
	in   chan queuedWebhook
	stop chan struct{}
	done chan struct{}
}

func newWebhookBatcher(s *Server) *webhookBatcher {
	return &webhookBatcher{srv: s, in: make(chan queuedWebhook, webhookQueueSize),
		stop: make(chan struct{}), done: make(chan struct{})}
}

// add queues ev for a if the app wants it; it never blocks.
func (w *webhookBatcher) add(a *app, name, channel, userID string) {
	if !a.wantsWebhook(name) {
		return
	}
	select {
	case w.in <- queuedWebhook{a, WebhookEvent{Name: name, Channel: channel, UserID: userID}}:
	default:
		w.srv.log.Warn("realtime: webhook queue full, event dropped",
			"app", a.cfg.ID, "event", name, "channel", channel)
	}
}

func (w *webhookBatcher) run() {
	defer close(w.done)
	pending := make(map[*app][]WebhookEvent)
	var timer *time.Timer
	var tick <-chan time.Time
	flush := func() {
		for a, evs := range pending {
			for len(evs) > 0 {
				n := min(len(evs), maxWebhookEvents)
				w.send(a, evs[:n])
				evs = evs[n:]
			}
		}
		clear(pending)
		tick = nil
	}
	for {
		select {
		case q := <-w.in:
			pending[q.app] = append(pending[q.app], q.ev)
			if tick == nil {
				if timer == nil {
					timer = time.NewTimer(w.srv.cfg.WebhookBatchWindow)
				} else {
					timer.Reset(w.srv.cfg.WebhookBatchWindow)
				}
				tick = timer.C
			}
		case <-tick:
			flush()
		case <-w.stop:
			for {
				select {
				case q := <-w.in:
					pending[q.app] = append(pending[q.app], q.ev)
					continue
				default:
				}
				break
			}
			flush()
			return
		}
	}
}

func (w *webhookBatcher) send(a *app, evs []WebhookEvent) {
	body, err := json.Marshal(WebhookBody{TimeMS: w.srv.cfg.Now().UnixMilli(), Events: evs})
	if err != nil {
		w.srv.log.Error("realtime: encode webhook", "app", a.cfg.ID, "err", err)
		return
	}
	h := make(http.Header, 3)
	h.Set("Content-Type", "application/json")
	h.Set("X-Pusher-Key", a.cfg.Key)
	h.Set("X-Pusher-Signature", sign(a.cfg.Secret, string(body)))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err = w.srv.cfg.WebhookSender.SendWebhook(ctx, Webhook{AppID: a.cfg.ID, URL: a.cfg.Webhook.URL, Header: h, Body: body})
	if err != nil {
		w.srv.log.Warn("realtime: webhook not delivered", "app", a.cfg.ID, "events", len(evs), "err", err)
	}
}

// close flushes what is pending and waits for the batcher to end.
func (w *webhookBatcher) close() {
	close(w.stop)
	<-w.done
}
