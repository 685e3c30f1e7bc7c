package remote

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/store"
)

// HubConfig configures a Hub.
type HubConfig struct {
	Store *store.DB
	// ArtifactsDir is the hub's artifacts directory: uploads land in
	// ArtifactsDir/<build id>/<path>, where the API serves them. Required.
	ArtifactsDir string
	// MaxArtifactBytes caps the artifacts uploaded for one build
	// (default 100 MiB).
	MaxArtifactBytes int64
	// MaxLogChunk caps one log upload (default 1 MiB).
	MaxLogChunk int64
	// LeaseTTL is how long a lease lasts without a heartbeat (default 5s).
	LeaseTTL time.Duration
	// ReapInterval is how often expired leases are looked for (default 1s).
	ReapInterval time.Duration
	// Requeue re-queues the build of a lost lease instead of finishing it
	// as errored (the on_restart setting).
	Requeue bool
	// BuildURL prefixes a build id to make its link.
	BuildURL string
	// OnLog, when set, sees every stored log chunk (build-log events).
	OnLog      func(p builds.Project, b builds.Build, offset int64, chunk []byte)
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

func (c *HubConfig) setDefaults() {
	if c.MaxArtifactBytes == 0 {
		c.MaxArtifactBytes = 100 << 20
	}
	if c.MaxLogChunk == 0 {
		c.MaxLogChunk = 1 << 20
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 5 * time.Second
	}
	if c.ReapInterval == 0 {
		c.ReapInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports a missing or impossible setting.
func (c *HubConfig) Validate() error {
	switch {
	case c.Store == nil:
		return errors.New("remote: Store is required")
	case c.ArtifactsDir == "":
		return errors.New("remote: ArtifactsDir is required")
	case c.MaxArtifactBytes < 0:
		return fmt.Errorf("remote: MaxArtifactBytes must not be negative, got %d", c.MaxArtifactBytes)
	case c.MaxLogChunk < 1:
		return fmt.Errorf("remote: MaxLogChunk must be positive, got %d", c.MaxLogChunk)
	case c.LeaseTTL < 100*time.Millisecond:
		return fmt.Errorf("remote: LeaseTTL must be ≥ 100ms, got %s", c.LeaseTTL)
	case c.ReapInterval < 10*time.Millisecond:
		return fmt.Errorf("remote: ReapInterval must be ≥ 10ms, got %s", c.ReapInterval)
	}
	return nil
}

// Hub serves the runner protocol and reaps expired leases.
type Hub struct {
	cfg     HubConfig
	mux     *http.ServeMux
	claims  prometheus.Counter
	reaped  *prometheus.CounterVec
	waiting *prometheus.GaugeVec
}

// NewHub makes a Hub; serve it under /runner/v1/ and run RunReaper.
func NewHub(cfg HubConfig) (*Hub, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	h := &Hub{cfg: cfg, mux: http.NewServeMux()}
	h.claims = prometheus.NewCounter(prometheus.CounterOpts{Name: "buildbridge_runner_claims_total", Help: "Builds handed to remote runners."})
	h.reaped = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "buildbridge_runner_leases_lost_total",
		Help: "Leases of remote runners that expired, by what became of the build."}, []string{"outcome"})
	h.waiting = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "buildbridge_builds_waiting_for_labels",
		Help: "Queued builds that need runner labels, by label set (updated by the reaper)."}, []string{"labels"})
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{h.claims, h.reaped, h.waiting} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("remote metrics: %w", err)
			}
		}
	}
	h.mux.HandleFunc("POST /runner/v1/claim", h.auth(h.claim))
	h.mux.HandleFunc("POST /runner/v1/builds/{id}/heartbeat", h.auth(h.leased(h.heartbeat)))
	h.mux.HandleFunc("POST /runner/v1/builds/{id}/log", h.auth(h.leased(h.appendLog)))
	h.mux.HandleFunc("PUT /runner/v1/builds/{id}/artifacts/{path...}", h.auth(h.leased(h.upload)))
	h.mux.HandleFunc("POST /runner/v1/builds/{id}/finish", h.auth(h.leased(h.finish)))
	h.mux.HandleFunc("/runner/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no runner endpoint "+r.Method+" "+r.URL.Path)
	})
	return h, nil
}

