package main

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/buildbridge/buildbridge/realtime"
	"github.com/buildbridge/buildbridge/realtime/natsbroker"
)

// subsPerCounts is how many subscriptions of bound users one counts
// message of the simulated peer carries: a node puts up to 2,048 entries
// in one (realtime.countsPerMessage), one per channel and one per user.
const subsPerCounts = 1024

// runView measures what the cluster view costs a node per remote
// subscription: one real node, and a simulated peer that publishes what
// a node holding o.remote bound subscribers (each on its own
// private-user channel) publishes: counts messages with one channel
// entry and one user entry per subscriber, numbered, and heartbeats.
func runView(ctx context.Context, o options) error {
	fmt.Printf("\n== view: one node learns %d remote subscriptions (private-user-N, bound to user N) from a simulated peer, %d counts messages/s\n",
		o.remote, o.viewRate)
	prefix := fmt.Sprintf("bench.scale%d.view.", rand.Uint64())
	c, err := startCluster(ctx, o.natsURL, 1, prefix)
	if err != nil {
		return err
	}
	defer c.stop()
	node := c.nodes[0]
	nc, err := nats.Connect(o.natsURL, nats.Name("bench-scale-peer"))
	if err != nil {
		return err
	}
	defer nc.Close()
	b, err := natsbroker.New(natsbroker.Config{Conn: nc, SubjectPrefix: prefix, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	const origin = "benchpeer"
	var (
		seqMu sync.Mutex
		seq   uint64
	)
	publish := func(m realtime.Message) error {
		seqMu.Lock()
		defer seqMu.Unlock()
		m.AppID, m.Origin = appID, origin
		if m.Kind == realtime.KindCounts {
			seq++
		}
		m.Seq = seq
		return b.Publish(ctx, m)
	}
	// Heartbeats keep the peer in the node's view, as a live node does.
	hctx, stopBeats := context.WithCancel(ctx)
	var beats sync.WaitGroup
	beats.Go(func() {
		t := time.NewTicker(realtime.DefaultHeartbeatInterval)
		defer t.Stop()
		for {
			select {
			case <-hctx.Done():
				return
			case <-t.C:
				publish(realtime.Message{Kind: realtime.KindHeartbeat})
			}
		}
	})
	defer func() { stopBeats(); beats.Wait() }()
	if err := publish(realtime.Message{Kind: realtime.KindHeartbeat}); err != nil {
		return err
	}
	time.Sleep(time.Second)

	probe := "private-user-" + strconv.Itoa(o.remote-1)
	stats := func(gc bool) (nodeStats, error) {
		var s nodeStats
		err := node.Call(statsCmd{Op: "stats", GC: gc, Probe: probe}, &s)
		return s, err
	}
	// send publishes counts setting every subscription to n, paced, and
	// waits until the node applied the last one.
	send := func(n int) (time.Duration, int, uint64, error) {
		start := time.Now()
		t := time.NewTicker(time.Second / time.Duration(o.viewRate))
		defer t.Stop()
		msgs := 0
		var bytes uint64
		s0 := nc.Stats()
		for i := 0; i < o.remote; i += subsPerCounts {
			m := realtime.Message{Kind: realtime.KindCounts, Subs: map[string]int{}, Counts: map[string]int{}}
			for j := i; j < min(i+subsPerCounts, o.remote); j++ {
				u := strconv.Itoa(j)
				m.Subs["private-user-"+u], m.Counts[u] = n, n
			}
			if err := publish(m); err != nil {
				return 0, 0, 0, err
			}
			msgs++
			select {
			case <-ctx.Done():
				return 0, 0, 0, ctx.Err()
			case <-t.C:
			}
		}
		nc.Flush()
		bytes = nc.Stats().OutBytes - s0.OutBytes
		for {
			s, err := stats(false)
			if err != nil {
				return 0, 0, 0, err
			}
			if s.Probe == n {
				break
			}
			if time.Since(start) > 3*time.Minute {
				return 0, 0, 0, fmt.Errorf("the node did not apply the counts (probe %d, want %d)", s.Probe, n)
			}
			time.Sleep(50 * time.Millisecond)
		}
		return time.Since(start), msgs, bytes, nil
	}

	base, err := stats(true)
	if err != nil {
		return err
	}
	addTook, msgs, bytes, err := send(1)
	if err != nil {
		return err
	}
	full, err := stats(true)
	if err != nil {
		return err
	}
	var in nodeStats
	if err := node.Call(statsCmd{Op: "stats", View: true}, &in); err != nil {
		return err
	}
	// The view count's own work is not counted: it is read after.
	remTook, _, _, err := send(0)
	if err != nil {
		return err
	}
	empty, err := stats(true)
	if err != nil {
		return err
	}
	n := float64(o.remote)
	fmt.Printf("peer published %d counts messages, %d bytes (%.1f bytes per subscription) in %.1fs; the node's view then held %d channels\n",
		msgs, bytes, float64(bytes)/n, addTook.Seconds(), in.ViewChannels)
	fmt.Printf("node heap + stacks after GC: %.1f MiB before, %.1f MiB with the view (%.0f bytes per remote subscription), %.1f MiB after they left\n",
		mib(base.Heap), mib(full.Heap), float64(full.Heap-base.Heap)/n, mib(empty.Heap))
	fmt.Printf("node RSS: %.1f MiB before, %.1f MiB with the view (%.0f bytes per remote subscription)\n",
		mib(base.RSS), mib(full.RSS), float64(int64(full.RSS)-int64(base.RSS))/n)
	fmt.Printf("node CPU: %.2f µs per remote subscription added, %.2f µs per one removed (decode + apply, GC included; %s and %s wall)\n",
		us(full.CPU-base.CPUAfter)/n, us(empty.CPU-in.CPUAfter)/n, addTook.Round(time.Millisecond), remTook.Round(time.Millisecond))
	fmt.Printf("node NATS in: %d messages, %.1f bytes per subscription added (load %s)\n",
		full.InMsgs-base.InMsgs, float64(full.InBytes-base.InBytes)/n, loadAvg())
	return nil
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
