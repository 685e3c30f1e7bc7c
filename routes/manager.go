package routes

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ManagerConfig configures a Manager.
type ManagerConfig struct {
	// Path is the rules file; empty means the built-in rules only (the
	// implicit user-channel delivery), and Reload does nothing.
	Path string
	// Options are passed to Load on every (re)load.
	Options Options
	// PollInterval is how often Watch looks at the file (default 1s).
	PollInterval time.Duration
	// OnChange, when set, is what Watch calls once a change of the file
	// has settled, instead of Reload: the owner reloads and applies the
	// new rules (reconfigures its sinks) in one place.
	OnChange func()
	Logger   *slog.Logger
	// Registerer receives the reload metrics when set.
	Registerer prometheus.Registerer
}

func (c *ManagerConfig) setDefaults() {
	if c.PollInterval == 0 {
		c.PollInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Options.Logger == nil {
		c.Options.Logger = c.Logger
	}
}

// Validate reports an impossible setting.
func (c *ManagerConfig) Validate() error {
	if c.PollInterval < 10*time.Millisecond {
		return fmt.Errorf("routes: PollInterval must be ≥ 10ms, got %s", c.PollInterval)
	}
	return nil
}

// Manager holds the rules in force. Current is one atomic load, so each
// event is matched against exactly one version of the rules, whatever
// reloads happen meanwhile; a reload never stops or repeats a match.
type Manager struct {
	cfg     ManagerConfig
	current atomic.Pointer[Rules]

	mu      sync.Mutex // serializes reloads
	loaded  fingerprint
	lastErr error

	success  prometheus.Gauge
	failures prometheus.Counter
	lastOK   prometheus.Gauge
}

// fingerprint identifies a version of the file's content.
type fingerprint struct {
	size  int64
	mtime time.Time
	sum   [sha256.Size]byte
	ok    bool
}

// NewManager loads the rules file and returns a manager holding them. A
// file with errors is refused (the server should not start on rules it
// cannot read).
func NewManager(cfg ManagerConfig) (*Manager, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg}
	m.success = prometheus.NewGauge(prometheus.GaugeOpts{Name: "buildbridge_rules_reload_success",
		Help: "1 when the last load of the rules file succeeded, 0 when it was refused (the previous rules stay in force)."})
	m.failures = prometheus.NewCounter(prometheus.CounterOpts{Name: "buildbridge_rules_reload_failures_total",
		Help: "Loads of the rules file refused because of errors."})
	m.lastOK = prometheus.NewGauge(prometheus.GaugeOpts{Name: "buildbridge_rules_last_reload_success_timestamp_seconds",
		Help: "When the rules in force were loaded."})
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{m.success, m.failures, m.lastOK} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("routes metrics: %w", err)
			}
		}
	}
	if cfg.Path == "" {
		m.current.Store(Builtin())
		m.success.Set(1)
		m.lastOK.SetToCurrentTime()
		return m, nil
	}
	if err := m.Reload(); err != nil {
		return nil, err
	}
	return m, nil
}

// Current returns the rules in force. It never returns nil.
func (m *Manager) Current() *Rules { return m.current.Load() }

// LastError is the error of the last reload, nil when it succeeded.
func (m *Manager) LastError() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lastErr
}

// Reload loads the rules file again. When the file has errors the rules
// in force stay, the error is logged, counted and returned (an Errors
// value listing every problem).
func (m *Manager) Reload() error {
	if m.cfg.Path == "" {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	fp, data, err := m.read()
	var r *Rules
	if err == nil {
		opts := m.cfg.Options
		if opts.Dir == "" {
			opts.Dir = filepath.Dir(m.cfg.Path)
		}
		r, err = Parse(m.cfg.Path, data, opts)
	} else {
		err = Errors{{File: m.cfg.Path, Message: err.Error()}}
	}
	m.loaded = fp
	m.lastErr = err
	if err != nil {
		m.success.Set(0)
		m.failures.Inc()
		old := "none"
		if cur := m.current.Load(); cur != nil {
			old = cur.Summary()
		}
		m.cfg.Logger.Error("rules: file refused; the previous rules stay in force",
			"file", m.cfg.Path, "in_force", old, "errors", err.Error())
		return err
	}
	m.current.Store(r)
	m.success.Set(1)
	m.lastOK.SetToCurrentTime()
	m.cfg.Logger.Info("rules: loaded", "summary", r.Summary())
	for _, w := range r.Warnings() {
		m.cfg.Logger.Warn("rules: " + w)
	}
	return nil
}

// read reads the file with its fingerprint.
func (m *Manager) read() (fingerprint, []byte, error) {
	fi, err := os.Stat(m.cfg.Path)
	if err != nil {
		return fingerprint{}, nil, fmt.Errorf("cannot read the rules file: %w", err)
	}
	data, err := readRules(m.cfg.Path)
	if err != nil {
		return fingerprint{}, nil, err
	}
	return fingerprint{size: fi.Size(), mtime: fi.ModTime(), sum: sha256.Sum256(data), ok: true}, data, nil
}

// Watch reloads the rules when the file changes, until ctx ends. It polls
// the file's size, modification time and content hash every
// PollInterval, and reloads once a change has held still for one poll, so
// that a file being written is not loaded half-way.
func (m *Manager) Watch(ctx context.Context) error {
	if m.cfg.Path == "" {
		<-ctx.Done()
		return nil
	}
	tick := time.NewTicker(m.cfg.PollInterval)
	defer tick.Stop()
	var pending fingerprint
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		fp, _, err := m.read()
		if err != nil {
			fp = fingerprint{}
		}
		m.mu.Lock()
		same := fp.equal(m.loaded)
		m.mu.Unlock()
		if same {
			pending = fingerprint{}
			continue
		}
		if !fp.equal(pending) {
			pending = fp // changed: wait one more poll for it to settle
			continue
		}
		pending = fingerprint{}
		if m.cfg.OnChange != nil {
			m.cfg.OnChange()
			continue
		}
		_ = m.Reload() // it logs and counts its errors itself

	}
}

func (a fingerprint) equal(b fingerprint) bool {
	return a.ok == b.ok && a.size == b.size && a.mtime.Equal(b.mtime) && bytes.Equal(a.sum[:], b.sum[:])
}
