package slack

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	slackapi "github.com/slack-go/slack"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/sinks"
)

// Slack's limits on what the sink composes.
const (
	maxText        = 40000 // message text
	maxSectionText = 3000  // a section's text
	maxFallback    = 300   // kept short: it is the notification
	maxURL         = 3000  // a button's url
)

// message is what one delivery posts.
type message struct {
	text        string
	blocks      []slackapi.Block
	attachments []slackapi.Attachment
	build       *event.Build
	project     *event.Project
	// own is set for a message the template wrote as JSON.
	own bool
}

// compose turns a delivery into a message: its rendered template as
// Block Kit JSON when it is one, else as mrkdwn text in the layout of
// the delivery's layout parameter.
func compose(d *sinks.Delivery) (*message, error) {
	m := &message{build: d.Event.Build, project: d.Event.Project}
	body := strings.TrimSpace(string(d.Body))
	if own, ok, err := parseJSONMessage(body); err != nil {
		return nil, err
	} else if ok {
		own.build, own.project, own.own = m.build, m.project, true
		return own, nil
	}
	if body == "" {
		return nil, errors.New("the template rendered an empty message")
	}
	if d.Params["layout"] == "text" {
		m.text = truncate(body, maxText)
		return m, nil
	}
	m.text = truncate(firstLine(body), maxFallback)
	blocks := []slackapi.Block{slackapi.NewSectionBlock(slackapi.NewTextBlockObject(slackapi.MarkdownType, truncate(body, maxSectionText), false, false), nil, nil)}
	if b := m.build; b != nil {
		var buttons []slackapi.BlockElement
		if u := b.URL; u != "" && len(u) <= maxURL && (strings.HasPrefix(u, "http://") || strings.HasPrefix(u, "https://")) {
			open := slackapi.NewButtonBlockElement("buildbridge_open", "", slackapi.NewTextBlockObject(slackapi.PlainTextType, "Open build", false, false))
			open.URL = u
			buttons = append(buttons, open)
		}
		if b.ID > 0 && b.State == builds.Finished {
			buttons = append(buttons, slackapi.NewButtonBlockElement(RebuildActionID, strconv.FormatInt(b.ID, 10),
				slackapi.NewTextBlockObject(slackapi.PlainTextType, "Rebuild", false, false)))
		}
		if len(buttons) > 0 {
			blocks = append(blocks, slackapi.NewActionBlock("buildbridge_actions", buttons...))
		}
	}
	m.attachments = []slackapi.Attachment{{Color: color(m.build), Fallback: m.text, Blocks: slackapi.Blocks{BlockSet: blocks}}}
	// The attachment carries the message; the text would show above it.
	m.text = ""
	return m, nil
}

// parseJSONMessage reads a body that is a JSON object with text, blocks
// or attachments. ok is false for any other body (plain text, or JSON
// that is not a message, such as {{json .Data}}).
func parseJSONMessage(body string) (*message, bool, error) {
	if !strings.HasPrefix(body, "{") {
		return nil, false, nil
	}
	var keys map[string]json.RawMessage
	if json.Unmarshal([]byte(body), &keys) != nil {
		return nil, false, nil
	}
	_, hasText := keys["text"]
	_, hasBlocks := keys["blocks"]
	_, hasAtt := keys["attachments"]
	if !hasText && !hasBlocks && !hasAtt {
		return nil, false, nil
	}
	var in struct {
		Text        string                `json:"text"`
		Blocks      slackapi.Blocks       `json:"blocks"`
		Attachments []slackapi.Attachment `json:"attachments"`
	}
	dec := json.NewDecoder(bytes.NewReader([]byte(body)))
	if err := dec.Decode(&in); err != nil {
		return nil, false, fmt.Errorf("the template renders a JSON message that is not Block Kit: %v", err)
	}
	m := &message{text: in.Text, blocks: in.Blocks.BlockSet, attachments: in.Attachments}
	if m.text == "" && len(m.blocks) == 0 && len(m.attachments) == 0 {
		return nil, false, errors.New("the template renders a JSON message without text, blocks or attachments")
	}
	return m, true, nil
}

// failed reports a finished build that did not pass (and was not
// canceled): the builds whose author is mentioned.
func (m *message) failed() bool {
	b := m.build
	return b != nil && b.State == builds.Finished && b.Success != nil && !*b.Success && b.Result != builds.Canceled
}

// addMention puts the author's mention in the message.
func (m *message) addMention(mention string) {
	if mention == "" {
		return
	}
	line := mention + " your commit " + shortSHA(m.build.SHA) + " is in this build"
	ctx := slackapi.NewContextBlock("buildbridge_mention", slackapi.NewTextBlockObject(slackapi.MarkdownType, line, false, false))
	switch {
	case len(m.attachments) > 0 && !m.own:
		m.attachments[0].Blocks.BlockSet = append(m.attachments[0].Blocks.BlockSet, ctx)
	case len(m.blocks) > 0:
		m.blocks = append(m.blocks, ctx)
	default:
		m.text = truncate(m.text+"\n"+line, maxText)
	}
}

// replyText is the thread reply of a failed build.
func (m *message) replyText(mention string) string {
	b := m.build
	var sb strings.Builder
	if mention != "" {
		sb.WriteString(mention + " ")
	}
	name := ""
	if m.project != nil {
		name = " of *" + escape(m.project.Name) + "*"
	}
	fmt.Fprintf(&sb, "%s build #%d%s %s", statusEmoji(b.Status), b.Number, name, strings.ReplaceAll(string(b.Status), "_", " "))
	if b.Branch != "" {
		fmt.Fprintf(&sb, " on `%s`", escape(b.Branch))
	}
	if b.SHA != "" {
		fmt.Fprintf(&sb, " at %s", shortSHA(b.SHA))
	}
	if b.Reason != "" {
		sb.WriteString(": " + escape(truncate(b.Reason, 500)))
	}
	if b.URL != "" {
		fmt.Fprintf(&sb, "\n<%s|Open the build and its log>", b.URL)
	}
	return sb.String()
}

// color is the attachment colour of a build's status.
func color(b *event.Build) string {
	if b == nil {
		return "#9e9e9e"
	}
	switch b.Status {
	case builds.StatusPassed, builds.StatusFixed:
		return "#2eb886"
	case builds.StatusFailed, builds.StatusBroken, builds.StatusStillFailing:
		return "#d50200"
	case builds.StatusErrored:
		return "#e8912d"
	case builds.StatusStarted:
		return "#439fe0"
	}
	return "#9e9e9e" // queued, canceled
}

func statusEmoji(s builds.Status) string {
	switch s {
	case builds.StatusBroken:
		return "💥"
	case builds.StatusStillFailing:
		return "🔥"
	case builds.StatusErrored:
		return "⚠️"
	}
	return "❌"
}

// escape escapes &, < and > for mrkdwn.
func escape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

func shortSHA(s string) string {
	if len(s) > 7 {
		return s[:7]
	}
	return s
}

func firstLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}

// truncate cuts s to n runes, ending with … when cut.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	i := 0
	for j := range s {
		if i == n-1 {
			return s[:j] + "…"
		}
		i++
	}
	return s
}
