package main

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/buildbridge/buildbridge/store"
)

func init() { subcommands = append(subcommands, newUserCmd, newTokenCmd) }

// addStoreFlags declares the flags that locate the store, for commands
// that work on it directly (user, token).
func addStoreFlags(fs *pflag.FlagSet) {
	def := defaultConfig()
	fs.String("config", "", "configuration file (default: buildbridge.yaml, if present)")
	fs.String("data", def.Data, "data directory (env BUILDBRIDGE_DATA)")
	fs.String("postgres", "", "PostgreSQL DSN (env BUILDBRIDGE_POSTGRES)")
}

// openStore opens the store named by the command's flags, environment and
// configuration file. The caller closes it.
func openStore(cmd *cobra.Command) (*store.DB, error) {
	cfg, err := loadConfig(cmd.Flags(), getenv)
	if err != nil {
		return nil, err
	}
	return store.Open(cmd.Context(), store.Config{DataDir: cfg.Data, Postgres: cfg.Postgres,
		Logger: slog.New(slog.DiscardHandler)})
}

// withStore makes a command's RunE that opens the store named by its
// flags, runs fn with it and closes it.
func withStore(fn func(cmd *cobra.Command, args []string, s *store.DB) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		s, err := openStore(cmd)
		if err != nil {
			return err
		}
		defer s.Close()
		return fn(cmd, args, s)
	}
}

func newUserCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "user", Short: "Manage users"}
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Create a user and print their first API token (and only it) on stdout",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			admin, _ := cmd.Flags().GetBool("admin")
			s, err := openStore(cmd)
			if err != nil {
				return err
			}
			defer s.Close()
			plain, err := createUserWithToken(cmd.Context(), s, args[0], admin)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), plain)
			return nil
		},
	}
	add.Flags().Bool("admin", false, "the user sees and manages every project")
	addStoreFlags(add.Flags())
	list := &cobra.Command{
		Use:   "list",
		Short: "List users",
		Args:  cobra.NoArgs,
		RunE: withStore(func(cmd *cobra.Command, _ []string, s *store.DB) error {
			users, err := s.ListUsers(cmd.Context())
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tNAME\tADMIN\tMAX CHANNELS\tCREATED")
			for _, u := range users {
				fmt.Fprintf(w, "%d\t%s\t%v\t%d\t%s\n", u.ID, u.Name, u.Admin, u.MaxChannels, u.CreatedAt.Format("2006-01-02 15:04"))
			}
			return w.Flush()
		}),
	}
	addStoreFlags(list.Flags())
	cmd.AddCommand(add, list)
	return cmd
}

func createUserWithToken(ctx context.Context, s *store.DB, name string, admin bool) (string, error) {
	u, err := s.CreateUser(ctx, name, admin)
	if err != nil {
		return "", err
	}
	plain, _, err := s.CreateToken(ctx, u.ID, "default")
	return plain, err
}

func newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Manage a user's API tokens"}
	userOf := func(cmd *cobra.Command, s *store.DB) (store.User, error) {
		name, _ := cmd.Flags().GetString("user")
		if name == "" {
			return store.User{}, fmt.Errorf("--user is required")
		}
		return s.UserByName(cmd.Context(), name)
	}
	create := &cobra.Command{
		Use:   "create --user NAME [--name LABEL]",
		Short: "Create a token and print it (shown only this once) on stdout",
		Args:  cobra.NoArgs,
		RunE: withStore(func(cmd *cobra.Command, _ []string, s *store.DB) error {
			u, err := userOf(cmd, s)
			if err != nil {
				return err
			}
			label, _ := cmd.Flags().GetString("name")
			plain, _, err := s.CreateToken(cmd.Context(), u.ID, label)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), plain)
			return nil
		}),
	}
	create.Flags().String("name", "", "a label for the token")
	list := &cobra.Command{
		Use:   "list --user NAME",
		Short: "List a user's tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: withStore(func(cmd *cobra.Command, _ []string, s *store.DB) error {
			u, err := userOf(cmd, s)
			if err != nil {
				return err
			}
			toks, err := s.ListTokens(cmd.Context(), u.ID)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tNAME\tPREFIX\tCREATED\tREVOKED")
			for _, t := range toks {
				revoked := "-"
				if t.RevokedAt != nil {
					revoked = t.RevokedAt.Format("2006-01-02 15:04")
				}
				fmt.Fprintf(w, "%d\t%s\t%s…\t%s\t%s\n", t.ID, t.Name, t.Prefix, t.CreatedAt.Format("2006-01-02 15:04"), revoked)
			}
			return w.Flush()
		}),
	}
	revoke := &cobra.Command{
		Use:   "revoke --user NAME TOKEN_ID",
		Short: "Revoke a token; it stops working at once",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil {
				return fmt.Errorf("token id %q must be a number (see `buildbridge token list`)", args[0])
			}
			s, err := openStore(cmd)
			if err != nil {
				return err
			}
			defer s.Close()
			u, err := userOf(cmd, s)
			if err != nil {
				return err
			}
			if err := s.RevokeToken(cmd.Context(), u.ID, id); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "token %d of %s revoked\n", id, u.Name)
			return nil
		},
	}
	for _, c := range []*cobra.Command{create, list, revoke} {
		c.Flags().String("user", "", "the user whose tokens these are")
		addStoreFlags(c.Flags())
		cmd.AddCommand(c)
	}
	return cmd
}
