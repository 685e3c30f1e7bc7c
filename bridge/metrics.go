package bridge

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type relayMetrics struct {
	published     prometheus.Counter
	publishErrors prometheus.Counter
	errors        *prometheus.CounterVec
	batch         prometheus.Histogram
	acquired      prometheus.Counter
}

func newRelayMetrics(reg prometheus.Registerer, node string, backlog, leading func() float64) (relayMetrics, error) {
	m := relayMetrics{
		acquired: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "buildbridge_relay_lock_acquired_total",
			Help:        "Times this node's relay took the shared outbox lock (PostgreSQL).",
			ConstLabels: prometheus.Labels{"node": node},
		}),
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "buildbridge_relay_published_total",
			Help: "Outbox rows published and acknowledged by the bus.",
		}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "buildbridge_relay_publish_errors_total",
			Help: "Outbox rows whose publish failed (they stay and are retried).",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildbridge_relay_outbox_errors_total",
			Help: "Failed outbox reads, deletes, waits and lock attempts.",
		}, []string{"op"}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "buildbridge_relay_batch_seconds",
			Help:    "Time to read, publish and delete one outbox batch.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5},
		}),
	}
	if reg == nil {
		return m, nil
	}
	pending := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "buildbridge_relay_pending",
		Help: "Rows the relay last read and has not yet deleted.",
	}, backlog)
	leader := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "buildbridge_relay_leader",
		Help:        "1 while this node's relay publishes the outbox; 0 while it stands by (another node holds the shared outbox lock) or is stopped.",
		ConstLabels: prometheus.Labels{"node": node},
	}, leading)
	return m, register(reg, m.published, m.publishErrors, m.errors, m.batch, pending, leader, m.acquired)
}

type bridgeMetrics struct {
	events         prometheus.Counter
	malformed      *prometheus.CounterVec
	consumerErrors *prometheus.CounterVec
	consumerTime   *prometheus.HistogramVec
	eventAge       *prometheus.HistogramVec
	batchSize      *prometheus.HistogramVec
}

func newBridgeMetrics(reg prometheus.Registerer) (bridgeMetrics, error) {
	m := bridgeMetrics{
		events: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "buildbridge_bridge_events_total",
			Help: "Transitions turned into build-state-changed events.",
		}),
		malformed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildbridge_bridge_malformed_total",
			Help: "Malformed messages dropped (logged and acknowledged), by handler.",
		}, []string{"handler"}),
		consumerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildbridge_bridge_consumer_errors_total",
			Help: "Events a consumer refused (they are delivered again), by consumer.",
		}, []string{"consumer"}),
		consumerTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "buildbridge_bridge_consumer_seconds",
			Help:    "Time a consumer took for one event (a batch consumer: for one batch).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5, 30},
		}, []string{"consumer"}),
		eventAge: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "buildbridge_bridge_event_age_seconds",
			Help:    "Time from the transition's commit to a consumer receiving its event.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5, 30, 300},
		}, []string{"consumer"}),
		batchSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "buildbridge_bridge_consumer_batch_size",
			Help:    "Messages handed to a batch consumer at once (malformed ones included).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 10), // 1 to 512
		}, []string{"consumer"}),
	}
	if reg == nil {
		return m, nil
	}
	return m, register(reg, m.events, m.malformed, m.consumerErrors, m.consumerTime, m.eventAge, m.batchSize)
}

func register(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("bridge: register metrics: %w", err)
		}
	}
	return nil
}
