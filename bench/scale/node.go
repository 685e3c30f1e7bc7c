package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/buildbridge/buildbridge/bench/internal/childproc"
	"github.com/buildbridge/buildbridge/realtime"
	"github.com/buildbridge/buildbridge/realtime/natsbroker"
)

// The realtime app of every node, as buildbridge configures its own (one
// app, subscription counts on).
const (
	appID     = "buildbridge"
	appKey    = "scalekey"
	appSecret = "scalesecret"
)

// childPrefix is the NATS subject prefix of a run's nodes (set from the
// -prefix flag), so that runs and other users of the server stay apart.
var childPrefix string

type nodeReady struct {
	Addr string `json:"addr"`
	PID  int    `json:"pid"`
}

// nodeStats is what a node reports about itself.
type nodeStats struct {
	CPU      time.Duration `json:"cpu_ns"`
	InMsgs   uint64        `json:"in_msgs"`
	OutMsgs  uint64        `json:"out_msgs"`
	InBytes  uint64        `json:"in_bytes"`
	OutBytes uint64        `json:"out_bytes"`
	// Heap is the live heap and stacks after GC (only when asked).
	Heap uint64 `json:"heap"`
	RSS  uint64 `json:"rss"`
	// ViewChannels counts the occupied channels of the whole cluster as
	// this node sees them (only when asked).
	ViewChannels int `json:"view_channels"`
	// Probe is the cluster-wide subscription count of one channel.
	Probe int `json:"probe"`
	// CPUAfter is the CPU time once the stats were gathered: the GC and
	// the view count they asked for are not part of the next interval.
	CPUAfter time.Duration `json:"cpu_after_ns"`
}

type statsCmd struct {
	Op    string `json:"op"`
	GC    bool   `json:"gc"`
	View  bool   `json:"view"`
	Probe string `json:"probe"`
}

type bindCmd struct {
	Op    string      `json:"op"`
	Binds [][2]string `json:"binds"` // socket id, user id
}

