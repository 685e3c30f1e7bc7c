package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/buildbridge/buildbridge/builds/remote"
	"github.com/buildbridge/buildbridge/builds/runner"
	"github.com/buildbridge/buildbridge/store"
)

func init() { subcommands = append(subcommands, newRunnerCmd) }

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func newRunnerCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "runner --url URL --token RUNNER_TOKEN",
		Short: "Run builds for a hub on this machine (and manage runner tokens)",
		Args:  cobra.NoArgs,
		RunE:  runRunner,
	}
	fs := cmd.Flags()
	fs.String("url", "", "base URL of the hub (env BUILDBRIDGE_URL)")
	fs.String("token", "", "runner token from `buildbridge runner token create` (env BUILDBRIDGE_RUNNER_TOKEN)")
	fs.String("labels", "", "comma-separated labels to run builds for (default: all of the token's)")
	fs.Int("concurrency", 1, "builds run at once")
	fs.String("work", "buildbridge-runner", "directory for workspaces and artifacts")
	fs.String("log-level", "info", "debug, info, warn or error")
	cmd.AddCommand(newRunnerTokenCmd(), newRunnerLabelsCmd())
	return cmd
}

func runRunner(cmd *cobra.Command, _ []string) error {
	fs := cmd.Flags()
	url, _ := fs.GetString("url")
	token, _ := fs.GetString("token")
	labels, _ := fs.GetString("labels")
	conc, _ := fs.GetInt("concurrency")
	work, _ := fs.GetString("work")
	level, _ := fs.GetString("log-level")
	if url == "" {
		url = getenv("BUILDBRIDGE_URL")
	}
	if token == "" {
		token = getenv("BUILDBRIDGE_RUNNER_TOKEN")
	}
	if url == "" || token == "" {
		return errors.New("runner: --url and --token (or BUILDBRIDGE_URL and BUILDBRIDGE_RUNNER_TOKEN) are required")
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return fmt.Errorf("runner: --log-level: %w", err)
	}
	logger := slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: lv}))
	arts := filepath.Join(work, "artifacts")
	r, err := runner.New(runner.Config{WorkDir: filepath.Join(work, "workspaces"), ArtifactsDir: arts, Logger: logger})
	if err != nil {
		return err
	}
	c, err := remote.NewClient(remote.ClientConfig{URL: url, Token: token, Labels: splitList(labels),
		Concurrency: conc, Runner: r, ArtifactsDir: arts, Logger: logger})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger.Info("runner started", "url", url, "concurrency", conc, "labels", labels)
	return c.Run(ctx)
}

func newRunnerTokenCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Manage runner tokens (works on the store, like `user add`)"}
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Register a runner and print its token (and only it) on stdout",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			labels, _ := cmd.Flags().GetString("labels")
			s, err := openStore(cmd)
			if err != nil {
				return err
			}
			defer s.Close()
			plain, _, err := s.CreateRunner(cmd.Context(), args[0], splitList(labels))
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), plain)
			return nil
		},
	}
	create.Flags().String("labels", "", "comma-separated labels the runner has (linux,go)")
	addStoreFlags(create.Flags())
	list := &cobra.Command{
		Use:   "list",
		Short: "List runners",
		Args:  cobra.NoArgs,
		RunE: withStore(func(cmd *cobra.Command, _ []string, s *store.DB) error {
			rs, err := s.Runners(cmd.Context())
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tNAME\tLABELS\tCREATED\tLAST SEEN\tREVOKED")
			for _, r := range rs {
				seen, revoked := "-", "-"
				if r.LastSeenAt != nil {
					seen = r.LastSeenAt.Format("2006-01-02 15:04:05")
				}
				if r.RevokedAt != nil {
					revoked = r.RevokedAt.Format("2006-01-02 15:04:05")
				}
				fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Name, strings.Join(r.Labels, ","), r.CreatedAt.Format("2006-01-02 15:04"), seen, revoked)
			}
			return w.Flush()
		}),
	}
	addStoreFlags(list.Flags())
	revoke := &cobra.Command{
		Use:   "revoke ID|NAME",
		Short: "Revoke a runner's token: it is refused at its next call and its builds are handed on",
		Args:  cobra.ExactArgs(1),
		RunE: withStore(func(cmd *cobra.Command, args []string, s *store.DB) error {
			r, err := s.RevokeRunner(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked runner %d (%s)\n", r.ID, r.Name)
			return nil
		}),
	}
	addStoreFlags(revoke.Flags())
	cmd.AddCommand(create, list, revoke)
	return cmd
}

func newRunnerLabelsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "labels PROJECT [LABEL...]",
		Short: "Set the labels a runner needs to run a project's builds (none: any runner, the embedded one too)",
		Args:  cobra.MinimumNArgs(1),
		RunE: withStore(func(cmd *cobra.Command, args []string, s *store.DB) error {
			p, err := s.ProjectByName(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			var labels []string
			for _, a := range args[1:] {
				labels = append(labels, splitList(a)...)
			}
			if err := s.SetProjectLabels(cmd.Context(), p.ID, labels); err != nil {
				return err
			}
			got, err := s.ProjectLabels(cmd.Context(), p.ID)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "project %s needs labels: %s\n", p.Name, strings.Join(got, ","))
			return nil
		}),
	}
	addStoreFlags(cmd.Flags())
	return cmd
}
