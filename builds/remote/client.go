package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/builds/runner"
)

// BuildRunner runs one build; *runner.Runner is one.
type BuildRunner interface {
	Run(ctx context.Context, spec runner.Spec, log io.Writer) (runner.Outcome, error)
}

// ClientConfig configures a Client.
type ClientConfig struct {
	// URL is the hub's base URL, e.g. http://hub:8080. Required.
	URL string
	// Token is the runner token an admin created. Required.
	Token string
	// Labels narrow the labels of the token's runner; empty means all.
	Labels []string
	// Concurrency is how many builds run at once (default 1).
	Concurrency int
	// Runner runs the builds. Required.
	Runner BuildRunner
	// ArtifactsDir is the Runner's artifacts directory, from which kept
	// files are uploaded. Required.
	ArtifactsDir string
	// Heartbeat is how often a running build's lease is renewed and its
	// cancel request looked for (default 500ms).
	Heartbeat time.Duration
	// PollInterval is how often an idle worker asks for a build (default 1s).
	PollInterval time.Duration
	// LogFlush is how often buffered log output is sent (default 200ms).
	LogFlush   time.Duration
	HTTPClient *http.Client
	Logger     *slog.Logger
}

func (c *ClientConfig) setDefaults() {
	if c.Concurrency == 0 {
		c.Concurrency = 1
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = 500 * time.Millisecond
	}
	if c.PollInterval == 0 {
		c.PollInterval = time.Second
	}
	if c.LogFlush == 0 {
		c.LogFlush = 200 * time.Millisecond
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: 5 * time.Minute}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports a missing or impossible setting.
func (c *ClientConfig) Validate() error {
	u, err := url.Parse(c.URL)
	switch {
	case c.URL == "":
		return errors.New("remote: URL is required")
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return fmt.Errorf("remote: URL %q must be an http or https URL", c.URL)
	case c.Token == "":
		return errors.New("remote: Token is required")
	case c.Runner == nil:
		return errors.New("remote: Runner is required")
	case c.ArtifactsDir == "":
		return errors.New("remote: ArtifactsDir is required")
	case c.Concurrency < 1:
		return fmt.Errorf("remote: Concurrency must be ≥ 1, got %d", c.Concurrency)
	case c.Heartbeat < 10*time.Millisecond:
		return fmt.Errorf("remote: Heartbeat must be ≥ 10ms, got %s", c.Heartbeat)
	case c.PollInterval < 10*time.Millisecond:
		return fmt.Errorf("remote: PollInterval must be ≥ 10ms, got %s", c.PollInterval)
	case c.LogFlush < 10*time.Millisecond:
		return fmt.Errorf("remote: LogFlush must be ≥ 10ms, got %s", c.LogFlush)
	}
	return nil
}

// Client is a remote runner: it claims builds from a hub and runs them.
type Client struct {
	cfg  ClientConfig
	base string
}

// NewClient makes a Client; start it with Run.
func NewClient(cfg ClientConfig) (*Client, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Client{cfg: cfg, base: strings.TrimRight(cfg.URL, "/") + "/runner/v1"}, nil
}

// HubError is a refusal from the hub.
type HubError struct {
	Status  int
	Refusal Error
}

func (e *HubError) Error() string {
	return fmt.Sprintf("hub refused (%d %s): %s", e.Status, e.Refusal.Code, e.Refusal.Message)
}

// ErrRefused wraps the hub errors a runner cannot get past: a bad or
// revoked token. Run returns it.
var ErrRefused = errors.New("runner refused by the hub")

// Causes of a running build's end other than its own.
var (
	errCanceled = errors.New("canceled on request")
	errLost     = errors.New("lease lost")
	errShutdown = errors.New("runner shutting down")
)

func (c *Client) call(ctx context.Context, method, path, lease string, body io.Reader, out any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.cfg.Token)
	if lease != "" {
		req.Header.Set(LeaseHeader, lease)
	}
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		he := &HubError{Status: resp.StatusCode}
		var wrap struct{ Error Error }
		if json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&wrap) == nil {
			he.Refusal = wrap.Error
		}
		if he.Refusal.Code == CodeBadToken || he.Refusal.Code == CodeRevoked {
			return resp.StatusCode, fmt.Errorf("%w: %w", ErrRefused, he)
		}
		return resp.StatusCode, he
	}
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