// ServeHTTP serves the runner protocol.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]Error{"error": {Code: code, Message: msg}})
}

// fail writes err with the status its kind calls for.
func (h *Hub) fail(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, store.ErrLeaseLost):
		writeError(w, http.StatusConflict, CodeLeaseLost, err.Error()+": this runner no longer holds the build; drop it")
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, builds.ErrTransition):
		writeError(w, http.StatusConflict, "invalid_transition", err.Error())
	default:
		h.cfg.Logger.Error("runner request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusInternalServerError, "internal", "internal error; the server log has the details")
	}
}

type runnerKey struct{}

// auth checks the runner token on every call: a revoked runner is refused
// at its next call, whatever it holds.
func (h *Hub) auth(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			writeError(w, http.StatusUnauthorized, CodeBadToken, "a runner token is required: Authorization: Bearer <runner token>")
			return
		}
		rn, err := h.cfg.Store.RunnerByToken(r.Context(), tok)
		switch {
		case errors.Is(err, store.ErrRunnerRevoked):
			writeError(w, http.StatusForbidden, CodeRevoked, err.Error()+"; an admin must create a new token")
			return
		case errors.Is(err, store.ErrBadRunnerToken):
			writeError(w, http.StatusUnauthorized, CodeBadToken, "unknown runner token")
			return
		case err != nil:
			h.fail(w, r, err)
			return
		}
		next(w, r.WithContext(context.WithValue(r.Context(), runnerKey{}, rn)))
	}
}

// leased checks the build id and the lease token of a call about a build.
func (h *Hub) leased(next func(w http.ResponseWriter, r *http.Request, id int64, lease string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
		if err != nil || id <= 0 {
			writeError(w, http.StatusBadRequest, "invalid_build_id", fmt.Sprintf("build id %q is not a positive integer", r.PathValue("id")))
			return
		}
		lease := r.Header.Get(LeaseHeader)
		if lease == "" || len(lease) > 128 {
			writeError(w, http.StatusBadRequest, "invalid_lease", "the "+LeaseHeader+" header must hold the lease token of the claim")
			return
		}
		next(w, r, id, lease)
	}
}

func (h *Hub) claim(w http.ResponseWriter, r *http.Request) {
	rn := r.Context().Value(runnerKey{}).(store.Runner)
	var c Claim
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, "invalid_json", "claim body: "+err.Error())
		return
	}
	asked, err := store.NormalizeLabels(c.Labels)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_labels", err.Error())
		return
	}
	// A runner has the labels its token was created with; if it names
	// some, it is limited to those of them it names.
	labels := rn.Labels
	if len(asked) > 0 {
		labels = nil
		for _, l := range asked {
			if hasLabel(rn.Labels, l) {
				labels = append(labels, l)
			}
		}
	}
	b, lease, err := h.cfg.Store.ClaimForRunner(r.Context(), rn.ID, labels, h.cfg.LeaseTTL)
	if errors.Is(err, store.ErrNotFound) {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	p, err := h.cfg.Store.ProjectByID(r.Context(), b.ProjectID)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.claims.Inc()
	h.cfg.Logger.Info("build claimed by runner", "build_id", b.ID, "runner", rn.Name)
	writeJSON(w, http.StatusOK, Job{BuildID: b.ID, Number: b.Number, Project: p.Name, Lease: lease.Token,
		LeaseTTL: h.cfg.LeaseTTL.Milliseconds(), Repo: p.Repo, SHA: b.SHA, Ref: b.Ref, Steps: p.Steps,
		TimeoutMS: p.Timeout.Milliseconds(), Env: builds.Env(b, p, h.cfg.BuildURL)})
}

func hasLabel(have []string, l string) bool {
	for _, h := range have {
		if h == l {
			return true
		}
	}
	return false
}

func (h *Hub) heartbeat(w http.ResponseWriter, r *http.Request, id int64, lease string) {
	cancel, err := h.cfg.Store.RenewLease(r.Context(), id, lease, h.cfg.LeaseTTL)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, Heartbeat{CancelRequested: cancel})
}

