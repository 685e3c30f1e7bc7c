package githook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/buildbridge/buildbridge/store"
)

// HookName is the hook buildbridge installs.
const HookName = "post-receive"

// ChainedSuffix names the hook that was there before, kept next to ours
// and run by it: post-receive.buildbridge-chained.
const ChainedSuffix = ".buildbridge-chained"

// marker identifies a hook script buildbridge wrote.
const marker = "# buildbridge post-receive hook"

// InstallConfig is what Install needs.
type InstallConfig struct {
	// Repo is the repository: a bare one or a working tree.
	Repo string
	// Project is the project the hook's pushes build.
	Project string
	// URL is the hub's base URL.
	URL string
	// Token is the API token the hook authenticates with.
	Token string
	// Binary is the absolute path of the buildbridge binary the hook runs.
	Binary string
	// Git is the git binary (default "git").
	Git string
}

func (c *InstallConfig) setDefaults() {
	if c.Git == "" {
		c.Git = "git"
	}
	c.URL = strings.TrimRight(strings.TrimSpace(c.URL), "/")
	c.Token = strings.TrimSpace(c.Token)
}

// Validate names the first setting that cannot work.
func (c *InstallConfig) Validate() error {
	if c.Repo == "" {
		return errors.New("hook install: --repo is required")
	}
	if err := store.ValidProjectName(c.Project); err != nil {
		return fmt.Errorf("hook install: --project: %w", err)
	}
	if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("hook install: --url %q must be the hub's http:// or https:// URL (or set BUILDBRIDGE_URL)", c.URL)
	}
	if c.Token == "" {
		return errors.New("hook install: an API token is required: --token or BUILDBRIDGE_TOKEN")
	}
	if strings.ContainsFunc(c.Token, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return errors.New("hook install: the token holds spaces or control characters")
	}
	if !filepath.IsAbs(c.Binary) {
		return fmt.Errorf("hook install: the buildbridge binary path %q must be absolute", c.Binary)
	}
	return nil
}

// Installed says where Install put things.
type Installed struct {
	GitDir string
	// Hook is the installed hook script.
	Hook string
	// Chained is the hook that was there before, now run by ours; empty
	// when there was none.
	Chained string
	// Notes are things the person installing should know.
	Notes []string
}

// Install puts the post-receive hook into a repository and records its
// settings and token in <git-dir>/buildbridge (the directory and the token
// file readable by the repository's owner only). A hook already there is
// renamed to post-receive.buildbridge-chained and still runs, with the
// same input, after ours. Installing again updates the settings and keeps
// the chained hook.
func Install(ctx context.Context, cfg InstallConfig) (Installed, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return Installed{}, err
	}
	gitDir, hooksDir, err := FindGitDir(ctx, cfg.Git, cfg.Repo)
	if err != nil {
		return Installed{}, err
	}
	owner, err := os.Stat(gitDir)
	if err != nil {
		return Installed{}, fmt.Errorf("hook install: %w", err)
	}
	inst := Installed{GitDir: gitDir, Hook: filepath.Join(hooksDir, HookName)}
	chained := inst.Hook + ChainedSuffix

	state := StateDir(gitDir)
	if err := os.MkdirAll(SpoolDir(gitDir), 0o700); err != nil {
		return inst, fmt.Errorf("hook install: %w", err)
	}
	os.Chmod(state, 0o700)
	settings, _ := json.MarshalIndent(Settings{URL: cfg.URL, Project: cfg.Project}, "", "  ")
	if err := writeFile(filepath.Join(state, settingsName), append(settings, '\n'), 0o600); err != nil {
		return inst, fmt.Errorf("hook install: %w", err)
	}
	if err := writeFile(filepath.Join(state, tokenName), []byte(cfg.Token+"\n"), 0o600); err != nil {
		return inst, fmt.Errorf("hook install: %w", err)
	}
	for _, p := range []string{state, SpoolDir(gitDir), filepath.Join(SpoolDir(gitDir), "rejected"),
		filepath.Join(state, settingsName), filepath.Join(state, tokenName)} {
		if err := matchOwner(p, owner); err != nil {
			return inst, fmt.Errorf("hook install: %w", err)
		}
	}

	if err := os.MkdirAll(hooksDir, 0o755); err != nil {
		return inst, fmt.Errorf("hook install: %w", err)
	}
	existing, err := os.Lstat(inst.Hook)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return inst, fmt.Errorf("hook install: %w", err)
	case isOurs(inst.Hook):
		// A reinstall: the chained hook, if any, stays where it is.
	default:
		if _, err := os.Lstat(chained); err == nil {
			return inst, fmt.Errorf("hook install: %s exists and is not buildbridge's, and %s is taken too; move one of them away first", inst.Hook, chained)
		}
		if existing.Mode().IsRegular() && existing.Mode().Perm()&0o111 == 0 {
			// git ignores a hook that is not executable; so does the chain.
			inst.Notes = append(inst.Notes, fmt.Sprintf("%s is not executable: git did not run it, and the chain will not either", inst.Hook))
		}
		if err := os.Rename(inst.Hook, chained); err != nil {
			return inst, fmt.Errorf("hook install: keep the existing hook: %w", err)
		}
	}
	if _, err := os.Lstat(chained); err == nil {
		inst.Chained = chained
	}
	if err := writeFile(inst.Hook, []byte(hookScript(cfg.Binary, chained)), 0o755); err != nil {
		return inst, fmt.Errorf("hook install: %w", err)
	}
	if err := matchOwner(inst.Hook, owner); err != nil {
		return inst, fmt.Errorf("hook install: %w", err)
	}
	return inst, nil
}

