package sources

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of a source request, the "outcome" label of the counter.
const (
	OutcomeAccepted = "accepted"
	OutcomeRefused  = "refused"
	OutcomeIgnored  = "ignored"
)

// Metrics counts source requests by source, outcome and reason. A nil
// *Metrics counts nothing.
type Metrics struct {
	requests *prometheus.CounterVec
	batch    prometheus.Histogram
	commit   prometheus.Histogram
}

// NewMetrics makes the counters and registers them on reg (when not nil).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{requests: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "buildbridge_source_requests_total",
		Help: "Git hook requests and forge webhooks by source (git, github, gitlab, gitea), outcome (accepted, refused, ignored) and reason.",
	}, []string{"source", "outcome", "reason"}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "buildbridge_source_commit_pushes",
			Help:    "Pushes committed together in one transaction (group commit).",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128},
		}),
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "buildbridge_source_commit_seconds",
			Help:    "Time to commit one group of pushes with their builds.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.batch, m.commit} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// Commit records one group commit of n pushes that took d.
func (m *Metrics) Commit(n int, d time.Duration) {
	if m == nil {
		return
	}
	m.batch.Observe(float64(n))
	m.commit.Observe(d.Seconds())
}

// Count adds one request with its outcome and reason.
func (m *Metrics) Count(source, outcome, reason string) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(source, outcome, reason).Inc()
}
