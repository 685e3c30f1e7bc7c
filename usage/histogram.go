package usage

import (
	"math/bits"
	"sync/atomic"
)

// Latencies are counted in log-linear buckets of microseconds: exact
// below 16µs, then 8 buckets per power of two (at most 12.5% wide), up to
// 2^40µs (12 days); the percentiles of a sample are read from them.
const (
	linearBuckets = 16
	subBits       = 3
	numBuckets    = linearBuckets + (40-4)*(1<<subBits)
)

func bucketOf(us int64) int {
	if us < linearBuckets {
		return int(us)
	}
	e := bits.Len64(uint64(us)) // ≥ 5
	sub := int(uint64(us)>>(e-1-subBits)) & (1<<subBits - 1)
	b := linearBuckets + (e-5)*(1<<subBits) + sub
	return min(b, numBuckets-1)
}

// bucketBounds returns the lowest value of bucket b and the lowest of the
// next.
func bucketBounds(b int) (lo, hi int64) {
	if b < linearBuckets {
		return int64(b), int64(b) + 1
	}
	e := (b-linearBuckets)>>subBits + 5
	sub := int64((b - linearBuckets) & (1<<subBits - 1))
	shift := e - 1 - subBits
	return (1<<subBits + sub) << shift, (1<<subBits + sub + 1) << shift
}

// sysCounters are the hub-wide counts of one shard, read by System.
type sysCounters struct {
	requests, serverErrors, clientErrors, rateLimited atomic.Int64
	maxUS                                             atomic.Int64
	hist                                              [numBuckets]atomic.Int64
}

// sysTotals are sysCounters summed over the shards.
type sysTotals struct {
	requests, serverErrors, clientErrors, rateLimited int64
	hist                                              [numBuckets]int64
}

// systemTotals sums the shards' counters, and takes (resets) the largest
// latency since the last call.
func (m *Meter) systemTotals() (t sysTotals, maxUS int64) {
	for i := range m.shards {
		s := &m.shards[i].sys
		t.requests += s.requests.Load()
		t.serverErrors += s.serverErrors.Load()
		t.clientErrors += s.clientErrors.Load()
		t.rateLimited += s.rateLimited.Load()
		for b := range s.hist {
			t.hist[b] += s.hist[b].Load()
		}
		maxUS = max(maxUS, s.maxUS.Swap(0))
	}
	return t, maxUS
}

// percentile reads the p-th percentile (0 < p ≤ 1), in microseconds,
// from bucket counts holding n values: the middle of its bucket.
func percentile(hist *[numBuckets]int64, n int64, p float64) float64 {
	if n <= 0 {
		return 0
	}
	rank := int64(p*float64(n) + 0.999999)
	rank = min(max(rank, 1), n)
	var seen int64
	for b := range hist {
		seen += hist[b]
		if seen >= rank {
			lo, hi := bucketBounds(b)
			if b < linearBuckets {
				return float64(lo)
			}
			return float64(lo+hi) / 2
		}
	}
	lo, _ := bucketBounds(numBuckets - 1)
	return float64(lo)
}
