package slack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	slackapi "github.com/slack-go/slack"

	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/sinks/delivery"
)

// postWebhook posts a message to the incoming webhook. Slack answers
// "ok", or a status with an error code in the body, read here to say
// what is wrong: 404 no_service (the hook was removed), 410 (archived
// channel), 400 (the message), 403 (posting refused).
func (s *Sink) postWebhook(ctx context.Context, d *sinks.Delivery, m *message) (delivery.Response, error) {
	wm := slackapi.WebhookMessage{Text: m.text, Attachments: m.attachments,
		Username: d.Params["username"], IconEmoji: d.Params["icon_emoji"]}
	if len(m.blocks) > 0 {
		wm.Blocks = &slackapi.Blocks{BlockSet: m.blocks}
	}
	raw, err := json.Marshal(wm)
	if err != nil {
		return delivery.Response{}, delivery.Permanent(fmt.Errorf("encoding the message: %w", err))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.webhook, bytes.NewReader(raw))
	if err != nil {
		return delivery.Response{}, delivery.Permanent(fmt.Errorf("webhook request: %w", err))
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	resp, err := s.opts.HTTPClient.Do(req)
	if err != nil {
		// The URL is a secret: never in the error.
		return delivery.Response{}, fmt.Errorf("posting to the incoming webhook: %w", redactURL(err))
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	out := delivery.Response{StatusCode: resp.StatusCode, Body: body}
	code := strings.TrimSpace(string(body))
	switch {
	case resp.StatusCode == http.StatusOK:
		return out, nil
	case resp.StatusCode == http.StatusTooManyRequests:
		e := fmt.Errorf("incoming webhook: rate limited by Slack")
		if wait, ok := delivery.ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			return out, delivery.RetryAfter(e, wait)
		}
		return out, e
	case resp.StatusCode >= 500:
		return out, fmt.Errorf("incoming webhook: Slack answered HTTP %d %s", resp.StatusCode, code)
	case code == "no_service" || code == "no_team" || code == "team_disabled":
		return out, delivery.Gone(fmt.Errorf("incoming webhook: Slack answered %d %s: the webhook was removed; create a new one and set webhook_url", resp.StatusCode, code))
	case code == "channel_is_archived" || resp.StatusCode == http.StatusGone:
		return out, delivery.Permanent(fmt.Errorf("incoming webhook: the channel is archived (%s): unarchive it or make a webhook for another channel", code))
	case code == "channel_not_found":
		return out, delivery.Permanent(fmt.Errorf("incoming webhook: Slack answered channel_not_found: the webhook's channel was deleted; make a new webhook"))
	case resp.StatusCode == http.StatusForbidden:
		return out, delivery.Permanent(fmt.Errorf("incoming webhook: Slack refused to post (%s): check the workspace's posting permissions", code))
	}
	return out, delivery.Permanent(fmt.Errorf("incoming webhook: Slack refused the message (HTTP %d %s): check the sink's template and layout", resp.StatusCode, code))
}

// redactURL keeps the webhook URL (a secret) out of a transport error.
func redactURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}
