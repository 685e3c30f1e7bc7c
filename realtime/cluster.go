package realtime

import (
	"encoding/json"
	"errors"
	"time"
)

// ClusterConfig tunes the cluster view: how the Servers that share a
// Broker learn what the others hold, so that presence, channel queries and
// the limits hold across nodes.
//
// Every node publishes its own changes and merges the others' into a view
// of what each other node holds: a presence member joining or leaving a
// channel on that node (its first or last socket there) at once, and
// changed subscription counts per channel and per bound user every
// FlushInterval. A pusher_internal:member_added reaches a node's
// subscribers when a user becomes a member on any node, and
// member_removed when it is a member on none; subscription_succeeded lists
// the members of every node; the HTTP API's channel queries, the
// subscription_count event and Server.UserSubscriptions count every node.
//
// A node announces itself every HeartbeatInterval with the number of its
// last change; a node that missed a change (NATS core delivers at most
// once) asks for a snapshot, and so does a node that starts. A node not
// heard from for NodeTimeout (killed, or cut off) is dropped from the
// others' views at their next heartbeat: its subscriptions stop counting
// and its presence members leave, with member_removed for those present
// nowhere else. A node that shuts down says goodbye and is dropped at
// once; a node that comes back is taken in again through a snapshot.
// Server webhooks stay each node's own.
//
// Consistency: the view is eventually consistent. Presence changes of
// other nodes arrive within the broker's latency, counts within
// FlushInterval more. The limits (App.MaxPresenceMembers and the per-user
// counts behind Hooks.Authorize) are checked against the merged view as it
// stands, so subscriptions racing on several nodes may pass a limit
// together: a presence channel by up to one member per node racing, a
// user's open channels by what the other nodes accepted within the last
// FlushInterval. App.MaxConnections stays per node.
type ClusterConfig struct {
	// HeartbeatInterval is how often a node announces itself. Default 2s.
	HeartbeatInterval time.Duration
	// NodeTimeout is how long a silent node stays in the view. It must
	// exceed HeartbeatInterval; allow for a NATS reconnection. Default 10s.
	NodeTimeout time.Duration
	// FlushInterval is how often changed subscription counts are sent.
	// Default 100ms.
	FlushInterval time.Duration
}

func (c *ClusterConfig) setDefaults() {
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.NodeTimeout == 0 {
		c.NodeTimeout = max(DefaultNodeTimeout, 3*c.HeartbeatInterval)
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = DefaultFlushInterval
	}
}

// Validate reports the first configuration error, naming the field.
func (c *ClusterConfig) Validate() error {
	switch {
	case c.HeartbeatInterval < 0:
		return errors.New("realtime: Cluster.HeartbeatInterval: must be positive")
	case c.FlushInterval < 0:
		return errors.New("realtime: Cluster.FlushInterval: must be positive")
	case c.NodeTimeout <= c.HeartbeatInterval:
		return errors.New("realtime: Cluster.NodeTimeout: must exceed HeartbeatInterval")
	}
	return nil
}

// Bounds of one cluster message, far under NATS's default 1 MiB payload
// limit: counts are split every countsPerMessage entries, snapshots every
// snapshotPartBytes (estimated).
const (
	countsPerMessage  = 2048
	snapshotPartBytes = 256 << 10
)

// clusterView is what the other nodes hold, as they last reported it,
// with the sums that queries read. It is guarded by app.mu.
type clusterView struct {
	peers   map[string]*peer
	subs    map[string]int                      // channel → subscriptions on other nodes
	members map[string]map[string]*remoteMember // presence channel → user → member
	owners  map[string]int                      // bound user → subscriptions on other nodes
}

// remoteMember is a presence member on other nodes.
type remoteMember struct {
	info  json.RawMessage // as the first node that reported it sent it
	nodes int             // other nodes where it is a member
}

