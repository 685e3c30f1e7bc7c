package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/buildbridge/buildbridge/sinks/webhook"
	"github.com/buildbridge/buildbridge/store"
)

func init() { subcommands = append(subcommands, newDeliveriesCmd, newWebhookCmd) }

// apiClient calls the hub's API with a token.
type apiClient struct {
	url, token string
	http       *http.Client
}

func addAPIFlags(cmd *cobra.Command, c *apiClient) {
	cmd.PersistentFlags().StringVar(&c.url, "url", "", "hub URL (env BUILDBRIDGE_URL, default http://127.0.0.1:8080)")
	cmd.PersistentFlags().StringVar(&c.token, "token", "", "API token (env BUILDBRIDGE_TOKEN)")
}

func (c *apiClient) resolve() error {
	if c.url == "" {
		c.url = getenv("BUILDBRIDGE_URL")
	}
	if c.url == "" {
		c.url = "http://127.0.0.1:8080"
	}
	if c.token == "" {
		c.token = getenv("BUILDBRIDGE_TOKEN")
	}
	if c.token == "" {
		return errors.New("a token is required: --token or BUILDBRIDGE_TOKEN")
	}
	c.url = strings.TrimRight(c.url, "/")
	c.http = &http.Client{Timeout: 30 * time.Second}
	return nil
}

// do calls the API and decodes a JSON answer into out; an error answer
// becomes an error with the API's message.
func (c *apiClient) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Error.Message != "" {
			return fmt.Errorf("%s (HTTP %d, %s)", e.Error.Message, resp.StatusCode, e.Error.Code)
		}
		return fmt.Errorf("%s %s: HTTP %d", method, path, resp.StatusCode)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s %s: unexpected answer: %w", method, path, err)
	}
	return nil
}

func newDeliveriesCmd() *cobra.Command {
	c := &apiClient{}
	cmd := &cobra.Command{Use: "deliveries", Short: "List, show and redeliver deliveries (webhooks, Slack, email, channels)",
		PersistentPreRunE: func(*cobra.Command, []string) error { return c.resolve() }}
	addAPIFlags(cmd, c)

	var f struct {
		sink, target, status, event, typ, since, until, cursor string
		limit                                                  int
		all, asJSON                                            bool
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List deliveries, newest first (yours; all for admins)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			for k, v := range map[string]string{"sink": f.sink, "target": f.target, "status": f.status, "event": f.event,
				"type": f.typ, "since": f.since, "until": f.until, "cursor": f.cursor} {
				if v != "" {
					q.Set(k, v)
				}
			}
			q.Set("limit", strconv.Itoa(f.limit))
			var all []store.SinkDelivery
			for {
				var page struct {
					Deliveries []store.SinkDelivery `json:"deliveries"`
					Next       *string              `json:"next_cursor"`
				}
				if err := c.do(cmd.Context(), "GET", "/api/v1/deliveries?"+q.Encode(), nil, &page); err != nil {
					return err
				}
				all = append(all, page.Deliveries...)
				if !f.all || page.Next == nil {
					if !f.all && page.Next != nil && !f.asJSON {
						defer fmt.Fprintf(cmd.ErrOrStderr(), "more: --cursor %s (or --all)\n", *page.Next)
					}
					break
				}
				q.Set("cursor", *page.Next)
			}
			out := cmd.OutOrStdout()
			if f.asJSON {
				return writeJSON(out, all)
			}
			tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATUS\tTRIES\tSINK\tTARGET\tEVENT\tTYPE\tCREATED\tLAST")
			for _, d := range all {
				last := d.LastError
				if d.Status == store.DeliveryPending && d.NextAt != nil {
					last = strings.TrimSpace("next " + d.NextAt.Local().Format("15:04:05") + " " + last)
				}
				fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.Status, d.Attempts, d.Sink, shorten(d.Target, 48),
					d.EventID, d.EventType, d.CreatedAt.Local().Format("2006-01-02 15:04:05"), shorten(last, 60))
			}
			return tw.Flush()
		},
	}
	fl := list.Flags()
	fl.StringVar(&f.sink, "sink", "", "only this sink")
	fl.StringVar(&f.target, "target", "", "only this target")
	fl.StringVar(&f.status, "status", "", "pending, succeeded or failed")
	fl.StringVar(&f.event, "event", "", "only the deliveries of this event id")
	fl.StringVar(&f.typ, "type", "", "only events of this type")
	fl.StringVar(&f.since, "since", "", "created since: RFC 3339 time or a duration (24h = a day ago)")
	fl.StringVar(&f.until, "until", "", "created before: RFC 3339 time or a duration ago")
	fl.StringVar(&f.cursor, "cursor", "", "continue a list (the cursor a previous list printed)")
	fl.IntVar(&f.limit, "limit", 50, "deliveries per page (1 to 500)")
	fl.BoolVar(&f.all, "all", false, "follow the cursor to the end")
	fl.BoolVar(&f.asJSON, "json", false, "print JSON")

	var showJSON bool
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a delivery, its message and every attempt",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := deliveryID(args[0])
			if err != nil {
				return err
			}
			var resp struct {
				Delivery store.SinkDelivery `json:"delivery"`
				Attempts []json.RawMessage  `json:"attempts"`
				Message  json.RawMessage    `json:"message"`
			}
			if err := c.do(cmd.Context(), "GET", "/api/v1/deliveries/"+id, nil, &resp); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if showJSON {
				return writeJSON(out, resp)
			}
			printDeliveryDetail(out, resp.Delivery, resp.Attempts, resp.Message)
			return nil
		},
	}
	show.Flags().BoolVar(&showJSON, "json", false, "print JSON")

	redeliver := &cobra.Command{
		Use:   "redeliver ID",
		Short: "Attempt a delivery again now (a failed one starts a new round of retries)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := deliveryID(args[0])
			if err != nil {
				return err
			}
			var resp struct {
				Delivery store.SinkDelivery `json:"delivery"`
			}
			if err := c.do(cmd.Context(), "POST", "/api/v1/deliveries/"+id+"/redeliver", nil, &resp); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "delivery %d to %s %s: %s, message id %s\n", resp.Delivery.ID, resp.Delivery.Sink,
				resp.Delivery.Target, resp.Delivery.Status, resp.Delivery.MessageID)
			return nil
		},
	}

	var since string
	recoverCmd := &cobra.Command{
		Use:   "recover SINK --since TIME",
		Short: "Redeliver every delivery of a sink that failed since a time",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if since == "" {
				return errors.New("--since is required (an RFC 3339 time, or a duration like 24h for a day ago)")
			}
			var resp struct {
				Redelivered int `json:"redelivered"`
			}
			if err := c.do(cmd.Context(), "POST", "/api/v1/sinks/"+url.PathEscape(args[0])+"/recover", map[string]string{"since": since}, &resp); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d deliveries of %s redelivered\n", resp.Redelivered, args[0])
			return nil
		},
	}
	recoverCmd.Flags().StringVar(&since, "since", "", "failed since: RFC 3339 time or a duration (24h = a day ago)")
	cmd.AddCommand(list, show, redeliver, recoverCmd)
	return cmd
}

