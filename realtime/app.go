package realtime

import (
	"encoding/json"
	"runtime"
	"slices"
	"strings"
	"sync"
)

// countImmediateLimit is the channel size up to which a subscription
// count change is sent at once; larger channels get at most one count per
// sweep, so that N joins do not cost N² frames.
const countImmediateLimit = 100

// app holds the live state of one App on this node.
type app struct {
	srv      *Server
	cfg      App
	webhooks map[string]bool // wanted webhook events; nil when none

	mu       sync.RWMutex
	conns    map[string]*conn // by socket id
	channels map[string]*channel
	users    map[string][]*conn    // signed-in user id → connections
	owners   map[string]int        // bound owner → live subscriptions
	dirty    map[*channel]struct{} // channels owing a subscription count

	// In a cluster (see cluster.go): what the other nodes hold, and what
	// this node owes them. The view stays empty on a single node.
	view clusterView
	// seq numbers this node's changes; out holds messages waiting for
	// flushOut, which pubMu keeps in order.
	seq   uint64
	out   []Message
	pubMu sync.Mutex
	// subsDirty and ownersDirty are the channels and owners whose counts
	// changed since the last flush.
	subsDirty      map[string]struct{}
	ownersDirty    map[string]struct{}
	snapshotWanted bool // a node asked for this node's state
}

// channel is one channel with at least one subscriber on this node.
type channel struct {
	name    string
	kind    channelKind
	subs    map[*conn]string   // subscriber → presence user id ("" otherwise)
	members map[string]*member // presence channels only
}

type member struct {
	info json.RawMessage
	n    int // this user's subscribed sockets
}

// effects are what a state change owes the outside world, carried out
// once the app lock is released.
type effects struct {
	webhooks []WebhookEvent
}

func newApp(s *Server, cfg App) *app {
	a := &app{srv: s, cfg: cfg, conns: make(map[string]*conn), channels: make(map[string]*channel),
		users: make(map[string][]*conn), owners: make(map[string]int), dirty: make(map[*channel]struct{}),
		subsDirty: make(map[string]struct{}), ownersDirty: make(map[string]struct{}), view: newClusterView()}
	if cfg.Webhook.URL != "" {
		a.webhooks = make(map[string]bool)
		evs := cfg.Webhook.Events
		if len(evs) == 0 {
			evs = []string{WebhookChannelOccupied, WebhookChannelVacated, WebhookMemberAdded, WebhookMemberRemoved}
		}
		for _, e := range evs {
			a.webhooks[e] = true
		}
	}
	return a
}

func (a *app) wantsWebhook(name string) bool { return a.webhooks[name] }

// unlockApply releases a.mu, held for writing, then carries out e and
// publishes the changes queued for the cluster, if any: most changes queue
// none (counts go at the next flush), and they need not lock again.
func (a *app) unlockApply(e *effects) {
	queued := len(a.out) > 0
	a.mu.Unlock()
	for _, w := range e.webhooks {
		a.srv.webhooks.add(a, w.Name, w.Channel, w.UserID)
	}
	if queued {
		a.flushOut()
	}
}

// register adds c unless the app is at its connection cap.
func (a *app) register(c *conn) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cfg.MaxConnections > 0 && len(a.conns) >= a.cfg.MaxConnections {
		return false
	}
	a.conns[c.id] = c
	return true
}

func (a *app) hasSocket(id string) bool {
	a.mu.RLock()
	defer a.mu.RUnlock()
	_, ok := a.conns[id]
	return ok
}

// unregister removes c and everything it held.
func (a *app) unregister(c *conn) {
	var e effects
	a.mu.Lock()
	if a.conns[c.id] != c {
		a.mu.Unlock()
		return
	}
	delete(a.conns, c.id)
	for _, ch := range c.subs {
		a.leaveLocked(c, ch, &e)
	}
	c.subs = nil
	if c.user != "" {
		a.dropUserLocked(c)
	}
	a.unlockApply(&e)
}

func (a *app) dropUserLocked(c *conn) {
	list := slices.DeleteFunc(a.users[c.user], func(x *conn) bool { return x == c })
	if len(list) == 0 {
		delete(a.users, c.user)
	} else {
		a.users[c.user] = list
	}
}