// peer is another node of the cluster.
type peer struct {
	id    string
	state peerState
	seq   uint64 // its last change applied
	// synced is false when a change was missed: state is then a guess
	// until a snapshot arrives.
	synced bool
	seen   time.Time // last message
	asked  time.Time // last snapshot request

	pending     *peerState // snapshot being received
	pendingSeq  uint64
	pendingNext int
}

// peerState is what one node holds.
type peerState struct {
	subs    map[string]int
	members map[string]map[string]json.RawMessage
	owners  map[string]int
}

func newPeerState() peerState {
	return peerState{subs: make(map[string]int), members: make(map[string]map[string]json.RawMessage),
		owners: make(map[string]int)}
}

func newClusterView() clusterView {
	return clusterView{peers: make(map[string]*peer), subs: make(map[string]int),
		members: make(map[string]map[string]*remoteMember), owners: make(map[string]int)}
}

// publishLocked queues a change of this node's state for the other nodes,
// numbered in the order of the changes. Queued messages are published by
// flushOut, after the caller releases the lock.
func (a *app) publishLocked(m Message) {
	if !a.srv.clustered {
		return
	}
	a.seq++
	m.Seq = a.seq
	a.queueLocked(m)
}

// queueLocked queues m, stamped with this app and node, for flushOut.
func (a *app) queueLocked(m Message) {
	m.AppID, m.Origin = a.cfg.ID, a.srv.node
	a.out = append(a.out, m)
}

// flushOut publishes the queued messages in the order they were queued.
// It must not run on the broker's delivery goroutine: an in-process broker
// would deliver to another Server that publishes in turn.
func (a *app) flushOut() {
	a.pubMu.Lock()
	defer a.pubMu.Unlock()
	a.mu.Lock()
	out := a.out
	a.out = nil
	a.mu.Unlock()
	for _, m := range out {
		a.srv.broadcast(m)
	}
}

// subsChangedLocked notes a changed subscription count of a channel for
// the next flush.
func (a *app) subsChangedLocked(name string) {
	if a.srv.clustered {
		a.subsDirty[name] = struct{}{}
	}
}

// ownerChangedLocked notes a changed owner count for the next flush.
func (a *app) ownerChangedLocked(owner string) {
	if a.srv.clustered {
		a.ownersDirty[owner] = struct{}{}
	}
}

// flushCountsLocked queues the changed counts.
func (a *app) flushCountsLocked() {
	if len(a.subsDirty) == 0 && len(a.ownersDirty) == 0 {
		return
	}
	m := Message{Kind: KindCounts}
	n := 0
	next := func() {
		if n++; n >= countsPerMessage {
			a.publishLocked(m)
			m, n = Message{Kind: KindCounts}, 0
		}
	}
	for name := range a.subsDirty {
		if m.Subs == nil {
			m.Subs = make(map[string]int)
		}
		m.Subs[name] = 0
		if ch := a.channels[name]; ch != nil {
			m.Subs[name] = len(ch.subs)
		}
		next()
	}
	for o := range a.ownersDirty {
		if m.Counts == nil {
			m.Counts = make(map[string]int)
		}
		m.Counts[o] = a.owners[o] // 0: none left
		next()
	}
	if n > 0 {
		a.publishLocked(m)
	}
	clear(a.subsDirty)
	clear(a.ownersDirty)
}

// snapshotLocked queues this node's whole state, in parts.
func (a *app) snapshotLocked() {
	var parts []Message
	cur, size := Message{Kind: KindSnapshot}, 0
	grow := func(n int) {
		if size += n; size >= snapshotPartBytes {
			parts = append(parts, cur)
			cur, size = Message{Kind: KindSnapshot}, 0
		}
	}
	for name, ch := range a.channels {
		if ch.kind == kindServerToUser {
			continue
		}
		if cur.Subs == nil {
			cur.Subs = make(map[string]int)
		}
		cur.Subs[name] = len(ch.subs)
		grow(len(name) + 16)
		for uid, mb := range ch.members {
			if cur.Members == nil {
				cur.Members = make(map[string]map[string]json.RawMessage)
			}
			if cur.Members[name] == nil {
				cur.Members[name] = make(map[string]json.RawMessage)
			}
			cur.Members[name][uid] = mb.info
			grow(len(name) + len(uid) + len(mb.info) + 16)
		}
	}
	for o, n := range a.owners {
		if cur.Counts == nil {
			cur.Counts = make(map[string]int)
		}
		cur.Counts[o] = n
		grow(len(o) + 16)
	}
	parts = append(parts, cur)
	for i := range parts {
		parts[i].Seq, parts[i].Part, parts[i].Parts = a.seq, i, len(parts)
		a.queueLocked(parts[i])
	}
}

