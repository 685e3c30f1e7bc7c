package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/buildbridge/buildbridge/event"
	"github.com/buildbridge/buildbridge/routes"
	"github.com/buildbridge/buildbridge/sinks"
	// The sink types this binary knows.
	_ "github.com/buildbridge/buildbridge/sinks/log"
)

func init() { subcommands = append(subcommands, newRulesCmd) }

func newRulesCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "rules", Short: "Check, try and describe routing rules files"}
	check := &cobra.Command{
		Use:   "check FILE",
		Short: "Check a rules file: print every error (exit 1), or a one-line summary",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := loadRules(cmd, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), r.Summary())
			return nil
		},
	}
	test := &cobra.Command{
		Use:   "test FILE [--event EVENT.json]",
		Short: "Show which routes an event matches, why the others do not, and the rendered messages (nothing is delivered)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := loadRules(cmd, args[0])
			if err != nil {
				return err
			}
			path, _ := cmd.Flags().GetString("event")
			ev, err := readRulesEvent(cmd.InOrStdin(), path)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			printExplanation(cmd.OutOrStdout(), ev, r.Explain(ev))
			return nil
		},
	}
	test.Flags().String("event", "", "event JSON file, as published on the channels (- for stdin; default: a sample build that broke main)")
	schema := &cobra.Command{
		Use:   "schema",
		Short: "Print the JSON Schema of rules files (for editors)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := routes.Schema()
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b)
			return err
		},
	}
	for _, c := range []*cobra.Command{check, test} {
		c.Flags().Bool("skip-secrets", false, "check ${ENV} and file: references without resolving them (CI without the secrets)")
	}
	cmd.AddCommand(check, test, schema)
	return cmd
}

// loadRules loads a rules file; on errors it prints every one on stderr
// and returns an exit status 1 error.
func loadRules(cmd *cobra.Command, path string) (*routes.Rules, error) {
	skip, _ := cmd.Flags().GetBool("skip-secrets")
	r, err := routes.Load(path, routes.Options{LookupEnv: os.LookupEnv, SkipSecrets: skip})
	stderr := cmd.ErrOrStderr()
	var errs routes.Errors
	switch {
	case errors.As(err, &errs):
		for _, e := range errs {
			fmt.Fprintln(stderr, e)
		}
		return nil, &exitError{code: 1, err: fmt.Errorf("%s: %d %s", path, len(errs), rulesPlural(len(errs), "error", "errors"))}
	case err != nil:
		return nil, &exitError{code: 1, err: err}
	}
	for _, w := range r.Warnings() {
		fmt.Fprintln(stderr, "warning:", w)
	}
	return r, nil
}

func rulesPlural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// readEvent reads an event envelope from a file, stdin ("-") or, with no
// path, returns the sample event.
func readRulesEvent(stdin io.Reader, path string) (event.Envelope, error) {
	if path == "" {
		return routes.SampleEvent(), nil
	}
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(io.LimitReader(stdin, 4<<20))
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return event.Envelope{}, fmt.Errorf("event: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var ev event.Envelope
	if err := dec.Decode(&ev); err != nil {
		return event.Envelope{}, fmt.Errorf("event %s: not an event envelope: %w", path, err)
	}
	if ev.Type == "" {
		return event.Envelope{}, fmt.Errorf("event %s: no \"type\"", path)
	}
	return ev, nil
}

func describeRulesEvent(ev event.Envelope) string {
	var b strings.Builder
	fmt.Fprintf(&b, "event %s %s", rulesOrDash(ev.ID), ev.Type)
	if ev.Project != nil {
		fmt.Fprintf(&b, " project %s (owner %d)", ev.Project.Name, ev.Project.OwnerID)
	}
	if bd := ev.Build; bd != nil {
		fmt.Fprintf(&b, ": #%d on %s, %s", bd.Number, rulesOrDash(bd.Branch), bd.State)
		if bd.Result != "" {
			fmt.Fprintf(&b, " %s", bd.Result)
		}
		fmt.Fprintf(&b, " (status %s)", bd.Status)
	}
	return b.String()
}

func rulesOrDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printExplanation(w io.Writer, ev event.Envelope, x *routes.Explanation) {
	fmt.Fprintln(w, describeRulesEvent(ev))
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Routes:")
	for _, rr := range x.Routes {
		if !rr.Matched {
			fmt.Fprintf(w, "  no    %s: %s\n", rr.Name, rr.Reason)
			continue
		}
		fmt.Fprintf(w, "  MATCH %s\n", rr.Name)
		for _, t := range rr.Targets {
			line := fmt.Sprintf("        → %s", t.Sink)
			if t.Target != "" {
				line += " " + t.Target
			}
			if t.Delivery >= 0 {
				line += fmt.Sprintf(" [delivery %d]", t.Delivery+1)
			}
			if t.Note != "" {
				line += " (" + t.Note + ")"
			}
			fmt.Fprintln(w, line)
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Deliveries (%d; nothing was sent):\n", len(x.Deliveries))
	for i, d := range x.Deliveries {
		printDelivery(w, i+1, d)
	}
}

func printDelivery(w io.Writer, n int, d sinks.Delivery) {
	fmt.Fprintf(w, "\n[%d] %s (%s) → %s   (route %s)\n", n, d.Sink, d.SinkType, d.Target, d.Route)
	keys := make([]string, 0, len(d.Params))
	for k := range d.Params {
		if k != "html" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "    %s: %s\n", k, d.Params[k])
	}
	if d.Subject != "" {
		fmt.Fprintf(w, "    subject: %s\n", d.Subject)
	}
	fmt.Fprintf(w, "    content-type: %s\n", d.ContentType)
	fmt.Fprintln(w, "    body:")
	fmt.Fprintln(w, rulesIndent(string(d.Body), "      "))
	if html, ok := d.Params["html"]; ok {
		fmt.Fprintln(w, "    html:")
		fmt.Fprintln(w, rulesIndent(html, "      "))
	}
}

func rulesIndent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = prefix + l
	}
	return strings.Join(lines, "\n")
}