func (h *Hub) appendLog(w http.ResponseWriter, r *http.Request, id int64, lease string) {
	chunk, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.cfg.MaxLogChunk))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("a log chunk is at most %d bytes: %v", h.cfg.MaxLogChunk, err))
		return
	}
	if err := h.cfg.Store.CheckLease(r.Context(), id, lease); err != nil {
		h.fail(w, r, err)
		return
	}
	size, err := h.cfg.Store.AppendLog(r.Context(), id, chunk)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if h.cfg.OnLog != nil && len(chunk) > 0 {
		b, err := h.cfg.Store.Build(r.Context(), id)
		if err == nil {
			var p builds.Project
			if p, err = h.cfg.Store.ProjectByID(r.Context(), b.ProjectID); err == nil {
				h.cfg.OnLog(p, b, size-int64(len(chunk)), chunk)
			}
		}
		if err != nil {
			h.cfg.Logger.Warn("log chunk stored but not published", "build_id", id, "err", err)
		}
	}
	writeJSON(w, http.StatusOK, map[string]int64{"size": size})
}

// cleanArtifactPath accepts a slash-separated relative path that stays
// inside the build's directory.
func cleanArtifactPath(p string) (string, error) {
	if p == "" || len(p) > 1024 || strings.ContainsRune(p, 0) || strings.Contains(p, "\\") {
		return "", fmt.Errorf("artifact path %q: must be 1 to 1024 characters, without NUL or backslash", p)
	}
	c := path.Clean(p)
	if c != p || !filepath.IsLocal(filepath.FromSlash(c)) {
		return "", fmt.Errorf("artifact path %q: must be relative, clean and inside the build's directory", p)
	}
	return c, nil
}

func (h *Hub) upload(w http.ResponseWriter, r *http.Request, id int64, lease string) {
	rel, err := cleanArtifactPath(r.PathValue("path"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_path", err.Error())
		return
	}
	if r.ContentLength > h.cfg.MaxArtifactBytes {
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("artifact %s is %d bytes; the limit is %d", rel, r.ContentLength, h.cfg.MaxArtifactBytes))
		return
	}
	if err := h.cfg.Store.CheckLease(r.Context(), id, lease); err != nil {
		h.fail(w, r, err)
		return
	}
	// The cap is per build: what other files of the build already hold
	// counts against it.
	used, err := dirSize(filepath.Join(h.cfg.ArtifactsDir, strconv.FormatInt(id, 10)), rel)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	left := h.cfg.MaxArtifactBytes - used
	if left < 0 || r.ContentLength > left {
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("artifact %s: the build's artifacts would pass the limit of %d bytes (%d used)", rel, h.cfg.MaxArtifactBytes, used))
		return
	}
	a, err := h.writeArtifact(id, rel, http.MaxBytesReader(w, r.Body, left))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("artifact %s: the build's artifacts pass the limit of %d bytes", rel, h.cfg.MaxArtifactBytes))
		return
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

// dirSize sums the sizes of the regular files under dir but skip (a
// slash-separated path inside it, about to be replaced); a missing dir is
// empty.
func dirSize(dir, skip string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil || d.IsDir() {
			return err
		}
		if rel, _ := filepath.Rel(dir, p); filepath.ToSlash(rel) == skip {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			n += info.Size()
		}
		return nil
	})
	return n, err
}

// writeArtifact writes through os.Root, so no path or symlink leads out
// of the build's directory.
func (h *Hub) writeArtifact(id int64, rel string, body io.Reader) (Artifact, error) {
	dir := filepath.Join(h.cfg.ArtifactsDir, strconv.FormatInt(id, 10))
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return Artifact{}, fmt.Errorf("artifacts of build %d: %w", id, err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return Artifact{}, fmt.Errorf("artifacts of build %d: %w", id, err)
	}
	defer root.Close()
	if d := path.Dir(rel); d != "." {
		if err := root.MkdirAll(d, 0o750); err != nil {
			return Artifact{}, fmt.Errorf("artifact %s of build %d: %w", rel, id, err)
		}
	}
	tmp := rel + ".upload"
	f, err := root.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return Artifact{}, fmt.Errorf("artifact %s of build %d: %w", rel, id, err)
	}
	sum := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, sum), body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = root.Rename(tmp, rel)
	}
	if err != nil {
		root.Remove(tmp)
		return Artifact{}, fmt.Errorf("artifact %s of build %d: %w", rel, id, err)
	}
	return Artifact{Path: rel, Size: n, SHA256: hex.EncodeToString(sum.Sum(nil))}, nil
}

