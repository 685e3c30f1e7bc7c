package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/sinks/slack/slacktest"
	slacksource "github.com/buildbridge/buildbridge/sources/slack"
)

const slackSecret = "e2e-signing-secret-0123456789abcdef"

var slackTriggers atomic.Int64

// slackPost sends a request to the hub signed as Slack signs it.
func slackPost(t *testing.T, base, path, body string, secret string) (int, map[string]any, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
	now := time.Now()
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Slack-Request-Timestamp", strconv.FormatInt(now.Unix(), 10))
	req.Header.Set("X-Slack-Signature", slacksource.Sign(secret, now, []byte(body)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	json.Unmarshal(raw, &m)
	return resp.StatusCode, m, string(raw)
}

func slashCommand(user, text, responseURL string) string {
	return url.Values{"command": {"/buildbridge"}, "text": {text}, "user_id": {user}, "user_name": {"u"},
		"channel_id": {"C0001"}, "team_id": {"T0001"}, "response_url": {responseURL},
		"trigger_id": {"1.2." + strconv.FormatInt(slackTriggers.Add(1), 10)}}.Encode()
}

func rebuildPayload(user, buildID, responseURL string) string {
	payload, _ := json.Marshal(map[string]any{
		"type": "block_actions", "user": map[string]any{"id": user}, "response_url": responseURL,
		"trigger_id": "9.9." + strconv.FormatInt(slackTriggers.Add(1), 10),
		"actions": []map[string]any{{"action_id": slacksource.RebuildActionID, "block_id": "buildbridge_actions",
			"value": buildID, "type": "button"}},
	})
	return url.Values{"payload": {string(payload)}}.Encode()
}

// TestSlackEndToEnd runs a real server with a slack sink and the Slack
// source against a fake Slack: a slash command queues a build whose one
// message is edited in place to its end, with a thread reply mentioning
// the author; the Rebuild button rebuilds; unmapped users, bad
// signatures, rate limits and a wrong channel behave.
func TestSlackEndToEnd(t *testing.T) {
	fake := slacktest.NewServer("xoxb-e2e")
	defer fake.Close()
	builds := fake.AddChannel("builds", true)
	fake.AddUser(slacktest.User{ID: "U0ANNE", Name: "ann", Email: "ann@example.com"})

	data, dir := t.TempDir(), t.TempDir()
	token := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--data", data))
	rules := writeRules(t, filepath.Join(dir, "rules.yaml"), `
sinks:
  team:
    type: slack
    token: ${SLACK_TOKEN}
    api_url: `+fake.APIURL()+`
    channel: "#builds"
    username: buildbridge
    retry_schedule: [0s, 1s, 1s]
  lost:
    type: slack
    token: ${SLACK_TOKEN}
    api_url: `+fake.APIURL()+`
    channel: "#gone"
    retry_schedule: [0s, 1s]
routes:
  - name: all
    to: [team]
  - name: lost
    match: {state: FINISHED}
    to: [lost]
`)
	cfgPath := filepath.Join(dir, "buildbridge.yaml")
	if err := os.WriteFile(cfgPath, []byte("slack:\n  api_url: "+fake.APIURL()+"\n  users:\n    U0ANN: ann\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SLACK_TOKEN", "xoxb-e2e")
	t.Setenv("BUILDBRIDGE_SLACK_SIGNING_SECRET", slackSecret)
	addr := freeAddr(t)
	startServer(t, data, addr, newEventLog(), "--rules", rules, "--config", cfgPath)
	c := client{base: "http://" + addr, token: token}
	repo := newTestRepo(t)
	repo.commit(t, "main", "Break the build", map[string]string{".buildbridge.yml": "steps:\n  - name: test\n    run: echo failing; exit 1\n"})
	c.mustCall(t, 201, "POST", "/api/v1/projects", map[string]any{"name": "app", "repo": repo.bare})

	// /buildbridge build app main, by a mapped user.
	code, m, raw := slackPost(t, c.base, "/slack/commands", slashCommand("U0ANN", "build app main", fake.ResponseURL("cmd1")), slackSecret)
	if code != 200 || m["response_type"] != "in_channel" || !strings.Contains(fmt.Sprint(m["text"]), "queued *app* #1 on `main`") {
		t.Fatalf("slash command: %d %s", code, raw)
	}
	// One message, posted on QUEUED and edited twice, then the thread
	// reply that mentions the author.
	waitFor(t, 30*time.Second, func() bool { return len(fake.Messages(builds)) == 2 })
	msgs := fake.Messages(builds)
	main, reply := msgs[0], msgs[1]
	if main.Edits != 2 || !strings.Contains(main.Texts(), "*app* #1 failed on `main` by Ann Author") || main.Username != "buildbridge" {
		t.Fatalf("build message (%d edits): %s", main.Edits, main.Texts())
	}
	btn := main.Button(slacksource.RebuildActionID)
	if btn == nil || btn["value"] == "" {
		t.Fatalf("no Rebuild button: %+v", main.Attachments)
	}
	if reply.ThreadTS != main.TS || !strings.HasPrefix(reply.Text, "<@U0ANNE> ❌ build #1 of *app* failed") {
		t.Fatalf("thread reply: %+v", reply)
	}
	dl := waitDeliveries(t, c, "team", "succeeded", 3)
	if l := dl["deliveries"].([]any); !strings.Contains(fmt.Sprint(l), "team") {
		t.Fatalf("deliveries: %v", dl)
	}
	// The wrong channel fails at once, saying what to fix.
	failed := waitDeliveries(t, c, "lost", "failed", 1)
	if e := fmt.Sprint(failed["deliveries"].([]any)[0].(map[string]any)["last_error"]); !strings.Contains(e, "channel_not_found for \"#gone\": check the channel name") {
		t.Fatalf("lost channel: %s", e)
	}

	// The Rebuild button, through a rate limit on the new message.
	fake.Fail("chat.postMessage", slacktest.Failure{Status: 429, RetryAfter: 1})
	code, _, raw = slackPost(t, c.base, "/slack/interactions", rebuildPayload("U0ANN", fmt.Sprint(btn["value"]), fake.ResponseURL("btn1")), slackSecret)
	if code != 200 || raw != "" {
		t.Fatalf("interaction: %d %q", code, raw)
	}
	waitFor(t, 10*time.Second, func() bool { return len(fake.Responses()) == 1 })
	if r := fake.Responses()[0]; r.ID != "btn1" || !strings.Contains(r.Text, "rebuilt *app* #1 as #2") {
		t.Fatalf("rebuild response: %+v", r)
	}
	waitFor(t, 30*time.Second, func() bool {
		msgs := fake.Messages(builds)
		return len(msgs) == 4 && msgs[2].Edits == 2
	})
	limited := false
	for _, r := range fake.Requests() {
		limited = limited || (r.Method == "chat.postMessage" && r.Status == 429)
	}
	if !limited {
		t.Fatal("the rate limit was not met")
	}

	// An unmapped user, and a request not signed with the secret: nothing runs.
	code, m, _ = slackPost(t, c.base, "/slack/commands", slashCommand("U0EVE", "build app", fake.ResponseURL("cmd2")), slackSecret)
	if code != 200 || m["response_type"] != "ephemeral" || !strings.Contains(fmt.Sprint(m["text"]), "not linked to a buildbridge user") {
		t.Fatalf("unmapped user: %d %v", code, m)
	}
	code, _, _ = slackPost(t, c.base, "/slack/commands", slashCommand("U0ANN", "build app", fake.ResponseURL("cmd3")), "not-the-secret")
	if code != 401 {
		t.Fatalf("bad signature: %d", code)
	}
	list := c.mustCall(t, 200, "GET", "/api/v1/projects/app/builds", nil)
	if n := len(list["builds"].([]any)); n != 2 {
		t.Fatalf("%d builds, want 2", n)
	}
	// status lists them.
	_, m, _ = slackPost(t, c.base, "/slack/commands", slashCommand("U0ANN", "status app", fake.ResponseURL("cmd4")), slackSecret)
	if s := fmt.Sprint(m["text"]); !strings.Contains(s, "#2 `main`") || !strings.Contains(s, "#1 `main` failed") {
		t.Fatalf("status: %s", s)
	}
	if p := fake.Problems(); len(p) > 0 {
		t.Fatalf("Slack would have complained: %v", p)
	}
}
