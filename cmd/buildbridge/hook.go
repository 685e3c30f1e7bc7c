package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/buildbridge/buildbridge/sources/githook"
)

func init() { subcommands = append(subcommands, newHookCmd) }

func newHookCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "hook",
		Short: "Install, run and flush the git post-receive hook that starts builds on push",
	}
	cmd.AddCommand(newHookInstallCmd(), newHookUninstallCmd(), newHookFlushCmd(), newHookRunCmd())
	return cmd
}

func newHookInstallCmd() *cobra.Command {
	var cfg githook.InstallConfig
	var noCheck bool
	cmd := &cobra.Command{
		Use:   "install --repo PATH --project NAME [--url URL] [--token TOKEN]",
		Short: "Install the post-receive hook into a repository (an existing hook is kept and still runs)",
		Long: "install writes a post-receive hook into the repository (bare, or the .git of a working tree) that\n" +
			"asks the hub to build every pushed branch. A post-receive hook already there is renamed to\n" +
			"post-receive.buildbridge-chained and run by the new one with the same input; uninstall puts it back.\n" +
			"The hub's URL and the token are kept in <git-dir>/buildbridge/, the token readable by the\n" +
			"repository's owner only.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.URL == "" {
				cfg.URL = getenv("BUILDBRIDGE_URL")
			}
			if cfg.URL == "" {
				cfg.URL = "http://127.0.0.1:8080"
			}
			if cfg.Token == "" {
				cfg.Token = getenv("BUILDBRIDGE_TOKEN")
			}
			bin, err := os.Executable()
			if err == nil {
				bin, err = filepath.EvalSymlinks(bin)
			}
			if err != nil {
				return fmt.Errorf("hook install: locating the buildbridge binary: %w", err)
			}
			cfg.Binary = bin
			inst, err := githook.Install(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "installed %s (project %s, hub %s)\n", inst.Hook, cfg.Project, cfg.URL)
			if inst.Chained != "" {
				fmt.Fprintf(out, "the previous hook is kept as %s and runs after buildbridge's\n", inst.Chained)
			}
			for _, n := range inst.Notes {
				fmt.Fprintf(cmd.ErrOrStderr(), "note: %s\n", n)
			}
			if !noCheck {
				if err := checkHub(cmd.Context(), cfg.URL, cfg.Token, cfg.Project); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: %v\n  (the hook is installed; pushes are spooled until the hub takes them)\n", err)
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Repo, "repo", "", "the repository (bare or working tree)")
	f.StringVar(&cfg.Project, "project", "", "the project pushes build")
	f.StringVar(&cfg.URL, "url", "", "hub URL (env BUILDBRIDGE_URL, default http://127.0.0.1:8080)")
	f.StringVar(&cfg.Token, "token", "", "API token of the project's owner (env BUILDBRIDGE_TOKEN)")
	f.BoolVar(&noCheck, "no-check", false, "do not ask the hub whether the token sees the project")
	cmd.MarkFlagRequired("repo")
	cmd.MarkFlagRequired("project")
	return cmd
}

// checkHub asks the hub whether the token sees the project, so a typo is
// found at install time rather than at the first push.
func checkHub(ctx context.Context, base, token, project string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	u, err := url.JoinPath(base, "/api/v1/projects", url.PathEscape(project))
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("could not reach the hub at %s: %v", base, err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	switch resp.StatusCode {
	case http.StatusOK:
		return nil
	case http.StatusUnauthorized:
		return fmt.Errorf("the hub at %s refuses the token", base)
	case http.StatusNotFound:
		return fmt.Errorf("the hub at %s has no project %q that this token sees", base, project)
	}
	return fmt.Errorf("the hub at %s answered %s to a project lookup", base, resp.Status)
}

func newHookUninstallCmd() *cobra.Command {
	var repo string
	cmd := &cobra.Command{
		Use:   "uninstall [--repo PATH]",
		Short: "Remove the hook and put back the hook it replaced",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			un, err := githook.Uninstall(cmd.Context(), repo, "git")
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "removed the buildbridge hook from %s\n", un.GitDir)
			if un.Restored != "" {
				fmt.Fprintf(out, "restored the previous hook %s\n", un.Restored)
			}
			if un.Spooled > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %d build request(s) were never sent; they stay in %s\n",
					un.Spooled, githook.SpoolDir(un.GitDir))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&repo, "repo", ".", "the repository")
	return cmd
}