// subscribe adds c to the channel and answers pusher_internal:subscription_succeeded.
func (a *app) subscribe(c *conn, name string, kind channelKind, m presenceMember) {
	var e effects
	a.mu.Lock()
	ch := a.channels[name]
	if ch != nil {
		if uid, ok := ch.subs[c]; ok {
			// Subscribing twice is harmless: answer again.
			if kind == kindPresence && uid != m.UserID {
				a.mu.Unlock()
				c.send(subscriptionErrorFrame(name, "AuthError",
					"already subscribed as user "+quote(uid), 400))
				return
			}
			c.send(a.succeededFrameLocked(ch))
			a.mu.Unlock()
			return
		}
	}
	if len(c.subs) >= maxSubscriptionsPerConn {
		a.mu.Unlock()
		c.send(subscriptionErrorFrame(name, "LimitReached",
			"a connection may hold at most "+itoa(maxSubscriptionsPerConn)+" subscriptions", 403))
		return
	}
	// The member cap counts the members of every node, as this node
	// knows them (see ClusterConfig).
	if limit := a.cfg.MaxPresenceMembers; kind == kindPresence && (ch == nil || ch.members[m.UserID] == nil) &&
		a.remoteMemberLocked(name, m.UserID) == nil && a.memberCountLocked(name, ch) >= limit {
		a.mu.Unlock()
		c.send(subscriptionErrorFrame(name, "LimitReached",
			"presence channel is full: at most "+itoa(int64(limit))+" members", 403))
		return
	}
	if ch == nil {
		ch = &channel{name: name, kind: kind, subs: make(map[*conn]string, 1)}
		if kind == kindPresence {
			ch.members = make(map[string]*member)
		}
		a.channels[name] = ch
		e.webhooks = append(e.webhooks, WebhookEvent{Name: WebhookChannelOccupied, Channel: name})
	}
	ch.subs[c] = m.UserID
	c.subs = append(c.subs, ch)
	a.subsChangedLocked(name)
	if c.owner != "" {
		a.owners[c.owner]++
		a.ownerChangedLocked(c.owner)
	}
	if kind == kindPresence {
		mb := ch.members[m.UserID]
		if mb == nil {
			mb = &member{info: m.UserInfo}
			ch.members[m.UserID] = mb
			// Announced here unless a member on another node already;
			// the other nodes decide for their own subscribers.
			if a.remoteMemberLocked(name, m.UserID) == nil {
				a.deliverPresenceLocked(ch, "pusher_internal:member_added", memberAddedData(m.UserID, m.UserInfo), c.id)
			}
			a.publishLocked(Message{Kind: KindMemberAdded, Channels: []string{name}, UserID: m.UserID, UserInfo: m.UserInfo})
			e.webhooks = append(e.webhooks, WebhookEvent{Name: WebhookMemberAdded, Channel: name, UserID: m.UserID})
		}
		mb.n++
	}
	// Queued under the lock so no event of the channel can overtake it.
	c.send(a.succeededFrameLocked(ch))
	a.countChangedLocked(ch)
	a.unlockApply(&e)
}

// deliverPresenceLocked delivers a member_added or member_removed event
// to this node's subscribers of ch at once, under the lock that ordered
// the change, so that a socket joining just after is not told of a member
// it already got in its list.
func (a *app) deliverPresenceLocked(ch *channel, event, data, exclude string) {
	f := textFrame(eventFrame(event, ch.name, data, ""))
	for sub := range ch.subs {
		if sub.id != exclude {
			sub.sendFrame(f)
		}
	}
}

