package email

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"html/template"
	"strings"
	"time"

	gomail "github.com/wneessen/go-mail"

	"github.com/buildbridge/buildbridge/event"
)

// parts is one mail before it is a message: what a delivery rendered,
// and what a held delivery keeps in the store (as JSON).
type parts struct {
	// ID is the delivery's message id, the local part of Message-ID.
	ID      string            `json:"id"`
	EventID string            `json:"event_id"`
	To      []string          `json:"to"`
	Subject string            `json:"subject"`
	Text    string            `json:"text"`
	HTML    string            `json:"html,omitempty"`
	Urgent  bool              `json:"urgent,omitempty"`
	Params  map[string]string `json:"params,omitempty"`
	Event   summary           `json:"event"`
}

// summary is what a mail needs of its event: threading and the digest's
// list.
type summary struct {
	Type    string    `json:"type"`
	Time    time.Time `json:"time"`
	Project string    `json:"project,omitempty"`
	Branch  string    `json:"branch,omitempty"`
	Number  int64     `json:"number,omitempty"`
	Status  string    `json:"status,omitempty"`
	URL     string    `json:"url,omitempty"`
}

func summarize(ev *event.Envelope) summary {
	s := summary{Type: ev.Type, Time: ev.Time}
	if ev.Project != nil {
		s.Project = ev.Project.Name
	}
	if b := ev.Build; b != nil {
		s.Branch, s.Number, s.Status, s.URL = b.Branch, b.Number, string(b.Status), b.URL
	}
	return s
}

// policyParams keeps the timing parameters of a held delivery, for the
// flusher's look at quiet hours.
func policyParams(p map[string]string) map[string]string {
	out := map[string]string{}
	for _, k := range []string{"digest", "quiet_hours", "timezone", "urgent"} {
		if v := p[k]; v != "" {
			out[k] = v
		}
	}
	return out
}

// domain is the domain of the sender's address, for Message-IDs.
func (s *Sink) domain() string {
	if _, d, ok := strings.Cut(s.from.Address, "@"); ok && d != "" {
		return d
	}
	return "buildbridge.invalid"
}

// threadID names the thread of a project's branch: every mail about it
// refers to it, so clients group them.
func (s *Sink) threadID(e summary) string {
	if e.Project == "" || e.Branch == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(e.Project + "\x00" + e.Branch))
	return "<branch." + hex.EncodeToString(sum[:12]) + "@" + s.domain() + ">"
}

// newMsg starts a message with the headers every mail has.
func (s *Sink) newMsg(to []string, subject, id string) *gomail.Msg {
	m := gomail.NewMsg()
	m.SetAddrHeaderIgnoreInvalid(gomail.HeaderFrom, s.from.String())
	m.SetAddrHeaderIgnoreInvalid(gomail.HeaderTo, to...)
	if subject == "" {
		subject = "(no subject)"
	}
	m.Subject(subject)
	m.SetMessageIDWithValue(id + "@" + s.domain())
	m.SetDateWithValue(s.opts.Now())
	// RFC 3834: automatic mail; out-of-office replies stay away.
	m.SetGenHeader("Auto-Submitted", "auto-generated")
	m.SetGenHeader(gomail.HeaderXAutoResponseSuppress, "All")
	return m
}

func (s *Sink) thread(m *gomail.Msg, ref string) {
	if ref != "" {
		m.SetGenHeader(gomail.HeaderInReplyTo, ref)
		m.SetGenHeader(gomail.HeaderReferences, ref)
	}
}

// single is the mail of one delivery.
func (s *Sink) single(p *parts) *gomail.Msg {
	m := s.newMsg(p.To, p.Subject, p.ID)
	s.thread(m, s.threadID(p.Event))
	m.SetBodyString(gomail.TypeTextPlain, p.Text)
	if p.HTML != "" {
		m.AddAlternativeString(gomail.TypeTextHTML, p.HTML)
	}
	return m
}

// digest is one mail for several held deliveries to the same recipients.
func (s *Sink) digest(items []parts) *gomail.Msg {
	ids := make([]string, len(items))
	for i, it := range items {
		ids[i] = it.EventID
	}
	sum := sha256.Sum256([]byte(strings.Join(ids, "\x00")))
	m := s.newMsg(items[0].To, digestSubject(items), "digest."+hex.EncodeToString(sum[:16]))
	ref := s.threadID(items[0].Event)
	for _, it := range items[1:] {
		if s.threadID(it.Event) != ref {
			ref = ""
		}
	}
	s.thread(m, ref)

	var text strings.Builder
	fmt.Fprintf(&text, "%d notifications from buildbridge:\n\n", len(items))
	for _, it := range items {
		fmt.Fprintf(&text, "- %s\n", it.Subject)
	}
	hasHTML := false
	for _, it := range items {
		fmt.Fprintf(&text, "\n\n== %s ==\n\n%s\n", it.Subject, strings.TrimRight(it.Text, "\n"))
		hasHTML = hasHTML || it.HTML != ""
	}
	m.SetBodyString(gomail.TypeTextPlain, text.String())
	if hasHTML {
		var b bytes.Buffer
		type item struct {
			Subject, Text string
			HTML          template.HTML
		}
		view := struct {
			Count int
			Items []item
		}{Count: len(items)}
		for _, it := range items {
			// The item's HTML was rendered by an html/template already.
			view.Items = append(view.Items, item{Subject: it.Subject, Text: it.Text, HTML: template.HTML(it.HTML)})
		}
		if err := digestHTML.Execute(&b, view); err == nil {
			m.AddAlternativeString(gomail.TypeTextHTML, b.String())
		} else {
			s.log.Error("rendering a digest's HTML; sending its text only", "err", err)
		}
	}
	return m
}

var digestHTML = template.Must(template.New("digest").Parse(`<!DOCTYPE html>
<html><body>
<p>{{.Count}} notifications from buildbridge:</p>
<ul>{{range .Items}}<li>{{.Subject}}</li>{{end}}</ul>
{{range .Items}}<hr>
<h3>{{.Subject}}</h3>
{{if .HTML}}{{.HTML}}{{else}}<pre>{{.Text}}</pre>{{end}}
{{end}}</body></html>
`))

// digestSubject names a digest by its project and what happened.
func digestSubject(items []parts) string {
	project := items[0].Event.Project
	for _, it := range items[1:] {
		if it.Event.Project != project {
			project = ""
		}
	}
	var what []string
	for _, it := range items {
		e := it.Event
		switch {
		case e.Number > 0 && project != "":
			what = append(what, fmt.Sprintf("#%d %s", e.Number, e.Status))
		case e.Number > 0:
			what = append(what, fmt.Sprintf("%s #%d %s", e.Project, e.Number, e.Status))
		default:
			what = append(what, e.Type)
		}
	}
	prefix := "[buildbridge]"
	if project != "" {
		prefix = "[" + project + "]"
	}
	subject := fmt.Sprintf("%s %d notifications: %s", prefix, len(items), strings.Join(what, ", "))
	if r := []rune(subject); len(r) > 150 {
		subject = string(r[:149]) + "…"
	}
	return subject
}
