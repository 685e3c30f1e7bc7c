package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/buildbridge/buildbridge/bench/internal/childproc"
	"github.com/buildbridge/buildbridge/realtime"
)

// cluster is one run's hub nodes and publisher.
type cluster struct {
	nodes []*childproc.Child
	addrs []string
	pub   *childproc.Child
}

func (c *cluster) stop() {
	for _, n := range c.nodes {
		n.Stop()
	}
	if c.pub != nil {
		c.pub.Stop()
	}
}

func (c *cluster) stats(gc, view bool) ([]nodeStats, error) {
	out := make([]nodeStats, len(c.nodes))
	var wg sync.WaitGroup
	errs := make([]error, len(c.nodes))
	for i, n := range c.nodes {
		wg.Go(func() { errs[i] = n.Call(statsCmd{Op: "stats", GC: gc, View: view}, &out[i]) })
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// startCluster starts k nodes and a publisher on NATS at natsURL, on one
// subject prefix.
func startCluster(ctx context.Context, natsURL string, k int, prefix string) (*cluster, error) {
	c := &cluster{}
	for range k {
		var r nodeReady
		n, err := childproc.Start(ctx, "node", &r, "-nats", natsURL, "-prefix", prefix)
		if err != nil {
			c.stop()
			return nil, err
		}
		c.nodes, c.addrs = append(c.nodes, n), append(c.addrs, r.Addr)
	}
	var r nodeReady
	p, err := childproc.Start(ctx, "publish", &r, "-nats", natsURL, "-prefix", prefix)
	if err != nil {
		c.stop()
		return nil, err
	}
	c.pub = p
	return c, nil
}

// subscriber is one WebSocket client subscribed to one private channel.
type subscriber struct {
	ws  *websocket.Conn
	got atomic.Int64
}

// dialSubscriber connects to a node, binds the socket to user (as the
// channel auth endpoint does), subscribes to private-user-<user> and
// counts the build-state-changed events it receives until ctx ends.
func dialSubscriber(ctx context.Context, node *childproc.Child, addr, user string, wg *sync.WaitGroup) (*subscriber, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(dctx, "ws://"+addr+"/app/"+appKey+"?protocol=7&client=bench", nil)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*subscriber, error) {
		ws.CloseNow()
		return nil, err
	}
	var m struct {
		Event string `json:"event"`
		Data  string `json:"data"`
	}
	_, data, err := ws.Read(dctx)
	if err != nil {
		return fail(err)
	}
	var est struct {
		SocketID string `json:"socket_id"`
	}
	if err := json.Unmarshal(data, &m); err != nil || m.Event != "pusher:connection_established" {
		return fail(fmt.Errorf("first frame %s", data))
	}
	if err := json.Unmarshal([]byte(m.Data), &est); err != nil {
		return fail(err)
	}
	if err := node.Call(bindCmd{Op: "bind", Binds: [][2]string{{est.SocketID, user}}}, nil); err != nil {
		return fail(err)
	}
	ch := "private-user-" + user
	sub, _ := json.Marshal(map[string]any{"event": "pusher:subscribe", "data": map[string]string{
		"channel": ch, "auth": realtime.ChannelAuth(appKey, appSecret, est.SocketID, ch, "")}})
	if err := ws.Write(dctx, websocket.MessageText, sub); err != nil {
		return fail(err)
	}
	for {
		_, data, err := ws.Read(dctx)
		if err != nil {
			return fail(err)
		}
		if json.Unmarshal(data, &m) == nil && m.Event == "pusher_internal:subscription_succeeded" {
			break
		}
		if m.Event == "pusher:error" || m.Event == "pusher:subscription_error" {
			return fail(fmt.Errorf("subscribe %s: %s", ch, data))
		}
	}
	s := &subscriber{ws: ws}
	wg.Go(func() {
		mark := []byte(`"event":"build-state-changed"`)
		for {
			_, data, err := ws.Read(ctx)
			if err != nil {
				return
			}
			if bytes.Contains(data, mark) {
				s.got.Add(1)
			}
		}
	})
	return s, nil
}

// realtimeRun is one K's figures.
type realtimeRun struct {
	K                        int
	Events                   int
	Received                 int64
	IdleOutMsgs, IdleInMsgs  float64 // per node per second
	IdleOutBytes, IdleCPUPct float64 // per node per second; % of one core
	PubCPU, PubBytes         float64 // µs and bytes per event
	DeliverCPU, DropCPU      float64 // µs per event, idle baseline subtracted
	DropMin, DropMax         float64
	InMsgsPerEvent           float64 // per node
	InBytesPerEvent          float64
	NATSCPU                  float64 // µs per event on nats-server (shared)
	Heap0, HeapOther         uint64  // bytes, node 0 and the mean of the others
	ViewChannels             int
}

func runRealtime(ctx context.Context, o options) error {
	fmt.Printf("\n== realtime: hub nodes on NATS (%s), %d subscribers, %.0f events/s for %v, %d-byte events\n",
		o.natsURL, o.subs, o.rate, o.duration, o.payload)
	natsPID := 0
	if u := o.natsURL; u == "nats://127.0.0.1:4222" || u == "nats://localhost:4222" {
		natsPID = findProcess("nats-server")
	}
	var runs []realtimeRun
	for _, k := range o.nodes {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r, err := realtimeOnce(ctx, o, k, natsPID)
		if err != nil {
			return fmt.Errorf("%d nodes: %w", k, err)
		}
		runs = append(runs, r)
	}
	fmt.Printf("\nidle (cluster-view heartbeats only), per node:\n")
	fmt.Printf("%5s %12s %12s %14s %10s\n", "nodes", "out msgs/s", "in msgs/s", "out bytes/s", "CPU %core")
	for _, r := range runs {
		fmt.Printf("%5d %12.2f %12.2f %14.0f %10.3f\n", r.K, r.IdleOutMsgs, r.IdleInMsgs, r.IdleOutBytes, r.IdleCPUPct)
	}
	fmt.Printf("\npublishing (each event to one channel, whose one subscriber is on node 0), per event:\n")
	fmt.Printf("%5s %8s %10s %10s %12s %18s %12s %12s %12s %12s %12s\n", "nodes", "events", "received", "publish µs", "publish B",
		"deliver µs (node0)", "drop µs", "drop min-max", "in msgs/node", "in B/node", "nats-srv µs")
	for _, r := range runs {
		nats := "n/a"
		if natsPID != 0 {
			nats = fmt.Sprintf("%.1f", r.NATSCPU)
		}
		fmt.Printf("%5d %8d %10d %10.1f %12.0f %18.1f %12.1f %6.1f-%-5.1f %12.2f %12.0f %12s\n", r.K, r.Events, r.Received, r.PubCPU, r.PubBytes,
			r.DeliverCPU, r.DropCPU, r.DropMin, r.DropMax, r.InMsgsPerEvent, r.InBytesPerEvent, nats)
	}
	fmt.Printf("\nmemory after GC (heap + stacks): node 0 holds %d local subscribers per run / K; every node's view holds all %d channels\n", o.subs, o.subs)
	fmt.Printf("%5s %14s %18s %14s\n", "nodes", "node 0 KiB", "others mean KiB", "view channels")
	for _, r := range runs {
		fmt.Printf("%5d %14.0f %18.0f %14d\n", r.K, float64(r.Heap0)/1024, float64(r.HeapOther)/1024, r.ViewChannels)
	}
	fmt.Printf("\nfloor: decoding one such message in-process (json.Unmarshal into realtime.Message, one goroutine, no I/O) takes %.1f µs\n", decodeFloor(o.payload))
	if natsPID != 0 {
		fmt.Printf("(nats-server CPU from /proc/%d/stat in 10 ms ticks; the server is shared with other users of this machine)\n", natsPID)
	}
	return nil
}

func realtimeOnce(ctx context.Context, o options, k, natsPID int) (realtimeRun, error) {
	r := realtimeRun{K: k}
	prefix := fmt.Sprintf("bench.scale%d.realtime.", rand.Uint64())
	c, err := startCluster(ctx, o.natsURL, k, prefix)
	if err != nil {
		return r, err
	}
	defer c.stop()
	sctx, cancelSubs := context.WithCancel(ctx)
	var readers sync.WaitGroup
	defer func() { cancelSubs(); readers.Wait() }()

	// Subscriber j is on node j%k: node 0 holds the channels published to.
	subs := make([]*subscriber, o.subs)
	var (
		mu   sync.Mutex
		derr error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 32)
	)
	for j := range o.subs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			n := j % k
			s, err := dialSubscriber(sctx, c.nodes[n], c.addrs[n], strconv.Itoa(j), &readers)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && derr == nil {
				derr = fmt.Errorf("subscriber %d: %w", j, err)
			}
			subs[j] = s
		})
	}
	wg.Wait()
	defer func() {
		for _, s := range subs {
			if s != nil {
				s.ws.CloseNow()
			}
		}
	}()
	if derr != nil {
		return r, derr
	}
	// Wait for every node's view to hold every channel.
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, err := c.stats(false, true)
		if err != nil {
			return r, err
		}
		ok := true
		for _, s := range st {
			ok = ok && s.ViewChannels == o.subs
		}
		if ok {
			r.ViewChannels = st[k-1].ViewChannels
			break
		}
		if time.Now().After(deadline) {
			return r, fmt.Errorf("cluster views did not converge on %d channels: %+v", o.subs, st)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // the last counts flush

	// Idle: heartbeats only.
	i0, err := c.stats(false, false)
	if err != nil {
		return r, err
	}
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return r, ctx.Err()
	case <-time.After(o.idle):
	}
	i1, err := c.stats(false, false)
	if err != nil {
		return r, err
	}
	idle := time.Since(t0).Seconds()
	idleRate := make([]float64, k) // CPU seconds per second, per node
	for n := range k {
		r.IdleOutMsgs += float64(i1[n].OutMsgs-i0[n].OutMsgs) / idle / float64(k)
		r.IdleInMsgs += float64(i1[n].InMsgs-i0[n].InMsgs) / idle / float64(k)
		r.IdleOutBytes += float64(i1[n].OutBytes-i0[n].OutBytes) / idle / float64(k)
		idleRate[n] = (i1[n].CPU - i0[n].CPUAfter).Seconds() / idle
		r.IdleCPUPct += 100 * idleRate[n] / float64(k)
	}

	// Publishing.
	var targets []string
	for j := 0; j < o.subs; j += k {
		targets = append(targets, "private-user-"+strconv.Itoa(j))
	}
	p0, err := c.stats(false, false)
	if err != nil {
		return r, err
	}
	nats0, _ := procCPU(natsPID)
	t0 = time.Now()
	var pr publishResult
	if err := c.pub.Call(publishCmd{Op: "publish", Channels: targets, Rate: o.rate, Duration: o.duration, Payload: o.payload}, &pr); err != nil {
		return r, err
	}
	// Let the nodes and subscribers drain.
	want := int64(pr.Sent)
	for range 50 {
		var got int64
		for _, s := range subs {
			got += s.got.Load()
		}
		if r.Received = got; got >= want {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	p1, err := c.stats(false, false)
	if err != nil {
		return r, err
	}
	nats1, _ := procCPU(natsPID)
	el := time.Since(t0).Seconds()
	ev := float64(pr.Sent)
	r.Events = pr.Sent
	r.PubCPU, r.PubBytes = us(pr.CPU)/ev, float64(pr.OutBytes)/ev
	r.NATSCPU = us(nats1-nats0) / ev
	cost := func(n int) float64 { return ((p1[n].CPU - p0[n].CPUAfter).Seconds() - idleRate[n]*el) * 1e6 / ev }
	r.DeliverCPU = cost(0)
	r.DropMin = 1e9
	for n := 1; n < k; n++ {
		d := cost(n)
		r.DropCPU += d / float64(k-1)
		r.DropMin, r.DropMax = min(r.DropMin, d), max(r.DropMax, d)
	}
	// What arrives besides the events (heartbeats) is taken off at the
	// idle rate.
	for n := range k {
		r.InMsgsPerEvent += (float64(p1[n].InMsgs-p0[n].InMsgs) - r.IdleInMsgs*el) / ev / float64(k)
		r.InBytesPerEvent += (float64(p1[n].InBytes-p0[n].InBytes) - float64(i1[n].InBytes-i0[n].InBytes)/idle*el) / ev / float64(k)
	}
	mem, err := c.stats(true, false)
	if err != nil {
		return r, err
	}
	r.Heap0 = mem[0].Heap
	for n := 1; n < k; n++ {
		r.HeapOther += mem[n].Heap / uint64(k-1)
	}
	fmt.Printf("%d nodes: %d subscribers connected and in every view; idle %.1fs, then %d events in %.1fs, %d received (load %s)\n",
		k, o.subs, idle, pr.Sent, pr.Elapsed.Seconds(), r.Received, loadAvg())
	if r.Received != want {
		return r, fmt.Errorf("%d events published, %d received", want, r.Received)
	}
	return r, nil
}

// decodeFloor is the CPU of decoding one published event as a node
// receives it: what a node does for an event whatever else it skips.
func decodeFloor(payload int) float64 {
	raw, _ := json.Marshal(realtime.Message{Kind: realtime.KindEvent, AppID: appID, Channels: []string{"private-user-12345"},
		Event: "build-state-changed", Data: eventData(payload)})
	const n = 20000
	t0 := selfCPU()
	for range n {
		var m realtime.Message
		if err := json.Unmarshal(raw, &m); err != nil {
			return -1
		}
	}
	return us(selfCPU()-t0) / n
}