// hookScript is the installed hook: it runs `buildbridge hook run`, which
// runs the chained hook after its own work; if the binary is gone, the
// chained hook still runs and the push is unaffected.
func hookScript(binary, chained string) string {
	return "#!/bin/sh\n" + marker + `: asks the buildbridge hub to build what was pushed.
# Written by "buildbridge hook install"; "buildbridge hook uninstall" removes it
# and puts back the hook it replaced, which it runs after its own work.
bb=` + shellQuote(binary) + `
chained=` + shellQuote(chained) + `
if [ -x "$bb" ]; then
	exec "$bb" hook run --chain "$chained" -- "$@"
fi
echo "buildbridge: $bb not found; no build requested" >&2
if [ -x "$chained" ]; then
	exec "$chained" "$@"
fi
exit 0
`
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func isOurs(path string) bool {
	raw, err := os.ReadFile(path)
	return err == nil && bytes.Contains(raw, []byte(marker))
}

// Uninstalled says what Uninstall did.
type Uninstalled struct {
	GitDir string
	// Restored is the hook put back in place, empty when there was none.
	Restored string
	// Spooled counts the requests still in the spool, which is kept.
	Spooled int
}

// Uninstall removes the hook, puts the hook it replaced back, and deletes
// the settings and the token. A spool holding requests is kept (its
// requests were never sent) and counted.
func Uninstall(ctx context.Context, repo, git string) (Uninstalled, error) {
	if git == "" {
		git = "git"
	}
	gitDir, hooksDir, err := FindGitDir(ctx, git, repo)
	if err != nil {
		return Uninstalled{}, err
	}
	un := Uninstalled{GitDir: gitDir}
	hook := filepath.Join(hooksDir, HookName)
	chained := hook + ChainedSuffix
	if _, err := os.Lstat(hook); err == nil && !isOurs(hook) {
		return un, fmt.Errorf("hook uninstall: %s is not buildbridge's hook; nothing changed", hook)
	}
	if err := os.Remove(hook); err != nil && !errors.Is(err, os.ErrNotExist) {
		return un, fmt.Errorf("hook uninstall: %w", err)
	}
	if _, err := os.Lstat(chained); err == nil {
		if err := os.Rename(chained, hook); err != nil {
			return un, fmt.Errorf("hook uninstall: restore %s: %w", hook, err)
		}
		un.Restored = hook
	}
	state := StateDir(gitDir)
	for _, name := range []string{tokenName, settingsName} {
		if err := os.Remove(filepath.Join(state, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return un, fmt.Errorf("hook uninstall: %w", err)
		}
	}
	if sp, err := OpenSpool(SpoolDir(gitDir)); err == nil {
		names, _ := sp.List()
		un.Spooled = len(names)
	}
	if un.Spooled == 0 {
		if err := os.RemoveAll(state); err != nil {
			return un, fmt.Errorf("hook uninstall: %w", err)
		}
	}
	return un, nil
}

// FindGitDir returns the absolute git directory and hooks directory of a
// repository (bare or not; core.hooksPath honoured). git runs without the
// GIT_* variables of the caller's environment, so it reads repo itself.
func FindGitDir(ctx context.Context, git, repo string) (gitDir, hooksDir string, err error) {
	run := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, git, append([]string{"-C", repo}, args...)...)
		cmd.Env = cleanEnv()
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("%s is not a git repository: %s", repo, strings.TrimSpace(firstLine(errors.New(stderr.String()+" "+err.Error()))))
		}
		return strings.TrimSpace(string(out)), nil
	}
	if gitDir, err = run("rev-parse", "--absolute-git-dir"); err != nil {
		return "", "", err
	}
	if hooksDir, err = run("rev-parse", "--path-format=absolute", "--git-path", "hooks"); err != nil {
		return "", "", err
	}
	return gitDir, hooksDir, nil
}

// GitDirFromEnv returns the git directory of the repository the current
// environment points at: inside a hook, the one being pushed to.
func GitDirFromEnv(ctx context.Context, git string) (string, error) {
	out, err := exec.CommandContext(ctx, git, "rev-parse", "--absolute-git-dir").Output()
	if err != nil {
		return "", fmt.Errorf("finding the git directory: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GIT_") {
			env = append(env, kv)
		}
	}
	return env
}

// writeFile writes a file whole (a temporary file renamed over it) with
// the given mode, set when the file is created so it is never readable by
// others, even for a moment.
func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".bb-*")
	if err != nil {
		return err
	}
	// CreateTemp makes the file 0600; Chmod widens it only when asked.
	err = tmp.Chmod(mode)
	if err == nil {
		_, err = tmp.Write(data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// matchOwner gives path to the owner of the git directory when the
// installer runs as root for someone else's repository, so the hook (run
// as that owner) can read its token and nobody else can.
func matchOwner(path string, gitDir os.FileInfo) error {
	st, ok := gitDir.Sys().(*syscall.Stat_t)
	if !ok || os.Geteuid() != 0 || int(st.Uid) == 0 {
		return nil
	}
	if err := os.Lchown(path, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("give %s to the repository's owner: %w", path, err)
	}
	return nil
}
