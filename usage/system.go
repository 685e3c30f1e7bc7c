package usage

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/buildbridge/buildbridge/routes"
)

// Figures are the figures of one sample of the hub; the rules' alerts
// read them, the private-system channel carries them.
type Figures = routes.SystemFigures

// Outside are the figures of the hub that the Meter does not see.
// Counters only grow (a decrease is taken for a restart of the counter).
type Outside struct {
	// BuildsFinished counts the builds finished so far.
	BuildsFinished int64
	BuildsRunning  int64
	// QueueDepth is how many builds wait to run.
	QueueDepth int64
	// DeliveryFailures counts the failed delivery attempts so far.
	DeliveryFailures int64
	// DeliveryBacklog is how many deliveries wait for an attempt.
	DeliveryBacklog int64
	// Connections are the open realtime connections.
	Connections int64
}

// SystemConfig configures a System.
type SystemConfig struct {
	// Meter counts the API requests (required).
	Meter *Meter
	// Outside reads the rest of the hub's figures; nil leaves them 0.
	Outside func(ctx context.Context) (Outside, error)
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Validate reports a missing setting.
func (c *SystemConfig) Validate() error {
	if c.Meter == nil {
		return errors.New("usage: SystemConfig.Meter is required")
	}
	return nil
}

// System samples the hub's figures: each sample covers the time since
// the previous one.
type System struct {
	cfg SystemConfig

	mu       sync.Mutex
	prev     sysTotals
	prevOut  Outside
	prevTime time.Time
}

// NewSystem makes a System whose first sample covers the time from now.
func NewSystem(cfg SystemConfig) (*System, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &System{cfg: cfg, prevTime: cfg.Now()}
	s.prev, _ = cfg.Meter.systemTotals()
	if cfg.Outside != nil {
		// A baseline for the counters; an error leaves zeros, and the
		// first sample counts from them.
		s.prevOut, _ = cfg.Outside(context.Background())
	}
	return s, nil
}

// Sample returns the figures since the previous sample. When Outside
// fails, its figures are those of the last successful read, and the
// error is returned with figures that are otherwise complete.
func (s *System) Sample(ctx context.Context) (Figures, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	cur, maxUS := s.cfg.Meter.systemTotals()
	out := s.prevOut
	var outErr error
	if s.cfg.Outside != nil {
		if o, err := s.cfg.Outside(ctx); err != nil {
			outErr = err
		} else {
			out = o
		}
	}
	secs := now.Sub(s.prevTime).Seconds()
	f := Figures{Time: now.UTC(), Interval: secs}
	f.Requests = grown(cur.requests, s.prev.requests)
	f.Errors = grown(cur.serverErrors, s.prev.serverErrors)
	f.ClientErrors = grown(cur.clientErrors, s.prev.clientErrors)
	f.RateLimited = grown(cur.rateLimited, s.prev.rateLimited)
	if f.Requests > 0 {
		f.ErrorRate = float64(f.Errors) / float64(f.Requests)
		f.ClientErrorRate = float64(f.ClientErrors) / float64(f.Requests)
		var hist [numBuckets]int64
		for b := range hist {
			hist[b] = grown(cur.hist[b], s.prev.hist[b])
		}
		maxMS := float64(maxUS) / 1000
		f.LatencyP50 = min(percentile(&hist, f.Requests, 0.50)/1000, maxMS)
		f.LatencyP95 = min(percentile(&hist, f.Requests, 0.95)/1000, maxMS)
		f.LatencyP99 = min(percentile(&hist, f.Requests, 0.99)/1000, maxMS)
		f.LatencyMax = maxMS
	}
	f.ActiveUsers = int64(s.cfg.Meter.ActiveUsers(s.prevTime))
	f.BuildsRunning, f.QueueDepth, f.DeliveryBacklog, f.Connections = out.BuildsRunning, out.QueueDepth, out.DeliveryBacklog, out.Connections
	f.DeliveryFailures = grown(out.DeliveryFailures, s.prevOut.DeliveryFailures)
	builds := grown(out.BuildsFinished, s.prevOut.BuildsFinished)
	if secs > 0 {
		f.RequestRate = float64(f.Requests) / secs
		f.BuildsPerMinute = float64(builds) / secs * 60
		f.DeliveryFailuresPerMinute = float64(f.DeliveryFailures) / secs * 60
	}
	s.prev, s.prevOut, s.prevTime = cur, out, now
	return f, outErr
}

// grown is how much a counter grew; a counter smaller than before was
// restarted, and all of it is new.
func grown(cur, prev int64) int64 {
	if cur < prev {
		return cur
	}
	return cur - prev
}
