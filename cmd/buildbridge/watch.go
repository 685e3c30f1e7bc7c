package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/spf13/cobra"

	"github.com/buildbridge/buildbridge/event"
)

func init() { subcommands = append(subcommands, newWatchCmd) }

func newWatchCmd() *cobra.Command {
	var o watchOptions
	cmd := &cobra.Command{
		Use:   "watch [--url URL] [--token TOKEN] [--json] [--notify]",
		Short: "Print your builds as they change, live, over the realtime channel",
		Long: "watch reads your channel from the API, subscribes to it with the Pusher protocol and prints one line\n" +
			"per build change. It reconnects with backoff when the connection drops, and says so on stderr.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.url == "" {
				o.url = getenv("BUILDBRIDGE_URL")
			}
			if o.token == "" {
				o.token = getenv("BUILDBRIDGE_TOKEN")
			}
			if o.url == "" {
				o.url = "http://127.0.0.1:8080"
			}
			if o.token == "" {
				return errors.New("a token is required: --token or BUILDBRIDGE_TOKEN")
			}
			o.url = strings.TrimRight(o.url, "/")
			return o.run(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&o.url, "url", "", "hub URL (env BUILDBRIDGE_URL, default http://127.0.0.1:8080)")
	cmd.Flags().StringVar(&o.token, "token", "", "API token (env BUILDBRIDGE_TOKEN)")
	cmd.Flags().BoolVar(&o.json, "json", false, "print each event as one line of JSON")
	cmd.Flags().BoolVar(&o.notify, "notify", false, "also show a desktop notification for finished builds (notify-send or osascript)")
	cmd.Flags().StringVar(&o.project, "project", "", "only this project's builds")
	return cmd
}

type watchOptions struct {
	url, token, project string
	json, notify        bool
}

// channelInfo is GET /api/v1/user/channel.
type channelInfo struct {
	Key          string `json:"key"`
	Channel      string `json:"channel"`
	WSHost       string `json:"ws_host"`
	WSPort       int    `json:"ws_port"`
	ForceTLS     bool   `json:"force_tls"`
	AuthEndpoint string `json:"auth_endpoint"`
}

// errPermanent marks failures that reconnecting cannot mend.
type errPermanent struct{ error }

func (o *watchOptions) run(ctx context.Context, out, errOut io.Writer) error {
	backoff := time.Second
	for {
		start := time.Now()
		err := o.session(ctx, out, errOut)
		if ctx.Err() != nil {
			return nil
		}
		var perm errPermanent
		if errors.As(err, &perm) {
			return perm.error
		}
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		fmt.Fprintf(errOut, "watch: %v; reconnecting in %s\n", err, backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

func (o *watchOptions) apiRequest(ctx context.Context, method, path string, body io.Reader, ctype string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, o.url+path, body)
	if err != nil {
		return nil, errPermanent{err}
	}
	req.Header.Set("Authorization", "Bearer "+o.token)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		var e struct {
			Error struct{ Message string } `json:"error"`
		}
		msg := strings.TrimSpace(string(raw))
		if json.Unmarshal(raw, &e) == nil && e.Error.Message != "" {
			msg = e.Error.Message
		}
		err := fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, msg)
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			return nil, errPermanent{err}
		}
		return nil, err
	}
	return resp, nil
}