// clusterReceive applies a cluster message of another node. It reports
// whether there is something to publish (a request for the other node's
// snapshot, queued, or this node's snapshot, asked for); the caller has
// the cluster loop publish it, since it runs on the broker's delivery
// goroutine.
func (a *app) clusterReceive(m Message, now time.Time) (queued bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.view.peers[m.Origin]
	if m.Kind == KindGoodbye {
		if p != nil {
			a.dropPeerLocked(p)
		}
		return false
	}
	if p == nil {
		// A node at Seq 0 has published nothing yet: it holds nothing,
		// and a new peer is taken to be there.
		p = &peer{id: m.Origin, state: newPeerState(), synced: true}
		a.view.peers[m.Origin] = p
	}
	p.seen = now
	switch m.Kind {
	case KindHeartbeat, KindHello:
		// The parts of a snapshot are published back to back: one still
		// incomplete lost some.
		p.pending = nil
		if p.seq != m.Seq {
			p.synced = false
		}
		if m.Kind == KindHello && (m.Target == "" || m.Target == a.srv.node) && !a.snapshotWanted {
			a.snapshotWanted = true
			queued = true
		}
	case KindCounts, KindMemberAdded, KindMemberRemoved:
		if m.Seq != p.seq+1 || p.pending != nil {
			p.synced, p.pending = false, nil
		}
		p.seq = m.Seq
		a.applyChangeLocked(p, m)
	case KindSnapshot:
		a.snapshotPartLocked(p, m)
	}
	return a.askSnapshotLocked(p, now) || queued
}

// askSnapshotLocked queues a request for p's snapshot when p is out of
// step, no snapshot is on its way and none was asked for within a
// heartbeat; it reports whether it queued one.
func (a *app) askSnapshotLocked(p *peer, now time.Time) bool {
	if p.synced || p.pending != nil || now.Sub(p.asked) < a.srv.cfg.Cluster.HeartbeatInterval {
		return false
	}
	p.asked = now
	a.queueLocked(Message{Kind: KindHello, Target: p.id, Seq: a.seq})
	return true
}

// applyChangeLocked applies one change of p.
func (a *app) applyChangeLocked(p *peer, m Message) {
	switch m.Kind {
	case KindCounts:
		for name, n := range m.Subs {
			a.peerSubsLocked(p, name, n)
		}
		for o, n := range m.Counts {
			a.peerOwnerLocked(p, o, n)
		}
	case KindMemberAdded:
		if len(m.Channels) == 1 && m.UserID != "" {
			a.peerAddMemberLocked(p, m.Channels[0], m.UserID, m.UserInfo)
		}
	case KindMemberRemoved:
		if len(m.Channels) == 1 {
			a.peerRemoveMemberLocked(p, m.Channels[0], m.UserID)
		}
	}
}