// succeededFrameLocked is pusher_internal:subscription_succeeded for ch,
// listing the members of every node.
func (a *app) succeededFrameLocked(ch *channel) []byte {
	if ch.kind != kindPresence {
		return eventFrame("pusher_internal:subscription_succeeded", ch.name, "{}", "")
	}
	remote := a.view.members[ch.name]
	ids := make([]string, 0, len(ch.members)+len(remote))
	hash := make(map[string]json.RawMessage, len(ch.members)+len(remote))
	for id, mb := range ch.members {
		ids = append(ids, id)
		hash[id] = mb.info
	}
	for id, rm := range remote {
		if _, ok := hash[id]; !ok {
			ids = append(ids, id)
			hash[id] = rm.info
		}
	}
	slices.Sort(ids)
	type presence struct {
		IDs   []string                   `json:"ids"`
		Hash  map[string]json.RawMessage `json:"hash"`
		Count int                        `json:"count"`
	}
	data, _ := json.Marshal(struct {
		Presence presence `json:"presence"`
	}{presence{ids, hash, len(ids)}})
	return eventFrame("pusher_internal:subscription_succeeded", ch.name, string(data), "")
}

// unsubscribe removes c from the channel, if it is subscribed.
func (a *app) unsubscribe(c *conn, name string) {
	var e effects
	a.mu.Lock()
	ch := a.channels[name]
	if ch == nil {
		a.mu.Unlock()
		return
	}
	if _, ok := ch.subs[c]; !ok {
		a.mu.Unlock()
		return
	}
	c.subs = slices.DeleteFunc(c.subs, func(x *channel) bool { return x == ch })
	if len(c.subs) == 0 {
		c.subs = nil
	}
	a.leaveLocked(c, ch, &e)
	a.unlockApply(&e)
}

// leaveLocked removes c from ch; the caller updates c.subs.
func (a *app) leaveLocked(c *conn, ch *channel, e *effects) {
	uid := ch.subs[c]
	delete(ch.subs, c)
	if ch.kind != kindServerToUser {
		a.subsChangedLocked(ch.name)
		if c.owner != "" {
			if a.owners[c.owner]--; a.owners[c.owner] <= 0 {
				delete(a.owners, c.owner)
			}
			a.ownerChangedLocked(c.owner)
		}
	}
	if ch.kind == kindPresence {
		if mb := ch.members[uid]; mb != nil {
			if mb.n--; mb.n <= 0 {
				delete(ch.members, uid)
				if a.remoteMemberLocked(ch.name, uid) == nil {
					a.deliverPresenceLocked(ch, "pusher_internal:member_removed", memberRemovedData(uid), "")
				}
				a.publishLocked(Message{Kind: KindMemberRemoved, Channels: []string{ch.name}, UserID: uid})
				e.webhooks = append(e.webhooks, WebhookEvent{Name: WebhookMemberRemoved, Channel: ch.name, UserID: uid})
			}
		}
	}
	if len(ch.subs) == 0 {
		delete(a.channels, ch.name)
		delete(a.dirty, ch)
		if ch.kind != kindServerToUser {
			e.webhooks = append(e.webhooks, WebhookEvent{Name: WebhookChannelVacated, Channel: ch.name})
		}
		return
	}
	a.countChangedLocked(ch)
}

// countChangedLocked sends or schedules pusher_internal:subscription_count.
func (a *app) countChangedLocked(ch *channel) {
	if !a.cfg.EnableSubscriptionCount || (ch.kind != kindPublic && ch.kind != kindPrivate) {
		return
	}
	if len(ch.subs)+a.view.subs[ch.name] > countImmediateLimit {
		a.dirty[ch] = struct{}{}
		return
	}
	a.sendCountLocked(ch)
}

// sendCountLocked sends the channel's subscription count on every node.
func (a *app) sendCountLocked(ch *channel) {
	f := textFrame(eventFrame("pusher_internal:subscription_count", ch.name,
		`{"subscription_count":`+itoa(int64(len(ch.subs)+a.view.subs[ch.name]))+`}`, ""))
	for c := range ch.subs {
		c.sendFrame(f)
	}
}

// flushCounts sends the counts that were deferred.
func (a *app) flushCounts() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for ch := range a.dirty {
		a.sendCountLocked(ch)
	}
	clear(a.dirty)
}

