package sinks

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// Slack is the specification of the slack type: a message posted with a
// bot token (chat.postMessage, to a channel) or to an incoming webhook.
var Slack = Type{
	Name:        "slack",
	Doc:         "Slack messages through a bot token (chat.postMessage) or an incoming webhook",
	ContentType: "text/plain; charset=utf-8",
	Settings: []Setting{
		{Name: "token", Kind: KindSecret, Doc: "bot token (xoxb-…); needs a channel"},
		{Name: "webhook_url", Kind: KindSecret, Doc: "incoming webhook URL (instead of token)"},
		{Name: "channel", Kind: KindTemplate, Role: RoleParam, Override: true, Doc: "channel name or id (a template), e.g. #builds"},
		{Name: "username", Kind: KindString, Override: true, Param: true, Doc: "name the message is posted under"},
		{Name: "icon_emoji", Kind: KindString, Override: true, Param: true, Doc: "emoji shown as the poster's icon, e.g. :robot_face:"},
		{Name: "template", Kind: KindTemplate, Role: RoleBody, Override: true, Default: SlackTemplate,
			Doc: "message text in Slack mrkdwn (a template); a JSON object with text, blocks or attachments is posted as Block Kit"},
		{Name: "layout", Kind: KindEnum, Enum: []string{"blocks", "text"}, Default: "blocks", Override: true, Param: true,
			Doc: "blocks: the text in a coloured attachment with Open build and Rebuild buttons; text: the text alone"},
		{Name: "thread_on_failure", Kind: KindBool, Default: "true", Override: true, Param: true,
			Doc: "reply in the build message's thread when it fails, mentioning the commit author (an edited message notifies nobody)"},
		{Name: "mentions", Kind: KindStringMap, Doc: "commit author emails to Slack user ids (U…), for mentions on failed builds"},
		{Name: "lookup_users", Kind: KindBool, Default: "true",
			Doc: "find other authors with users.lookupByEmail (bot token, scope users:read.email)"},
		{Name: "api_url", Kind: KindURL, Doc: "Slack Web API base URL (default https://slack.com/api/), for a proxy or a test server"},
	},
	Check:  checkSlack,
	Target: slackTarget,
}

// SlackTemplate is the default Slack message.
const SlackTemplate = `{{if .Build}}{{icon .Build.Status}} *{{with .Project}}{{slack .Name}}{{end}}* #{{.Build.Number}} {{.Build.Status}} on ` + "`{{slack .Build.Branch}}`" + `{{with .Build.Author}} by {{slack .}}{{end}}{{with .Build.DurationMS}} in {{duration .}}{{end}}
{{short .Build.SHA}} {{.Build.Message | firstLine | trunc 80 | slack}}{{with .Build.URL}}
<{{.}}|Open build>{{end}}{{else}}*{{.Event.Type}}*{{with .Data}} {{json .}}{{end}}{{end}}`

func init() { Register(Slack) }

func checkSlack(c *Config) []*ConfigError {
	var errs []*ConfigError
	tok, hook := c.IsSet("token"), c.IsSet("webhook_url")
	switch {
	case tok && hook:
		errs = append(errs, c.Errorf("webhook_url", "set token or webhook_url, not both"))
	case !tok && !hook:
		errs = append(errs, c.Errorf("token", "a slack sink needs token (with a channel) or webhook_url"))
	}
	if v := c.Value("webhook_url"); hook && !v.Unresolved() {
		u, err := url.Parse(v.Secret().Reveal())
		if err != nil || u.Host == "" || (u.Scheme != "https" && !(u.Scheme == "http" && IsLoopback(u.Hostname()))) {
			errs = append(errs, c.Errorf("webhook_url", "not an https URL (value not shown)"))
		}
	}
	return errs
}

// IsLoopback reports whether host names this machine: localhost or a
// loopback address. Plain-text connections are allowed to it only.
func IsLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

func slackTarget(c *Config, p map[string]string) (string, error) {
	ch := p["channel"]
	if ch == "" {
		if c.IsSet("token") {
			return "", fmt.Errorf("no channel: a token needs a channel on the sink or in the route's to: entry")
		}
		return "webhook", nil
	}
	return ch, nil
}
