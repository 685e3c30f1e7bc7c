package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/event"
)

func TestDescribeEvent(t *testing.T) {
	ms := int64(72_400)
	cases := []struct {
		b    event.Build
		want string
	}{
		{event.Build{Number: 42, Branch: "main", State: "FINISHED", Status: "passed", DurationMS: &ms}, "✓ app #42 main passed in 1m12s"},
		{event.Build{Number: 43, Branch: "main", State: "FINISHED", Status: "still_failing", DurationMS: &ms, Reason: `step "test" exited with status 1`},
			`✗ app #43 main still failing in 1m12s: step "test" exited with status 1`},
		{event.Build{Number: 44, Ref: "refs/tags/v1", State: "STARTED", Status: "started", SHA: "0123456789", Message: "fix it\n\nbody"},
			`▶ app #44 refs/tags/v1 started (0123456 "fix it")`},
	}
	for _, c := range cases {
		b := c.b
		if got := describeEvent(event.Envelope{Build: &b, Job: &event.Job{Name: "app"}}); got != c.want {
			t.Errorf("got %q, want %q", got, c.want)
		}
	}
}

// TestWatchEndToEnd runs `buildbridge watch --json` against a real serve
// and expects the three transitions of a build, in order, then the human
// format of another build.
func TestWatchEndToEnd(t *testing.T) {
	data := t.TempDir()
	token := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--data", data))
	p := startServer(t, data, freeAddr(t), newEventLog())
	c := client{base: "http://" + p.addr, token: token}
	repo := newTestRepo(t)
	repo.commit(t, "main", "watched", map[string]string{".buildbridge.yml": "steps:\n  - name: ok\n    run: echo ok\n"})
	c.mustCall(t, 201, "POST", "/api/v1/projects", map[string]any{"name": "app", "repo": repo.bare})

	for _, jsonMode := range []bool{true, false} {
		args := []string{"watch", "--url", c.base, "--token", token}
		if jsonMode {
			args = append(args, "--json")
		}
		cmd := exec.Command(binPath, args...)
		stdout, _ := cmd.StdoutPipe()
		stderr := &lockedBuffer{}
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 16)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Wait for the subscription before triggering, as a user would.
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(stderr.String(), "subscribed") && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		b := c.mustCall(t, 201, "POST", "/api/v1/projects/app/builds", nil)
		var got []string
		timeout := time.After(30 * time.Second)
		for len(got) < 3 {
			select {
			case l := <-lines:
				got = append(got, l)
			case <-timeout:
				t.Fatalf("watch printed %q; stderr %s", got, stderr.String())
			}
		}
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if jsonMode {
			var states []string
			for _, l := range got {
				var ev event.Envelope
				if err := json.Unmarshal([]byte(l), &ev); err != nil || ev.Build == nil || ev.Build.ID != int64(b["id"].(float64)) {
					t.Fatalf("line %q: %v", l, err)
				}
				states = append(states, string(ev.Build.State))
			}
			if strings.Join(states, ",") != "QUEUED,STARTED,FINISHED" {
				t.Fatalf("states %v", states)
			}
		} else if !strings.HasPrefix(got[2], "✓ app #") || !strings.Contains(got[2], "main passed in") {
			t.Fatalf("human lines %q", got)
		}
	}
	p.stop(t)
}

// lockedBuffer is a bytes.Buffer a subprocess writes while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