// signin records that c is signed in as user id and joins it to the
// user's #server-to-user channel.
func (a *app) signin(c *conn, id, userData string) {
	var e effects
	a.mu.Lock()
	if c.user != id {
		if c.user != "" {
			if ch := a.channels[prefixServerToUser+c.user]; ch != nil {
				if _, ok := ch.subs[c]; ok {
					c.subs = slices.DeleteFunc(c.subs, func(x *channel) bool { return x == ch })
					a.leaveLocked(c, ch, &e)
				}
			}
			a.dropUserLocked(c)
		}
		c.user = id
		a.users[id] = append(a.users[id], c)
		a.joinServerToUserLocked(c)
	}
	data, _ := json.Marshal(struct {
		UserData string `json:"user_data"`
	}{userData})
	c.send(eventFrame("pusher:signin_success", "", string(data), ""))
	a.unlockApply(&e)
}

func (a *app) joinServerToUserLocked(c *conn) {
	name := prefixServerToUser + c.user
	ch := a.channels[name]
	if ch == nil {
		ch = &channel{name: name, kind: kindServerToUser, subs: make(map[*conn]string, 1)}
		a.channels[name] = ch
	}
	if _, ok := ch.subs[c]; !ok {
		ch.subs[c] = ""
		c.subs = append(c.subs, ch)
	}
}

// subscribeServerToUser answers pusher-js's subscription to the user's
// own #server-to-user channel; the connection joined it at signin.
func (a *app) subscribeServerToUser(c *conn, name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c.user == "" || name != prefixServerToUser+c.user {
		c.send(subscriptionErrorFrame(name, "AuthError",
			"a #server-to-user channel is open only to its signed-in user", 403))
		return
	}
	a.joinServerToUserLocked(c)
	c.send(eventFrame("pusher_internal:subscription_succeeded", name, "{}", ""))
}

// subscribedAs reports whether c is subscribed to name, with its presence
// user id.
func (a *app) subscribedAs(c *conn, name string) (string, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	ch := a.channels[name]
	if ch == nil {
		return "", false
	}
	uid, ok := ch.subs[c]
	return uid, ok
}

func (a *app) ownerOf(c *conn) string {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return c.owner
}

// bind attributes socket id to owner; it reports whether the socket is here.
func (a *app) bind(id, owner string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.conns[id]
	if c == nil {
		return false
	}
	if c.owner == owner {
		return true
	}
	n := 0
	for _, ch := range c.subs {
		if ch.kind != kindServerToUser {
			n++
		}
	}
	if c.owner != "" {
		if a.owners[c.owner] -= n; a.owners[c.owner] <= 0 {
			delete(a.owners, c.owner)
		}
		a.ownerChangedLocked(c.owner)
	}
	c.owner = owner
	if owner != "" && n > 0 {
		a.owners[owner] += n
		a.ownerChangedLocked(owner)
	}
	return true
}

// parallelFanout is the channel size from which a fan-out is split over
// GOMAXPROCS goroutines: each delivery is a write system call, and large
// channels are bound by them.
const parallelFanout = 512

// fanout hands the frame that build makes (a complete WebSocket frame)
// to every subscriber of the channel but exclude. It returns when every
// subscriber has written or queued it. Every node receives every event
// and most hold no subscriber of a given channel: build runs only when
// one does.
func (a *app) fanout(name string, build func() []byte, exclude string) {
	a.mu.RLock()
	ch := a.channels[name]
	if ch == nil {
		a.mu.RUnlock()
		return
	}
	frame := build()
	if len(ch.subs) < parallelFanout {
		for c := range ch.subs {
			if c.id != exclude {
				c.sendFrame(frame)
			}
		}
		a.mu.RUnlock()
		return
	}
	subs := make([]*conn, 0, len(ch.subs))
	for c := range ch.subs {
		if c.id != exclude {
			subs = append(subs, c)
		}
	}
	a.mu.RUnlock()
	parts := runtime.GOMAXPROCS(0)
	size := (len(subs) + parts - 1) / parts
	var wg sync.WaitGroup
	for part := range slices.Chunk(subs, size) {
		wg.Go(func() {
			for _, c := range part {
				c.sendFrame(frame)
			}
		})
	}
	wg.Wait()
}

