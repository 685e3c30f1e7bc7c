package main

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/sinks/email/mailtest"
)

// TestEmailEndToEnd runs a real server with email sinks against a real
// SMTP server on loopback: a 4xx then success, the MIME structure,
// recipients (author and project owner) and threading headers; a 5xx
// fails with the server's message; a digest gathers a build's events.
func TestEmailEndToEnd(t *testing.T) {
	smtp, err := mailtest.NewServer(mailtest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer smtp.Close()
	data, dir := t.TempDir(), t.TempDir()
	token := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--data", data))
	port := strconv.Itoa(smtp.Port)
	rules := writeRules(t, filepath.Join(dir, "rules.yaml"), `
sinks:
  mail:
    type: email
    host: 127.0.0.1
    port: `+port+`
    tls: none
    from: "buildbridge <ci@example.com>"
    owner_emails:
      ann: Ann Owner <owner@example.com>
    retry_schedule: [0s, 1s, 1s]
routes:
  - name: finished
    match: {state: FINISHED, branch: main}
    to:
      - sink: mail
        to: [team@example.com, "{{.Build.AuthorEmail}}", owner]
        html: "<p><b>{{.Project.Name}}</b> #{{.Build.Number}} {{.Build.Status}}</p>"
  - name: digest
    match: {branch: digest}
    to:
      - sink: mail
        to: [digest@example.com]
        digest: 6s
`)
	addr := freeAddr(t)
	startServer(t, data, addr, newEventLog(), "--rules", rules)
	c := client{base: "http://" + addr, token: token}
	repo := newTestRepo(t)
	repo.commit(t, "main", "Add the tests", map[string]string{".buildbridge.yml": "steps:\n  - name: test\n    run: \"true\"\n"})
	c.mustCall(t, 201, "POST", "/api/v1/projects", map[string]any{"name": "app", "repo": repo.bare})

	// The first transaction is deferred (451): the engine retries.
	smtp.Fail(mailtest.Failure{Stage: "RCPT", Code: 451, Message: "4.7.1 Greylisted, please retry"})
	b1 := triggerBuild(t, c)
	msgs, err := smtp.Wait(1, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if smtp.Transactions() != 2 {
		t.Fatalf("%d transactions for one mail after a 451", smtp.Transactions())
	}
	m := msgs[0]
	if strings.Join(m.To, " ") != "ann@example.com owner@example.com team@example.com" || m.From != "ci@example.com" {
		t.Fatalf("envelope: %s → %v", m.From, m.To)
	}
	p, err := m.Parse()
	if err != nil {
		t.Fatal(err)
	}
	if p.ContentType != "multipart/alternative" || !strings.Contains(p.Text, "Build #1 of app: passed") || !strings.Contains(p.HTML, "<b>app</b> #1 passed") {
		t.Fatalf("MIME %s:\ntext: %s\nhtml: %s", p.ContentType, p.Text, p.HTML)
	}
	if p.Subject() != "[app] Build #1 passed on main" || !strings.Contains(p.Text, fmt.Sprintf("/builds/%d", b1)) {
		t.Fatalf("subject %q, text %s", p.Subject(), p.Text)
	}
	thread := p.Header.Get("In-Reply-To")
	if !strings.HasPrefix(thread, "<branch.") || p.Header.Get("References") != thread || !strings.HasPrefix(p.Header.Get("Message-Id"), "<msg_") {
		t.Fatalf("threading headers: %v", p.Header)
	}
	d := waitDeliveries(t, c, "mail", "succeeded", 1)["deliveries"].([]any)[0].(map[string]any)
	if d["attempt_count"] != 2.0 {
		t.Fatalf("delivery: %v", d)
	}

	// The next build of main is in the same thread.
	triggerBuild(t, c)
	msgs, err = smtp.Wait(2, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	p2, _ := msgs[1].Parse()
	if p2.Header.Get("In-Reply-To") != thread || p2.Header.Get("Message-Id") == p.Header.Get("Message-Id") {
		t.Fatalf("second mail: %v", p2.Header)
	}

	// A permanent refusal fails the delivery with the server's message.
	smtp.Fail(mailtest.Failure{Stage: "DATA", Code: 554, Message: "5.7.1 Message refused by policy"})
	triggerBuild(t, c)
	failed := waitDeliveries(t, c, "mail", "failed", 1)["deliveries"].([]any)[0].(map[string]any)
	if e := fmt.Sprint(failed["last_error"]); !strings.Contains(e, "5.7.1 Message refused by policy") || failed["attempt_count"] != 1.0 {
		t.Fatalf("5xx: %v", failed)
	}

	// A digest: the three events of a build in one mail.
	repo.commit(t, "digest", "Digest me", nil)
	before := len(smtp.Messages())
	c.mustCall(t, 201, "POST", "/api/v1/projects/app/builds", map[string]any{"branch": "digest"})
	msgs, err = smtp.Wait(before+1, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if n := len(smtp.Messages()); n != before+1 {
		t.Fatalf("%d mails for the digest, want 1", n-before)
	}
	dg, _ := msgs[before].Parse()
	if strings.Join(msgs[before].To, ",") != "digest@example.com" || dg.Subject() != "[app] 3 notifications: #4 queued, #4 started, #4 passed" {
		t.Fatalf("digest: %v %q\n%s", msgs[before].To, dg.Subject(), dg.Text)
	}
}