func (h *Hub) finish(w http.ResponseWriter, r *http.Request, id int64, lease string) {
	var f Finish
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_json", "finish body: "+err.Error())
		return
	}
	if !f.Result.Valid() {
		writeError(w, http.StatusBadRequest, "invalid_result", fmt.Sprintf("result %q is not one of passed, failed, errored, canceled", f.Result))
		return
	}
	// Only files the hub holds are recorded, with the size and digest it
	// computed itself.
	dir := filepath.Join(h.cfg.ArtifactsDir, strconv.FormatInt(id, 10))
	arts := make([]store.Artifact, 0, len(f.Artifacts))
	for _, a := range f.Artifacts {
		rel, err := cleanArtifactPath(a.Path)
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid_path", err.Error())
			return
		}
		got, err := hashFile(dir, rel)
		if err != nil {
			writeError(w, http.StatusBadRequest, "missing_artifact", fmt.Sprintf("artifact %s was not uploaded: %v", rel, err))
			return
		}
		arts = append(arts, store.Artifact{Path: rel, Size: got.Size, SHA256: got.SHA256})
	}
	b, err := h.cfg.Store.FinishLeased(r.Context(), id, lease, f.Result, f.Reason, arts)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.cfg.Logger.Info("remote build finished", "build_id", id, "result", b.Result, "reason", b.Reason)
	writeJSON(w, http.StatusOK, map[string]any{"state": b.State, "result": b.Result})
}

func hashFile(dir, rel string) (Artifact, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return Artifact{}, err
	}
	defer root.Close()
	f, err := root.Open(rel)
	if err != nil {
		return Artifact{}, err
	}
	defer f.Close()
	sum := sha256.New()
	n, err := io.Copy(sum, f)
	if err != nil {
		return Artifact{}, err
	}
	return Artifact{Path: rel, Size: n, SHA256: hex.EncodeToString(sum.Sum(nil))}, nil
}

// RunReaper takes back expired leases every ReapInterval until ctx is
// done: each build is re-queued or finished as errored, with a reason
// naming the runner. Several hub nodes may run it: a lease is reclaimed
// once.
func (h *Hub) RunReaper(ctx context.Context) error {
	t := time.NewTicker(h.cfg.ReapInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := h.Reap(ctx); err != nil && ctx.Err() == nil {
			h.cfg.Logger.Error("reap leases", "err", err)
		}
	}
}

// Reap takes back the leases that have expired, and refreshes the
// waiting-for-labels gauge.
func (h *Hub) Reap(ctx context.Context) error {
	if w, err := h.cfg.Store.WaitingForLabels(ctx); err == nil {
		h.waiting.Reset()
		for l, n := range w {
			h.waiting.WithLabelValues(l).Set(float64(n))
		}
	}
	leases, err := h.cfg.Store.ExpiredLeases(ctx, 100)
	if err != nil {
		return err
	}
	for _, l := range leases {
		reason := fmt.Sprintf("runner %q lost its lease: no heartbeat since %s", l.RunnerName, l.ExpiresAt.Add(-h.cfg.LeaseTTL).Format(time.RFC3339))
		b, err := h.cfg.Store.ReclaimLease(ctx, l, h.cfg.Requeue, reason)
		if errors.Is(err, store.ErrLeaseLost) || errors.Is(err, builds.ErrTransition) {
			continue // renewed, finished or reclaimed by another node meanwhile
		}
		if err != nil {
			return err
		}
		outcome := "errored"
		if h.cfg.Requeue {
			outcome = "requeued"
		}
		h.reaped.WithLabelValues(outcome).Inc()
		h.cfg.Logger.Warn("runner lease lost", "build_id", b.ID, "runner_id", l.RunnerID, "outcome", outcome)
	}
	return nil
}
