package sinks

import (
	"fmt"
	"net/mail"
	"sort"
	"strings"
)

// Email is the specification of the email type: mail sent over SMTP, with
// a text body and, when an html template is set, an HTML alternative.
var Email = Type{
	Name:        "email",
	Doc:         "email over SMTP (a text body, and an optional HTML alternative)",
	ContentType: "text/plain; charset=utf-8",
	Settings: []Setting{
		{Name: "host", Kind: KindString, Required: true, Doc: "SMTP server host"},
		{Name: "port", Kind: KindInt, Default: "587", Doc: "SMTP server port"},
		{Name: "tls", Kind: KindEnum, Enum: []string{"starttls", "tls", "none"}, Default: "starttls",
			Doc: "starttls (port 587), tls (implicit TLS, port 465) or none (loopback hosts only, unless allow_insecure)"},
		{Name: "allow_insecure", Kind: KindBool, Doc: "allow tls: none to a host that is not loopback (mail and password in clear)"},
		{Name: "username", Kind: KindString, Doc: "SMTP user name"},
		{Name: "password", Kind: KindSecret, Doc: "SMTP password"},
		{Name: "from", Kind: KindString, Required: true, Doc: "sender address, e.g. buildbridge <ci@example.com>"},
		{Name: "to", Kind: KindTemplateList, Role: RoleParam, Override: true,
			Doc: "recipient addresses (templates, e.g. {{.Build.AuthorEmail}}); owner: the project's owner (see owner_emails)"},
		{Name: "owner_emails", Kind: KindStringMap, Doc: "addresses of project owners, by buildbridge user name or id, for the recipient owner"},
		{Name: "subject", Kind: KindTemplate, Role: RoleSubject, Override: true, Default: EmailSubject, Doc: "subject (a template)"},
		{Name: "template", Kind: KindTemplate, Role: RoleBody, Override: true, Default: EmailText, Doc: "text body (a template)"},
		{Name: "html", Kind: KindHTMLTemplate, Role: RoleParam, Override: true,
			Doc: "HTML alternative (an html/template); none by default: text only"},
		{Name: "digest", Kind: KindDuration, Default: "0s", Override: true, Param: true,
			Doc: "collect the events of this window (e.g. 15m) and send them as one email; 0s: each at once"},
		{Name: "quiet_hours", Kind: KindString, Override: true, Param: true,
			Doc: "daily period like 22:00-07:00 during which mail that is not urgent waits for its end"},
		{Name: "timezone", Kind: KindString, Default: "UTC", Override: true, Param: true, Doc: "time zone of quiet_hours, e.g. Europe/Paris"},
		{Name: "urgent", Kind: KindStringList, Override: true, Param: true,
			Doc: "build statuses sent at once even in quiet hours (default: broken)"},
	},
	Check:  checkEmail,
	Target: emailTarget,
}

// Default email templates.
const (
	EmailSubject = `{{if .Build}}[{{with .Project}}{{.Name}}{{end}}] Build #{{.Build.Number}} {{.Build.Status}} on {{.Build.Branch}}{{else}}[buildbridge] {{.Event.Type}}{{end}}`
	EmailText    = `{{if .Build}}Build #{{.Build.Number}} of {{with .Project}}{{.Name}}{{end}}: {{.Build.Status}}

Branch:   {{.Build.Branch}}
Commit:   {{short .Build.SHA}} {{firstLine .Build.Message}}
Author:   {{.Build.Author}}{{with .Build.DurationMS}}
Duration: {{duration .}}{{end}}{{with .Build.URL}}

{{.}}{{end}}
{{else}}Event {{.Event.Type}} at {{timefmt "2006-01-02 15:04:05 MST" .Event.Time}}
{{with .Data}}
{{json .}}
{{end}}{{end}}`
)

func init() { Register(Email) }

func checkEmail(c *Config) []*ConfigError {
	var errs []*ConfigError
	if p := c.Int("port"); p < 1 || p > 65535 {
		errs = append(errs, c.Errorf("port", "must be between 1 and 65535, got %d", p))
	}
	if v := c.Value("from"); !v.Unresolved() {
		if _, err := mail.ParseAddress(v.Text()); err != nil {
			if v.FromReference() {
				errs = append(errs, c.Errorf("from", "value of %s is not an email address (value not shown)", v.Reference()))
			} else {
				errs = append(errs, c.Errorf("from", "%q is not an email address: %v", v.Text(), err))
			}
		}
	}
	if c.IsSet("password") && !c.IsSet("username") {
		errs = append(errs, c.Errorf("username", "a password needs a username"))
	}
	if v := c.Value("host"); c.Text("tls") == "none" && !c.Bool("allow_insecure") && !v.Unresolved() && !IsLoopback(v.Text()) {
		errs = append(errs, c.Errorf("tls", "tls: none sends mail (and any password) in clear: only to a loopback host, unless allow_insecure: true"))
	}
	return errs
}

// EmailOwner is the recipient that stands for the project's owner.
const EmailOwner = "owner"

// SplitOwner takes the recipient owner out of a rendered recipients
// parameter: it returns the other recipients and whether owner was there.
func SplitOwner(to string) (string, bool) {
	var rest []string
	owner := false
	for _, item := range strings.Split(to, ",") {
		if strings.TrimSpace(item) == EmailOwner {
			owner = true
			continue
		}
		rest = append(rest, item)
	}
	return strings.Join(rest, ","), owner
}

// EmailRecipients parses the rendered recipients parameter into addresses,
// lower-cased, sorted and without repeats.
func EmailRecipients(to string) ([]string, error) {
	if strings.TrimSpace(to) == "" {
		return nil, fmt.Errorf("no recipients: set to on the sink or in the route's to: entry")
	}
	list, err := mail.ParseAddressList(to)
	if err != nil {
		return nil, fmt.Errorf("recipients %q: %v", to, err)
	}
	seen := map[string]bool{}
	var out []string
	for _, a := range list {
		addr := strings.ToLower(a.Address)
		if !seen[addr] {
			seen[addr] = true
			out = append(out, addr)
		}
	}
	sort.Strings(out)
	return out, nil
}

func emailTarget(c *Config, p map[string]string) (string, error) {
	to, owner := SplitOwner(p["to"])
	if owner {
		if len(c.Map("owner_emails")) == 0 {
			return "", fmt.Errorf("recipient owner needs owner_emails on the sink")
		}
		if strings.TrimSpace(to) == "" {
			return EmailOwner, nil
		}
	}
	rcpt, err := EmailRecipients(to)
	if err != nil {
		return "", err
	}
	if owner {
		rcpt = append([]string{EmailOwner}, rcpt...)
	}
	return strings.Join(rcpt, ","), nil
}