func newHookFlushCmd() *cobra.Command {
	var repo string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "flush [--repo PATH]",
		Short: "Send the build requests the hook kept while the hub was unreachable, in order",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			gitDir, _, err := githook.FindGitDir(cmd.Context(), "git", repo)
			if err != nil {
				return err
			}
			settings, token, err := githook.LoadSettings(gitDir)
			if err != nil {
				return err
			}
			sp, err := githook.OpenSpool(githook.SpoolDir(gitDir))
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			unlock, err := sp.Lock(ctx)
			if err != nil {
				return err
			}
			defer unlock()
			r := githook.Flush(ctx, sp, &githook.Client{URL: settings.URL, Token: token})
			githook.ReportFlush(cmd.ErrOrStderr(), settings.Project, r, sp.Dir())
			fmt.Fprintf(cmd.OutOrStdout(), "sent %d, rejected %d, left %d\n", r.Sent, len(r.Rejected), r.Remaining)
			if r.Err != nil {
				return &exitError{code: 1, err: fmt.Errorf("%d build request(s) left in the spool", r.Remaining)}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&repo, "repo", ".", "the repository")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "give up after this long")
	return cmd
}

// newHookRunCmd is what the installed hook script runs. It never fails:
// it always exits 0 and says what went wrong in one line.
func newHookRunCmd() *cobra.Command {
	var chain string
	var budget time.Duration
	cmd := &cobra.Command{
		Use:    "run [--chain HOOK]",
		Short:  "Run as the post-receive hook (the installed hook script calls this)",
		Hidden: true,
		// A hook script from another version must still work.
		FParseErrWhitelist: cobra.FParseErrWhitelist{UnknownFlags: true},
		RunE: func(cmd *cobra.Command, args []string) error {
			input, _ := io.ReadAll(cmd.InOrStdin())
			stderr := cmd.ErrOrStderr()
			func() {
				defer func() {
					if r := recover(); r != nil {
						fmt.Fprintf(stderr, "buildbridge: hook failed (%v); no build requested\n", r)
					}
				}()
				gitDir, err := githook.GitDirFromEnv(cmd.Context(), "git")
				if err != nil {
					fmt.Fprintf(stderr, "buildbridge: %v; no build requested\n", err)
					return
				}
				githook.Run(cmd.Context(), githook.RunConfig{GitDir: gitDir, Input: input, Stderr: stderr,
					Budget: budget, Pusher: pusherName()})
			}()
			runChained(cmd.Context(), chain, args, input, cmd.OutOrStdout(), stderr)
			return nil
		},
	}
	cmd.Flags().StringVar(&chain, "chain", "", "the hook to run afterwards with the same input")
	cmd.Flags().DurationVar(&budget, "budget", 3*time.Second, "how long the hook may take to reach the hub")
	return cmd
}

// runChained runs the hook buildbridge's replaced, as git would have: the
// same input, arguments, environment and output.
func runChained(ctx context.Context, path string, args []string, input []byte, stdout, stderr io.Writer) {
	if path == "" {
		return
	}
	fi, err := os.Stat(path)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return
	}
	c := exec.CommandContext(ctx, path, args...)
	c.Stdin, c.Stdout, c.Stderr = bytes.NewReader(input), stdout, stderr
	if err := c.Run(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			fmt.Fprintf(stderr, "buildbridge: running %s: %v\n", path, err)
		}
	}
}

// pusherName names who is pushing: the account the hook runs as, or the
// user a git server (gitolite, GitLab shell) says it is.
func pusherName() string {
	for _, v := range []string{"GL_USERNAME", "GL_USER"} {
		if s := os.Getenv(v); s != "" {
			return s
		}
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return os.Getenv("USER")
}
