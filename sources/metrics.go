package sources

import "github.com/prometheus/client_golang/prometheus"

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
}

// NewMetrics makes the counters and registers them on reg (when not nil).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{requests: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "buildbridge_source_requests_total",
		Help: "Git hook requests and forge webhooks by source (git, github, gitlab, gitea), outcome (accepted, refused, ignored) and reason.",
	}, []string{"source", "outcome", "reason"})}
	if reg != nil {
		if err := reg.Register(m.requests); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Count adds one request with its outcome and reason.
func (m *Metrics) Count(source, outcome, reason string) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(source, outcome, reason).Inc()
}