func deliveryID(s string) (string, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err != nil || n <= 0 {
		return "", fmt.Errorf("delivery id %q must be a positive integer", s)
	}
	return s, nil
}

func shorten(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len([]rune(s)) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printDeliveryDetail(w io.Writer, d store.SinkDelivery, attempts []json.RawMessage, message json.RawMessage) {
	fmt.Fprintf(w, "delivery %d: %s\n", d.ID, d.Status)
	fmt.Fprintf(w, "  sink:       %s (%s) → %s\n", d.Sink, d.SinkType, d.Target)
	fmt.Fprintf(w, "  event:      %s (%s, seq %d)   route: %s\n", d.EventID, d.EventType, d.Seq, d.Route)
	fmt.Fprintf(w, "  message id: %s\n", d.MessageID)
	fmt.Fprintf(w, "  created:    %s\n", d.CreatedAt.Local().Format(time.RFC3339))
	if d.NextAt != nil {
		fmt.Fprintf(w, "  next:       %s\n", d.NextAt.Local().Format(time.RFC3339))
	}
	if d.FinishedAt != nil {
		fmt.Fprintf(w, "  finished:   %s\n", d.FinishedAt.Local().Format(time.RFC3339))
	}
	if d.LastError != "" {
		fmt.Fprintf(w, "  last error: %s\n", d.LastError)
	}
	var m struct {
		ContentType string `json:"content_type"`
		Subject     string `json:"subject"`
		Body        string `json:"body"`
	}
	if json.Unmarshal(message, &m) == nil && (m.Body != "" || m.Subject != "") {
		fmt.Fprintf(w, "\nmessage (%s):\n", m.ContentType)
		if m.Subject != "" {
			fmt.Fprintf(w, "  subject: %s\n", m.Subject)
		}
		fmt.Fprintf(w, "  %s\n", shorten(m.Body, 2000))
	}
	fmt.Fprintf(w, "\nattempts (%d):\n", len(attempts))
	for _, raw := range attempts {
		var a struct {
			Number     int         `json:"number"`
			Time       time.Time   `json:"time"`
			DurationMS float64     `json:"duration_ms"`
			StatusCode int         `json:"status_code"`
			Outcome    string      `json:"outcome"`
			Error      string      `json:"error"`
			Header     http.Header `json:"response_headers"`
			Body       string      `json:"response_body"`
		}
		if json.Unmarshal(raw, &a) != nil {
			continue
		}
		code := "-"
		if a.StatusCode != 0 {
			code = strconv.Itoa(a.StatusCode)
		}
		fmt.Fprintf(w, "  #%d %s  %s  %s  %.1f ms", a.Number, a.Time.Local().Format("2006-01-02 15:04:05"), a.Outcome, code, a.DurationMS)
		if a.Error != "" {
			fmt.Fprintf(w, "  %s", a.Error)
		}
		fmt.Fprintln(w)
		if a.Body != "" {
			fmt.Fprintf(w, "      response: %s\n", shorten(a.Body, 200))
		}
	}
}

func newWebhookCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "webhook", Short: "Tools for the receivers of buildbridge's signed webhooks"}
	var secrets []string
	var tolerance time.Duration
	verify := &cobra.Command{
		Use:   "verify --secret whsec_… < request",
		Short: "Read an HTTP request (headers and body) on stdin and say whether its signature holds",
		Long: `Read a received webhook on stdin — the request line (optional), the headers,
an empty line and the body, as a receiver logs it — and check its
Standard Webhooks signature with the secret (give --secret twice during a
rotation). Exit status 0: valid; 1: not valid.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(secrets) == 0 {
				return errors.New("--secret is required")
			}
			header, body, err := readRequest(cmd.InOrStdin())
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			err = webhook.Verify(secrets, header, body, time.Now(), tolerance)
			if err != nil {
				return &exitError{code: 1, err: fmt.Errorf("signature NOT valid: %w", err)}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "signature valid: message %s, signed at %s, %d bytes\n",
				header.Get(webhook.HeaderID), header.Get(webhook.HeaderTimestamp), len(body))
			return nil
		},
	}
	verify.Flags().StringArrayVar(&secrets, "secret", nil, "signing secret (whsec_…); repeat during a rotation")
	verify.Flags().DurationVar(&tolerance, "tolerance", 0, "refuse a timestamp further than this from now (default 0: not checked)")
	secret := &cobra.Command{
		Use:   "secret",
		Short: "Print a new signing secret (whsec_…) for a webhook sink",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), webhook.NewSecret())
		},
	}
	cmd.AddCommand(verify, secret)
	return cmd
}

// maxVerifyBody bounds what webhook verify reads.
const maxVerifyBody = 16 << 20

// readRequest reads headers and body: an HTTP/1.x request with its
// request line, or headers alone, then an empty line and the body.
func readRequest(r io.Reader) (http.Header, []byte, error) {
	br := bufio.NewReader(io.LimitReader(r, maxVerifyBody+64<<10))
	first, err := br.Peek(16)
	if err != nil && len(first) == 0 {
		return nil, nil, errors.New("no request on stdin")
	}
	line := string(first)
	if i := strings.IndexByte(line, ' '); i > 0 && isMethod(line[:i]) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return nil, nil, fmt.Errorf("reading the request: %w", err)
		}
		body, err := io.ReadAll(io.LimitReader(req.Body, maxVerifyBody))
		if err != nil {
			return nil, nil, fmt.Errorf("reading the body: %w", err)
		}
		return req.Header, body, nil
	}
	mh, err := textproto.NewReader(br).ReadMIMEHeader()
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, fmt.Errorf("reading the headers: %w", err)
	}
	limit := int64(maxVerifyBody)
	if cl := mh.Get("Content-Length"); cl != "" {
		// A body pasted with a trailing newline is cut where it ends.
		n, err := strconv.ParseInt(cl, 10, 64)
		if err != nil || n < 0 || n > maxVerifyBody {
			return nil, nil, fmt.Errorf("Content-Length %q is not a size up to %d", cl, maxVerifyBody)
		}
		limit = n
	}
	body, err := io.ReadAll(io.LimitReader(br, limit))
	if err != nil {
		return nil, nil, fmt.Errorf("reading the body: %w", err)
	}
	return http.Header(mh), body, nil
}

func isMethod(s string) bool {
	switch s {
	case "POST", "PUT", "GET", "PATCH", "DELETE":
		return true
	}
	return false
}
