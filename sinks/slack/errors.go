package slack

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	slackapi "github.com/slack-go/slack"

	"github.com/buildbridge/buildbridge/sinks/delivery"
)

// classify turns a Web API failure into a delivery error: rate limits
// and Slack's own trouble are temporary (with Retry-After), errors no
// retry can fix are permanent, with what to do about them.
func classify(method, channel string, err error) error {
	var rl *slackapi.RateLimitedError
	if errors.As(err, &rl) {
		return delivery.RetryAfter(fmt.Errorf("%s: rate limited by Slack (retry after %s)", method, rl.RetryAfter), rl.RetryAfter)
	}
	var sc slackapi.StatusCodeError
	if errors.As(err, &sc) {
		e := fmt.Errorf("%s: Slack answered HTTP %d", method, sc.Code)
		if sc.Code == http.StatusTooManyRequests || sc.Code >= 500 || sc.Code == http.StatusRequestTimeout {
			return e
		}
		return delivery.Permanent(fmt.Errorf("%w: check api_url", e))
	}
	var se slackapi.SlackErrorResponse
	if !errors.As(err, &se) {
		return fmt.Errorf("%s: %w", method, err) // network: temporary
	}
	code := se.Err
	switch code {
	case "ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout", "team_added_to_org":
		return fmt.Errorf("%s: Slack answered %s", method, code)
	case "channel_not_found":
		return delivery.Permanent(fmt.Errorf("%s: Slack answered channel_not_found for %q: check the channel name, or invite the bot to the private channel", method, channel))
	case "not_in_channel":
		return delivery.Permanent(fmt.Errorf("%s: the bot is not in %q (not_in_channel): invite it with /invite, or give the app the chat:write.public scope", method, channel))
	case "is_archived", "channel_is_archived":
		return delivery.Permanent(fmt.Errorf("%s: %q is archived (%s): unarchive it or choose another channel", method, channel, code))
	case "invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive", "no_permission", "org_login_required", "ekm_access_denied":
		return delivery.Permanent(fmt.Errorf("%s: Slack refused the bot token (%s): check the sink's token (a bot token, xoxb-…) and that the app is installed", method, code))
	case "missing_scope":
		need := se.Needed
		if need == "" {
			need = "chat:write"
		}
		return delivery.Permanent(fmt.Errorf("%s: the bot token lacks a scope (missing_scope, needed: %s): add it to the Slack app and reinstall it", method, need))
	case "invalid_blocks", "invalid_blocks_format", "invalid_attachments", "too_many_attachments", "msg_too_long", "no_text", "invalid_arguments":
		detail := ""
		if len(se.ResponseMetadata.Messages) > 0 {
			detail = ": " + strings.Join(se.ResponseMetadata.Messages, "; ")
		}
		return delivery.Permanent(fmt.Errorf("%s: Slack refused the message (%s%s): check the sink's template and layout", method, code, detail))
	}
	return delivery.Permanent(fmt.Errorf("%s: Slack answered %s", method, code))
}

// messageGone reports a chat.update that cannot edit the message any
// more: it was deleted, or is too old.
func messageGone(err error) bool {
	var se slackapi.SlackErrorResponse
	if !errors.As(err, &se) {
		return false
	}
	switch se.Err {
	case "message_not_found", "cant_update_message", "edit_window_closed":
		return true
	}
	return false
}
