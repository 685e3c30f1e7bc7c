package delivery

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the engine's Prometheus metrics, per sink and target.
type metrics struct {
	attempts   *prometheus.CounterVec
	successes  *prometheus.CounterVec
	failures   *prometheus.CounterVec
	dead       *prometheus.CounterVec
	skipped    *prometheus.CounterVec
	refused    prometheus.Counter
	lost       prometheus.Counter
	takenOver  prometheus.Counter
	pruned     prometheus.Counter
	latency    *prometheus.HistogramVec
	pending    *prometheus.Desc
	retries    *prometheus.Desc
	oldest     *prometheus.Desc
	held       *prometheus.Desc
	disabled   *prometheus.Desc
	collectFor *Engine
}

func newMetrics(e *Engine, reg prometheus.Registerer) (*metrics, error) {
	st := []string{"sink", "target"}
	m := &metrics{
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "buildbridge_delivery_attempts_total",
			Help: "Delivery attempts."}, st),
		successes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "buildbridge_delivery_successes_total",
			Help: "Attempts the destination accepted."}, st),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "buildbridge_delivery_failures_total",
			Help: "Failed attempts, by kind: temporary (retried), permanent, gone (410: endpoint disabled)."},
			[]string{"sink", "target", "kind"}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "buildbridge_delivery_dead_letters_total",
			Help: "Deliveries that failed for good (redeliverable)."}, st),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "buildbridge_delivery_skipped_total",
			Help: "Deliveries not persisted because their sink type has no implementation in this build."},
			[]string{"sink", "type"}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "buildbridge_delivery_records_refused_total",
			Help: "Attempt records refused because another node had taken the delivery over (this node's lease had ended)."}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{Name: "buildbridge_delivery_leases_lost_total",
			Help: "Deliveries left to another node: a lease found lost at renewal, or a claim refused."}),
		takenOver: prometheus.NewCounter(prometheus.CounterOpts{Name: "buildbridge_delivery_taken_over_total",
			Help: "Due deliveries that no node held (their node stopped) taken over from the store."}),
		pruned: prometheus.NewCounter(prometheus.CounterOpts{Name: "buildbridge_delivery_pruned_total",
			Help: "Finished deliveries deleted once older than the retention, with their attempts and payloads."}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "buildbridge_delivery_attempt_duration_seconds",
			Help:    "Duration of delivery attempts.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, st),
		pending: prometheus.NewDesc("buildbridge_delivery_pending", "Deliveries waiting for an attempt (new and retries).", st, nil),
		retries: prometheus.NewDesc("buildbridge_delivery_retries_pending", "Pending deliveries that failed at least once.", st, nil),
		oldest: prometheus.NewDesc("buildbridge_delivery_oldest_pending_seconds",
			"Age of the oldest pending delivery.", st, nil),
		held: prometheus.NewDesc("buildbridge_delivery_leases_held",
			"Pending deliveries whose lease this node holds.", st, nil),
		disabled: prometheus.NewDesc("buildbridge_delivery_endpoint_disabled",
			"1 for a disabled endpoint (HTTP 410 or failing too long).", st, nil),
		collectFor: e,
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.attempts, m.successes, m.failures, m.dead, m.skipped,
			m.refused, m.lost, m.takenOver, m.pruned, m.latency, m} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("delivery metrics: %w", err)
			}
		}
	}
	return m, nil
}

// Describe and Collect read the gauges from the engine's queues at
// scrape time.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.pending
	ch <- m.retries
	ch <- m.oldest
	ch <- m.held
	ch <- m.disabled
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	for _, s := range m.collectFor.stats() {
		ch <- prometheus.MustNewConstMetric(m.pending, prometheus.GaugeValue, float64(s.pending), s.sink, s.target)
		ch <- prometheus.MustNewConstMetric(m.retries, prometheus.GaugeValue, float64(s.retries), s.sink, s.target)
		ch <- prometheus.MustNewConstMetric(m.oldest, prometheus.GaugeValue, s.oldest.Seconds(), s.sink, s.target)
		ch <- prometheus.MustNewConstMetric(m.held, prometheus.GaugeValue, float64(s.held), s.sink, s.target)
		if s.disabled {
			ch <- prometheus.MustNewConstMetric(m.disabled, prometheus.GaugeValue, 1, s.sink, s.target)
		}
	}
}
