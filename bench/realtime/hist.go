package main

import (
	"sync/atomic"
	"time"
)

// histogram counts latencies in fixed buckets: 10µs wide up to 100ms,
// 1ms wide up to 10s, and one overflow bucket. Safe for concurrent use.
type histogram struct {
	fine   [10_000]atomic.Int64 // [0, 100ms) by 10µs
	coarse [9_900]atomic.Int64  // [100ms, 10s) by 1ms
	over   atomic.Int64
	max    atomic.Int64
	n      atomic.Int64
}

func (h *histogram) record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.n.Add(1)
	for {
		m := h.max.Load()
		if int64(d) <= m || h.max.CompareAndSwap(m, int64(d)) {
			break
		}
	}
	switch {
	case d < 100*time.Millisecond:
		h.fine[d/(10*time.Microsecond)].Add(1)
	case d < 10*time.Second:
		h.coarse[(d-100*time.Millisecond)/time.Millisecond].Add(1)
	default:
		h.over.Add(1)
	}
}

// quantile returns the upper bound of the bucket holding quantile q.
func (h *histogram) quantile(q float64) time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	rank := int64(q*float64(n-1)) + 1
	var seen int64
	for i := range h.fine {
		if seen += h.fine[i].Load(); seen >= rank {
			return time.Duration(i+1) * 10 * time.Microsecond
		}
	}
	for i := range h.coarse {
		if seen += h.coarse[i].Load(); seen >= rank {
			return 100*time.Millisecond + time.Duration(i+1)*time.Millisecond
		}
	}
	return time.Duration(h.max.Load())
}

// summary is what a client worker reports to the parent.
type summary struct {
	Client    string `json:"client"` // the client that ran: uring falls back to epoll
	Connected int    `json:"connected"`
	Received  int64  `json:"received"`
	P50NS     int64  `json:"p50_ns"`
	P99NS     int64  `json:"p99_ns"`
	MaxNS     int64  `json:"max_ns"`
	Errors    int64  `json:"errors"`
	// Pongs counts the pusher:ping messages answered with pusher:pong.
	Pongs int64 `json:"pongs"`
	// CPUNS is the worker's CPU time (user+system) after it got ready.
	CPUNS int64 `json:"cpu_ns"`
	// Waits and Events count the raw clients' waits (epoll_wait,
	// io_uring_enter) that returned events and those events.
	Waits  int64 `json:"epoll_waits,omitempty"`
	Events int64 `json:"epoll_events,omitempty"`
}

// localHist is a histogram with the same buckets for one goroutine: no
// atomic operations on the hot path; merged into a histogram at the end.
type localHist struct {
	fine   [10_000]int64
	coarse [9_900]int64
	over   int64
	max    int64
	n      int64
}

func (h *localHist) record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.n++
	h.max = max(h.max, int64(d))
	switch {
	case d < 100*time.Millisecond:
		h.fine[d/(10*time.Microsecond)]++
	case d < 10*time.Second:
		h.coarse[(d-100*time.Millisecond)/time.Millisecond]++
	default:
		h.over++
	}
}

// mergeInto adds h's counts to dst.
func (h *localHist) mergeInto(dst *histogram) {
	for i, c := range h.fine {
		if c != 0 {
			dst.fine[i].Add(c)
		}
	}
	for i, c := range h.coarse {
		if c != 0 {
			dst.coarse[i].Add(c)
		}
	}
	dst.over.Add(h.over)
	dst.n.Add(h.n)
	for {
		m := dst.max.Load()
		if h.max <= m || dst.max.CompareAndSwap(m, h.max) {
			break
		}
	}
}
