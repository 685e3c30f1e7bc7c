package main

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/buildbridge/buildbridge/store"
)

// storeCollector reads build counts and the outbox backlog from the store
// at scrape time, so they are right on every node and cost nothing
// between scrapes. The build counts are the ones triggers keep in the
// store (CountBuilds), not a count of the builds: a scrape reads a few
// hundred rows whatever the number of builds.
type storeCollector struct {
	s       *store.DB
	builds  *prometheus.Desc
	queued  *prometheus.Desc
	backlog *prometheus.Desc
	age     *prometheus.Desc
}

func newStoreCollector(s *store.DB) *storeCollector {
	return &storeCollector{s: s,
		builds:  prometheus.NewDesc("buildbridge_builds", "Builds in the store by state and result.", []string{"state", "result"}, nil),
		queued:  prometheus.NewDesc("buildbridge_queue_depth", "Builds waiting to run.", nil, nil),
		backlog: prometheus.NewDesc("buildbridge_outbox_backlog", "Transitions committed but not yet published to the bus.", nil, nil),
		age:     prometheus.NewDesc("buildbridge_outbox_oldest_seconds", "Age of the oldest unpublished transition.", nil, nil),
	}
}

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.builds
	ch <- c.queued
	ch <- c.backlog
	ch <- c.age
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if counts, err := c.s.CountBuilds(ctx); err == nil {
		queued := 0
		for k, n := range counts {
			ch <- prometheus.MustNewConstMetric(c.builds, prometheus.GaugeValue, float64(n), k[0], k[1])
			if k[0] == "QUEUED" {
				queued += n
			}
		}
		ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(queued))
	}
	if n, age, err := c.s.OutboxBacklog(ctx); err == nil {
		ch <- prometheus.MustNewConstMetric(c.backlog, prometheus.GaugeValue, float64(n))
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age.Seconds())
	}
}