func isLost(err error) bool {
	var he *HubError
	return errors.As(err, &he) && he.Refusal.Code == CodeLeaseLost
}

// Run claims and runs builds with Concurrency workers until ctx is done,
// or until the hub refuses the token, when it returns an ErrRefused error.
// Builds still running when ctx ends are stopped and left to their lease:
// the hub re-queues or errors them.
func (c *Client) Run(ctx context.Context) error {
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	var wg sync.WaitGroup
	for range c.cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.worker(ctx); err != nil {
				stop(err)
			}
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); errors.Is(err, ErrRefused) {
		return err
	}
	return nil
}

func (c *Client) worker(ctx context.Context) error {
	body, _ := json.Marshal(Claim{Labels: c.cfg.Labels})
	for ctx.Err() == nil {
		var job Job
		status, err := c.call(ctx, http.MethodPost, "/claim", "", bytes.NewReader(body), &job)
		switch {
		case errors.Is(err, ErrRefused):
			c.cfg.Logger.Error("the hub refuses this runner", "err", err)
			return err
		case err != nil && ctx.Err() == nil:
			c.cfg.Logger.Warn("claim failed; retrying", "err", err)
		case err == nil && status == http.StatusOK:
			if err := c.execute(ctx, job); err != nil {
				return err
			}
			continue
		}
		select {
		case <-ctx.Done():
		case <-time.After(c.cfg.PollInterval):
		}
	}
	return nil
}

// execute runs one job; it returns only an ErrRefused error.
func (c *Client) execute(parent context.Context, job Job) error {
	log := c.cfg.Logger.With("build_id", job.BuildID, "project", job.Project, "number", job.Number)
	log.Info("running build")
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	stopParent := context.AfterFunc(parent, func() { cancel(errShutdown) })
	defer stopParent()
	id := strconv.FormatInt(job.BuildID, 10)

	// Heartbeats: renew the lease, learn of a cancel, notice a lost lease.
	// They go on after a cancel, while artifacts upload, until finish.
	hbCtx, hbCancel := context.WithCancel(context.Background())
	defer hbCancel()
	hbDone := make(chan struct{})
	hbStop := make(chan struct{})
	go func() {
		defer close(hbDone)
		t := time.NewTicker(c.cfg.Heartbeat)
		defer t.Stop()
		for {
			select {
			case <-hbStop:
				hbCancel()
				return
			case <-t.C:
			}
			var hb Heartbeat
			_, err := c.call(hbCtx, http.MethodPost, "/builds/"+id+"/heartbeat", job.Lease, nil, &hb)
			switch {
			case errors.Is(err, ErrRefused):
				cancel(fmt.Errorf("%w: %w", errLost, err))
				return
			case isLost(err):
				log.Error("lease lost; stopping the build", "err", err)
				cancel(errLost)
				return
			case err != nil:
				log.Warn("heartbeat failed", "err", err)
			case hb.CancelRequested:
				cancel(errCanceled)
			}
		}
	}()

	lw := &logSender{c: c, id: id, lease: job.Lease, log: log, onLost: func(err error) { cancel(fmt.Errorf("%w: %w", errLost, err)) },
		stop: make(chan struct{}), done: make(chan struct{})}
	go lw.loop(c.cfg.LogFlush)
	spec := runner.Spec{BuildID: job.BuildID, Repo: job.Repo, SHA: job.SHA, Ref: job.Ref, Steps: job.Steps,
		Timeout: time.Duration(job.TimeoutMS) * time.Millisecond, Env: job.Env}
	out, err := c.cfg.Runner.Run(ctx, spec, lw)
	lw.close()
	if err != nil {
		out = runner.Outcome{Result: builds.Errored, Reason: "runner failure: " + err.Error()}
	}
	cause := context.Cause(ctx)
	switch {
	case errors.Is(cause, errShutdown):
		close(hbStop)
		<-hbDone
		log.Warn("runner stopped while the build was running; the hub takes it back when the lease ends")
		return nil
	case errors.Is(cause, errLost):
		close(hbStop)
		<-hbDone
		if errors.Is(cause, ErrRefused) {
			return cause
		}
		return nil
	case errors.Is(cause, errCanceled) && out.Result != builds.Passed:
		out.Result = builds.Canceled
	}
	// Keep heartbeating while artifacts upload: that may take longer
	// than a lease.
	arts, err := c.uploadArtifacts(hbCtx, id, job.Lease, out.Artifacts)
	if err != nil {
		log.Error("artifact upload failed", "err", err)
		if out.Result == builds.Passed {
			out.Result, out.Reason = builds.Errored, "artifact upload failed: "+err.Error()
		}
	}
	body, _ := json.Marshal(Finish{Result: out.Result, Reason: out.Reason, Artifacts: arts})
	// A hub that cannot be reached or fails (5xx) is tried again while the
	// heartbeats keep the lease; a refusal is final.
	for attempt := 1; ; attempt++ {
		_, err = c.call(context.Background(), http.MethodPost, "/builds/"+id+"/finish", job.Lease, bytes.NewReader(body), nil)
		var he *HubError
		if err == nil || (errors.As(err, &he) && he.Status < 500) || attempt == 5 {
			break
		}
		log.Warn("report finished build; retrying", "err", err, "attempt", attempt)
		time.Sleep(time.Duration(attempt) * 500 * time.Millisecond)
	}
	close(hbStop)
	<-hbDone
	switch {
	case errors.Is(err, ErrRefused):
		return err
	case err != nil:
		log.Error("report finished build", "err", err)
	default:
		log.Info("build finished", "result", out.Result, "reason", out.Reason)
	}
	return nil
}