// session connects once and prints events until the connection ends.
func (o *watchOptions) session(ctx context.Context, out, errOut io.Writer) error {
	resp, err := o.apiRequest(ctx, "GET", "/api/v1/user/channel", nil, "")
	if err != nil {
		return err
	}
	var info channelInfo
	err = json.NewDecoder(resp.Body).Decode(&info)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("channel info: %w", err)
	}
	scheme := "ws"
	if info.ForceTLS {
		scheme = "wss"
	}
	wsURL := fmt.Sprintf("%s://%s:%d/app/%s?protocol=7&client=buildbridge-watch&version=%s", scheme, info.WSHost, info.WSPort, url.PathEscape(info.Key), version)
	conn, _, err := websocket.Dial(ctx, wsURL, nil)
	if err != nil {
		return fmt.Errorf("connect %s: %w", wsURL, err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(1 << 20)

	type frame struct {
		Event   string `json:"event"`
		Channel string `json:"channel"`
		Data    string `json:"data"`
	}
	read := func() (frame, error) {
		var f frame
		_, raw, err := conn.Read(ctx)
		if err != nil {
			return f, err
		}
		var generic struct {
			Event   string          `json:"event"`
			Channel string          `json:"channel"`
			Data    json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(raw, &generic); err != nil {
			return f, fmt.Errorf("bad frame: %w", err)
		}
		f.Event, f.Channel = generic.Event, generic.Channel
		// data is a JSON string in Pusher frames, but tolerate an object.
		if json.Unmarshal(generic.Data, &f.Data) != nil {
			f.Data = string(generic.Data)
		}
		return f, nil
	}
	send := func(ev string, data any) error {
		raw, _ := json.Marshal(map[string]any{"event": ev, "data": data})
		return conn.Write(ctx, websocket.MessageText, raw)
	}
	f, err := read()
	if err != nil {
		return err
	}
	if f.Event != "pusher:connection_established" {
		return fmt.Errorf("server said %s %s", f.Event, f.Data)
	}
	var est struct {
		SocketID        string `json:"socket_id"`
		ActivityTimeout int    `json:"activity_timeout"`
	}
	json.Unmarshal([]byte(f.Data), &est)
	form := url.Values{"socket_id": {est.SocketID}, "channel_name": {info.Channel}}.Encode()
	resp, err = o.apiRequest(ctx, "POST", info.AuthEndpoint, strings.NewReader(form), "application/x-www-form-urlencoded")
	if err != nil {
		return fmt.Errorf("channel auth: %w", err)
	}
	var auth struct {
		Auth string `json:"auth"`
	}
	err = json.NewDecoder(resp.Body).Decode(&auth)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("channel auth: %w", err)
	}
	if err := send("pusher:subscribe", map[string]string{"channel": info.Channel, "auth": auth.Auth}); err != nil {
		return err
	}
	// Keep the connection alive: ping when the server's activity timeout
	// passes without traffic from us.
	idle := time.Duration(max(est.ActivityTimeout, 10)) * time.Second
	pingCtx, stopPing := context.WithCancel(ctx)
	defer stopPing()
	go func() {
		t := time.NewTicker(idle)
		defer t.Stop()
		for {
			select {
			case <-pingCtx.Done():
				return
			case <-t.C:
				send("pusher:ping", map[string]string{})
			}
		}
	}()
	for {
		f, err := read()
		if err != nil {
			return err
		}
		switch f.Event {
		case "pusher:ping":
			send("pusher:pong", map[string]string{})
		case "pusher_internal:subscription_succeeded":
			fmt.Fprintf(errOut, "watch: subscribed to %s\n", f.Channel)
		case "pusher:subscription_error", "pusher:error":
			return errPermanent{fmt.Errorf("%s: %s", f.Event, f.Data)}
		case event.TypeBuildStateChanged:
			var ev event.Envelope
			if err := json.Unmarshal([]byte(f.Data), &ev); err != nil || ev.Build == nil {
				fmt.Fprintf(errOut, "watch: unreadable event: %v\n", err)
				continue
			}
			if o.project != "" && (ev.Job == nil || ev.Job.Name != o.project) {
				continue
			}
			if o.json {
				fmt.Fprintln(out, f.Data)
			} else {
				fmt.Fprintln(out, describeEvent(ev))
			}
			if o.notify && ev.Build.State == "FINISHED" {
				desktopNotify(ctx, describeEvent(ev))
			}
		}
	}
}

// describeEvent is one human line: "✓ app #42 main passed in 1m12s".
func describeEvent(ev event.Envelope) string {
	b := ev.Build
	name := "?"
	if ev.Job != nil {
		name = ev.Job.Name
	}
	symbol := map[string]string{"queued": "…", "started": "▶", "passed": "✓", "fixed": "✓", "failed": "✗",
		"broken": "✗", "still_failing": "✗", "errored": "!", "canceled": "⊘"}[string(b.Status)]
	branch := b.Branch
	if branch == "" {
		branch = b.Ref
	}
	line := fmt.Sprintf("%s %s #%d %s %s", symbol, name, b.Number, branch, strings.ReplaceAll(string(b.Status), "_", " "))
	if b.DurationMS != nil {
		line += " in " + (time.Duration(*b.DurationMS) * time.Millisecond).Round(time.Second).String()
	}
	if b.State != "FINISHED" && len(b.SHA) >= 7 {
		msg, _, _ := strings.Cut(b.Message, "\n")
		line += fmt.Sprintf(" (%s %s)", b.SHA[:7], strconv.Quote(msg))
	}
	if b.Reason != "" && b.Status != "passed" && b.Status != "fixed" {
		line += ": " + b.Reason
	}
	return line
}

func desktopNotify(ctx context.Context, text string) {
	var cmd *exec.Cmd
	switch {
	case runtime.GOOS == "darwin":
		cmd = exec.CommandContext(ctx, "osascript", "-e", "display notification "+strconv.Quote(text)+" with title \"buildbridge\"")
	default:
		if _, err := exec.LookPath("notify-send"); err != nil {
			return
		}
		cmd = exec.CommandContext(ctx, "notify-send", "buildbridge", text)
	}
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "watch: notification failed:", err)
	}
}