// terminateUser closes the connections signed in as user.
func (a *app) terminateUser(user string) int {
	a.mu.RLock()
	list := slices.Clone(a.users[user])
	a.mu.RUnlock()
	for _, c := range list {
		c.closeWith(CodeUnauthorized, "connections of this user were terminated")
	}
	return len(list)
}

// sweep checks every connection for a stuck write or a missing pong and
// pings the silent ones. now is cfg.Now, wallNow time.Now, in unix nanos.
func (a *app) sweep(now, wallNow, activity, pong, writeTimeout int64) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	for _, c := range a.conns {
		if ws := c.writeStart.Load(); ws != 0 && wallNow-ws >= writeTimeout {
			// A client that does not read: fail the stuck write.
			a.srv.log.Debug("realtime: write timeout", "app", a.cfg.ID, "socket_id", c.id)
			_ = c.nc.Close()
			continue
		}
		if sent := c.pingSent.Load(); sent != 0 {
			if now-sent >= pong {
				c.closeWith(CodePongTimeout, "Pong reply not received")
			}
			continue
		}
		if now-c.lastSeen.Load() >= activity {
			c.pingSent.Store(now)
			c.sendFrame(pingFrame)
		}
	}
}

func (a *app) allConns() []*conn {
	a.mu.RLock()
	defer a.mu.RUnlock()
	out := make([]*conn, 0, len(a.conns))
	for _, c := range a.conns {
		out = append(out, c)
	}
	return out
}

// ChannelInfo is the state of one channel. In a cluster it counts every
// node, as this node knows them (see ClusterConfig).
type ChannelInfo struct {
	Name     string
	Occupied bool
	// SubscriptionCount counts subscribed connections.
	SubscriptionCount int
	// UserCount counts distinct presence members (presence channels only).
	UserCount int
}

// infoLocked is the state of the channel name on every node.
func (a *app) infoLocked(name string) ChannelInfo {
	ch := a.channels[name]
	ci := ChannelInfo{Name: name, SubscriptionCount: a.view.subs[name]}
	if ch != nil {
		ci.SubscriptionCount += len(ch.subs)
	}
	if kindOf(name) == kindPresence {
		ci.UserCount = a.memberCountLocked(name, ch)
		// Other nodes' members arrive at once, their counts with the
		// next flush: every member has a subscription at least.
		ci.SubscriptionCount = max(ci.SubscriptionCount, ci.UserCount)
	}
	ci.Occupied = ci.SubscriptionCount > 0
	return ci
}

func (a *app) channelInfo(name string) ChannelInfo {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.infoLocked(name)
}

func (a *app) channelList(prefix string) []ChannelInfo {
	a.mu.RLock()
	out := make([]ChannelInfo, 0, len(a.channels)+len(a.view.subs))
	for name, ch := range a.channels {
		if ch.kind != kindServerToUser && strings.HasPrefix(name, prefix) {
			out = append(out, a.infoLocked(name))
		}
	}
	// Channels held on other nodes only, each once.
	for name := range a.view.subs {
		if a.channels[name] == nil && strings.HasPrefix(name, prefix) {
			out = append(out, a.infoLocked(name))
		}
	}
	for name := range a.view.members {
		if _, counted := a.view.subs[name]; !counted && a.channels[name] == nil && strings.HasPrefix(name, prefix) {
			out = append(out, a.infoLocked(name))
		}
	}
	a.mu.RUnlock()
	slices.SortFunc(out, func(x, y ChannelInfo) int { return strings.Compare(x.Name, y.Name) })
	return out
}

// presenceUsers lists the members of a presence channel on every node.
func (a *app) presenceUsers(name string) []string {
	a.mu.RLock()
	defer a.mu.RUnlock()
	ch := a.channels[name]
	remote := a.view.members[name]
	ids := make([]string, 0, len(remote)+8)
	if ch != nil {
		for id := range ch.members {
			ids = append(ids, id)
		}
	}
	for id := range remote {
		if ch == nil || ch.members[id] == nil {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// ownerSubscriptions counts owner's subscriptions on every node.
func (a *app) ownerSubscriptions(owner string) int {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.owners[owner] + a.view.owners[owner]
}