// runNode is one hub node's realtime part: a realtime.Server on
// natsbroker with the default cluster settings, serving WebSockets on a
// loopback port.
func runNode() error {
	quiet := slog.New(slog.DiscardHandler)
	nc, err := nats.Connect(childNATS, nats.Name("bench-scale-node"))
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	b, err := natsbroker.New(natsbroker.Config{Conn: nc, SubjectPrefix: childPrefix, Logger: quiet})
	if err != nil {
		return err
	}
	srv, err := realtime.New(realtime.Config{
		Apps:   []realtime.App{{ID: appID, Key: appKey, Secret: appSecret, EnableSubscriptionCount: true}},
		Broker: b,
		Logger: quiet,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		hs.Close()
	}()
	return childproc.Serve(nodeReady{Addr: ln.Addr().String(), PID: os.Getpid()}, func(op string, raw json.RawMessage) (any, error) {
		switch op {
		case "stats":
			var c statsCmd
			if err := json.Unmarshal(raw, &c); err != nil {
				return nil, err
			}
			ns := nc.Stats()
			out := nodeStats{CPU: selfCPU(), InMsgs: ns.InMsgs, OutMsgs: ns.OutMsgs, InBytes: ns.InBytes, OutBytes: ns.OutBytes,
				RSS: procRSS(os.Getpid())}
			if c.GC {
				out.Heap = heapAfterGC()
				out.RSS = procRSS(os.Getpid())
			}
			if c.View {
				list, err := srv.Channels(appID, "private-")
				if err != nil {
					return nil, err
				}
				out.ViewChannels = len(list)
			}
			if c.Probe != "" {
				ci, err := srv.ChannelInfo(appID, c.Probe)
				if err != nil {
					return nil, err
				}
				out.Probe = ci.SubscriptionCount
			}
			out.CPUAfter = selfCPU()
			return out, nil
		case "bind":
			var c bindCmd
			if err := json.Unmarshal(raw, &c); err != nil {
				return nil, err
			}
			for _, b := range c.Binds {
				if err := srv.BindSocket(appID, b[0], b[1]); err != nil {
					return nil, err
				}
			}
			return map[string]int{"bound": len(c.Binds)}, nil
		}
		return nil, fmt.Errorf("unknown op %q", op)
	})
}

// publishCmd asks the publisher to send Rate events per second for
// Duration, round-robin over Channels.
type publishCmd struct {
	Op       string        `json:"op"`
	Channels []string      `json:"channels"`
	Rate     float64       `json:"rate"`
	Duration time.Duration `json:"duration"`
	Payload  int           `json:"payload"`
}

type publishResult struct {
	Sent     int           `json:"sent"`
	CPU      time.Duration `json:"cpu_ns"`
	OutBytes uint64        `json:"out_bytes"`
	Elapsed  time.Duration `json:"elapsed_ns"`
}

// runPublisher publishes events the way a hub node's realtime.Server
// does (natsbroker.Publish of a KindEvent message), without subscribing:
// its CPU is the publishing side's alone.
func runPublisher() error {
	nc, err := nats.Connect(childNATS, nats.Name("bench-scale-publisher"))
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	b, err := natsbroker.New(natsbroker.Config{Conn: nc, SubjectPrefix: childPrefix, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	return childproc.Serve(nodeReady{PID: os.Getpid()}, func(op string, raw json.RawMessage) (any, error) {
		if op != "publish" {
			return nil, fmt.Errorf("unknown op %q", op)
		}
		var c publishCmd
		if err := json.Unmarshal(raw, &c); err != nil {
			return nil, err
		}
		if len(c.Channels) == 0 || c.Rate <= 0 {
			return nil, fmt.Errorf("publish: need channels and a rate")
		}
		data := eventData(c.Payload)
		ctx := context.Background()
		s0, cpu0, start := nc.Stats(), selfCPU(), time.Now()
		// Every 10 ms, send what the rate owes since the start.
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		sent := 0
		for {
			el := time.Since(start)
			if el >= c.Duration {
				break
			}
			for due := int(c.Rate * el.Seconds()); sent < due; sent++ {
				ch := c.Channels[sent%len(c.Channels)]
				if err := b.Publish(ctx, realtime.Message{Kind: realtime.KindEvent, AppID: appID, Channels: []string{ch},
					Event: "build-state-changed", Data: data}); err != nil {
					return nil, err
				}
			}
			<-t.C
		}
		if err := nc.Flush(); err != nil {
			return nil, err
		}
		s1 := nc.Stats()
		return publishResult{Sent: sent, CPU: selfCPU() - cpu0, OutBytes: s1.OutBytes - s0.OutBytes,
			Elapsed: time.Since(start)}, nil
	})
}

// eventData is a build-state-changed payload of about n bytes, shaped
// like the real one.
func eventData(n int) string {
	base := `{"id":"evt_01jd8k3m4n5p6q7r8s9t0v1w2x","type":"build-state-changed","time":"2026-11-23T12:00:00.123Z","seq":123456,` +
		`"build":{"id":987654,"number":4321,"state":"FINISHED","success":true,"result":"passed","status":"passed",` +
		`"ref":"refs/heads/main","sha":"0123456789abcdef0123456789abcdef01234567","author":"A. Developer",` +
		`"message":"`
	tail := `","url":"https://ci.example.com/builds/987654","started_at":"2026-11-23T11:58:00Z","finished_at":"2026-11-23T12:00:00Z",` +
		`"duration_ms":120000},"job":{"id":"987654","name":"app"},"previous":{"build_number":4320,"result":"passed"}}`
	fill := n - len(base) - len(tail)
	msg := make([]byte, max(fill, 0))
	for i := range msg {
		msg[i] = "commit message text "[i%20]
	}
	return base + string(msg) + tail
}