// snapshotPartLocked collects the parts of p's snapshot and, with the
// last, replaces what this node knew of p.
func (a *app) snapshotPartLocked(p *peer, m Message) {
	if m.Part == 0 {
		if p.synced && p.seq == m.Seq {
			return // up to date: the snapshot is for another node
		}
		st := newPeerState()
		p.pending, p.pendingSeq, p.pendingNext, p.synced = &st, m.Seq, 0, false
	}
	if p.pending == nil {
		return
	}
	if p.pendingSeq != m.Seq || p.pendingNext != m.Part {
		p.pending = nil // a part was lost: ask again later
		return
	}
	st := p.pending
	for name, n := range m.Subs {
		st.subs[name] = n
	}
	for name, ms := range m.Members {
		if st.members[name] == nil {
			st.members[name] = make(map[string]json.RawMessage, len(ms))
		}
		for uid, info := range ms {
			st.members[name][uid] = info
		}
	}
	for o, n := range m.Counts {
		st.owners[o] = n
	}
	if p.pendingNext++; p.pendingNext < m.Parts {
		return
	}
	p.pending = nil
	a.replacePeerLocked(p, *st)
	p.seq, p.synced = m.Seq, true
}

// replacePeerLocked makes st what p holds, telling this node's presence
// subscribers of the members that come and go.
func (a *app) replacePeerLocked(p *peer, st peerState) {
	for name, ms := range p.state.members {
		for uid := range ms {
			if _, ok := st.members[name][uid]; !ok {
				a.peerRemoveMemberLocked(p, name, uid)
			}
		}
	}
	for name, ms := range st.members {
		for uid, info := range ms {
			a.peerAddMemberLocked(p, name, uid, info)
		}
	}
	for name := range p.state.subs {
		if _, ok := st.subs[name]; !ok {
			a.peerSubsLocked(p, name, 0)
		}
	}
	for name, n := range st.subs {
		a.peerSubsLocked(p, name, n)
	}
	for o := range p.state.owners {
		if _, ok := st.owners[o]; !ok {
			a.peerOwnerLocked(p, o, 0)
		}
	}
	for o, n := range st.owners {
		a.peerOwnerLocked(p, o, n)
	}
}

// dropPeerLocked forgets p and everything it held.
func (a *app) dropPeerLocked(p *peer) {
	a.replacePeerLocked(p, newPeerState())
	delete(a.view.peers, p.id)
}

func (a *app) peerSubsLocked(p *peer, name string, n int) {
	if setPeerCount(p.state.subs, a.view.subs, name, n) {
		if ch := a.channels[name]; ch != nil {
			a.countChangedLocked(ch)
		}
	}
}

func (a *app) peerOwnerLocked(p *peer, o string, n int) {
	setPeerCount(p.state.owners, a.view.owners, o, n)
}

// setPeerCount sets a peer's count of key to n (0: none) in own and
// moves the sum over peers with it; it reports whether the count changed.
func setPeerCount(own, sum map[string]int, key string, n int) bool {
	old := own[key]
	if n == old || n < 0 {
		return false
	}
	if n > 0 {
		own[key] = n
	} else {
		delete(own, key)
	}
	if sum[key] += n - old; sum[key] <= 0 {
		delete(sum, key)
	}
	return true
}

// peerAddMemberLocked records uid as a member of the presence channel
// name on p; a user present nowhere before is announced to this node's
// subscribers.
func (a *app) peerAddMemberLocked(p *peer, name, uid string, info json.RawMessage) {
	if kindOf(name) != kindPresence {
		return
	}
	pm := p.state.members[name]
	if pm == nil {
		pm = make(map[string]json.RawMessage)
		p.state.members[name] = pm
	}
	if _, ok := pm[uid]; ok {
		pm[uid] = info
		return
	}
	pm[uid] = info
	vm := a.view.members[name]
	if vm == nil {
		vm = make(map[string]*remoteMember)
		a.view.members[name] = vm
	}
	rm := vm[uid]
	if rm == nil {
		rm = &remoteMember{info: info}
		vm[uid] = rm
		if ch := a.channels[name]; ch != nil && ch.members[uid] == nil {
			a.deliverPresenceLocked(ch, "pusher_internal:member_added", memberAddedData(uid, info), "")
		}
	}
	rm.nodes++
}

