package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

// IsSHA reports whether s is a full commit id: 40 (SHA-1) or 64 (SHA-256)
// lowercase hexadecimal digits.
func IsSHA(s string) bool {
	return (len(s) == 40 || len(s) == 64) && isHex(s)
}

// checkRepo refuses a repository that git could read as an option or that
// carries bytes no path or URL has.
func checkRepo(repo string) error {
	switch {
	case repo == "":
		return errors.New("no repository")
	case strings.HasPrefix(repo, "-"):
		return fmt.Errorf("repository %q must not start with -", repo)
	case strings.ContainsFunc(repo, isControl):
		return fmt.Errorf("repository %q contains control characters", repo)
	}
	return nil
}

// gitEnv is the environment of the runner's own git commands: the server's
// (so that credential helpers and SSH settings configured for the server
// keep working) without the variables that would point git at another
// repository, and with prompts off so that a private repository fails
// instead of waiting for a password forever.
func gitEnv() []string {
	env := make([]string, 0, len(os.Environ())+2)
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
			"GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE",
			"GIT_CEILING_DIRECTORIES", "GIT_DISCOVERY_ACROSS_FILESYSTEM",
			"GIT_QUARANTINE_PATH", "GIT_PREFIX", "GIT_TERMINAL_PROMPT",
			"GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT":
			continue
		}
		if strings.HasPrefix(k, "GIT_CONFIG_KEY_") || strings.HasPrefix(k, "GIT_CONFIG_VALUE_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "GIT_TERMINAL_PROMPT=0")
}

// gitArgs prefixes args with the settings every git command of the runner
// uses: the ext:: transport (which runs arbitrary commands) is refused
// whatever the server's configuration says.
func gitArgs(args ...string) []string {
	return append([]string{"-c", "protocol.ext.allow=never"}, args...)
}

// maxGitOutput bounds what is kept of a git command's output for errors.
const maxGitOutput = 64 << 10

// git runs one git command and returns its standard output. An error
// carries the last line of standard error.
func git(ctx context.Context, gitPath, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, gitPath, gitArgs(args...)...)
	cmd.Dir = dir
	cmd.Env = gitEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &limitedBuffer{buf: &stdout, max: 16 << 20}
	cmd.Stderr = &limitedBuffer{buf: &stderr, max: maxGitOutput}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("git %s: %w", args[0], context.Cause(ctx))
		}
		if msg := lastLine(stderr.String()); msg != "" {
			return "", fmt.Errorf("git %s: %s", args[0], msg)
		}
		return "", fmt.Errorf("git %s: %w", args[0], err)
	}
	return stdout.String(), nil
}

// lastLine returns the last non-empty line of s, trimmed and shortened.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	l := strings.TrimSpace(lines[len(lines)-1])
	if len(l) > 300 {
		l = l[:300] + "…"
	}
	return l
}

// limitedBuffer keeps the first max bytes written to it and drops the rest
// without failing the writer.
type limitedBuffer struct {
	buf *bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// teeTail writes to w and keeps the last bytes written, for the reason of
// a failed checkout.
type teeTail struct {
	w    io.Writer
	tail []byte
}

func (t *teeTail) Write(p []byte) (int, error) {
	t.tail = append(t.tail, p...)
	if len(t.tail) > maxGitOutput {
		t.tail = t.tail[len(t.tail)-maxGitOutput:]
	}
	return t.w.Write(p)
}

// shortSHA is the first 12 digits of sha, for human sentences.
func shortSHA(sha string) string {
	if len(sha) > 12 {
		return sha[:12]
	}
	return sha
}