func (c *Client) uploadArtifacts(ctx context.Context, id, lease string, list []runner.Artifact) ([]Artifact, error) {
	var done []Artifact
	dir := filepath.Join(c.cfg.ArtifactsDir, id)
	for _, a := range list {
		f, err := os.Open(filepath.Join(dir, filepath.FromSlash(a.Path)))
		if err != nil {
			return done, err
		}
		var got Artifact
		req := (&url.URL{Path: a.Path}).EscapedPath()
		_, err = c.call(ctx, http.MethodPut, "/builds/"+id+"/artifacts/"+req, lease, f, &got)
		f.Close()
		if err != nil {
			return done, fmt.Errorf("upload %s: %w", a.Path, err)
		}
		if got.SHA256 != a.SHA256 {
			return done, fmt.Errorf("upload %s: the hub got digest %s, the file has %s", a.Path, got.SHA256, a.SHA256)
		}
		done = append(done, got)
	}
	return done, nil
}

// logSender buffers a build's log and sends it to the hub every flush
// interval, so the dashboard sees it as it happens.
type logSender struct {
	c      *Client
	id     string
	lease  string
	log    *slog.Logger
	onLost func(error)

	mu   sync.Mutex
	buf  bytes.Buffer
	stop chan struct{}
	done chan struct{}
}

func (w *logSender) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *logSender) loop(every time.Duration) {
	defer close(w.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			w.flush()
			return
		case <-t.C:
			w.flush()
		}
	}
}

func (w *logSender) flush() {
	w.mu.Lock()
	chunk := bytes.Clone(w.buf.Bytes())
	w.buf.Reset()
	w.mu.Unlock()
	for len(chunk) > 0 {
		n := min(len(chunk), 512<<10)
		_, err := w.c.call(context.Background(), http.MethodPost, "/builds/"+w.id+"/log", w.lease, bytes.NewReader(chunk[:n]), nil)
		if isLost(err) || errors.Is(err, ErrRefused) {
			w.onLost(err)
			return
		}
		if err != nil {
			w.log.Warn("log chunk not sent", "err", err, "bytes", n)
		}
		chunk = chunk[n:]
	}
}

func (w *logSender) close() {
	close(w.stop)
	<-w.done
}