// peerRemoveMemberLocked records that uid left the presence channel name
// on p; a user present nowhere any more is announced as gone.
func (a *app) peerRemoveMemberLocked(p *peer, name, uid string) {
	pm := p.state.members[name]
	if _, ok := pm[uid]; !ok {
		return
	}
	delete(pm, uid)
	if len(pm) == 0 {
		delete(p.state.members, name)
	}
	vm := a.view.members[name]
	rm := vm[uid]
	if rm == nil {
		return
	}
	if rm.nodes--; rm.nodes > 0 {
		return
	}
	delete(vm, uid)
	if len(vm) == 0 {
		delete(a.view.members, name)
	}
	if ch := a.channels[name]; ch != nil && ch.members[uid] == nil {
		a.deliverPresenceLocked(ch, "pusher_internal:member_removed", memberRemovedData(uid), "")
	}
}

// remoteMemberLocked is uid's membership of the presence channel name on
// other nodes, or nil.
func (a *app) remoteMemberLocked(name, uid string) *remoteMember {
	return a.view.members[name][uid]
}

// memberCountLocked counts the distinct members of a presence channel on
// every node; ch is the channel here, or nil.
func (a *app) memberCountLocked(name string, ch *channel) int {
	n := 0
	if ch != nil {
		n = len(ch.members)
	}
	for uid := range a.view.members[name] {
		if ch == nil || ch.members[uid] == nil {
			n++
		}
	}
	return n
}

// clusterTick does the periodic work of the cluster view: it sends the
// changed counts, a heartbeat when due, and the snapshot asked for, and
// drops the nodes not heard from. It runs on the cluster loop.
func (a *app) clusterTick(now time.Time, heartbeat bool) {
	a.mu.Lock()
	a.flushCountsLocked()
	if a.snapshotWanted {
		a.snapshotWanted = false
		a.snapshotLocked()
	}
	if heartbeat {
		a.queueLocked(Message{Kind: KindHeartbeat, Seq: a.seq})
		timeout := a.srv.cfg.Cluster.NodeTimeout
		for _, p := range a.view.peers {
			if now.Sub(p.seen) > timeout {
				a.srv.log.Info("realtime: cluster node silent, dropped from the view", "app", a.cfg.ID,
					"node", p.id, "silent_for", now.Sub(p.seen).Round(time.Millisecond))
				a.dropPeerLocked(p)
			} else {
				a.askSnapshotLocked(p, now)
			}
		}
	}
	// Everything above queues into a.out, and so may clusterReceive.
	queued := len(a.out) > 0
	a.mu.Unlock()
	if queued {
		a.flushOut()
	}
}

// clusterLoop owns the cluster view's periodic work: hello at start,
// counts every FlushInterval, heartbeats, expiry, and answers to hellos.
func (s *Server) clusterLoop() {
	cc := s.cfg.Cluster
	for _, a := range s.apps {
		a.mu.Lock()
		a.queueLocked(Message{Kind: KindHello, Seq: a.seq})
		a.mu.Unlock()
		a.flushOut()
	}
	flush, beat := time.NewTicker(cc.FlushInterval), time.NewTicker(cc.HeartbeatInterval)
	defer flush.Stop()
	defer beat.Stop()
	for {
		heartbeat := false
		select {
		case <-s.stop:
			return
		case <-flush.C:
		case <-beat.C:
			heartbeat = true
		case <-s.clusterWake:
		}
		now := time.Now()
		for _, a := range s.apps {
			a.clusterTick(now, heartbeat)
		}
	}
}

// wakeCluster has the cluster loop run now.
func (s *Server) wakeCluster() {
	select {
	case s.clusterWake <- struct{}{}:
	default:
	}
}

func memberAddedData(uid string, info json.RawMessage) string {
	if string(info) == "null" {
		info = nil
	}
	data, _ := json.Marshal(struct {
		UserID   string          `json:"user_id"`
		UserInfo json.RawMessage `json:"user_info,omitempty"`
	}{uid, info})
	return string(data)
}

func memberRemovedData(uid string) string {
	data, _ := json.Marshal(struct {
		UserID string `json:"user_id"`
	}{uid})
	return string(data)
}
