package delivery

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/buildbridge/buildbridge/store"
)

// Leases let several nodes share one store's deliveries without
// attempting one twice. A node attempts a delivery only while it holds
// its lease:
//
//   - the node that creates a delivery takes its lease in the insert
//     (the creating node attempts it at once: no extra statement);
//   - recording an attempt releases the lease, in the same update, and is
//     refused when the lease is another node's by then;
//   - a retry, or a delivery loaded at start or redelivered, is claimed
//     through the writer before its attempt; the claim also checks that
//     nobody attempted it meanwhile;
//   - the node renews the leases it holds every RenewInterval, in one
//     statement (per 2000 leases), and forgets those it finds lost;
//   - every ResyncInterval it takes over the due deliveries no node holds
//     (one indexed read when there are none), so those of a node that
//     died are attempted about LeaseTTL after its last renewal;
//   - Close releases what the node still holds.
//
// Leases are compared on each node's wall clock: nodes' clocks must agree
// to well within LeaseTTL (NTP does).

// claimOp asks the writer for the lease of one delivery seen with
// attempts attempts.
type claimOp struct {
	id       int64
	attempts int
	reply    chan claimResult
}

// claimResult is the delivery as stored when the claim was granted, nil
// when it was not.
type claimResult struct {
	row *store.SinkDelivery
	err error
}

// lease is the lease this node takes now, and the time it is taken at.
func (e *Engine) lease() (store.SinkLease, time.Time) {
	now := e.leaseNow()
	return store.SinkLease{Owner: e.cfg.NodeID, Until: now.Add(e.cfg.LeaseTTL)}, now
}

// holds reports whether the node holds an item's lease for long enough to
// start an attempt without claiming it again: half a lease, which a
// healthy renewal never lets it fall under. Called with e.mu held.
func (e *Engine) holds(it *item, now time.Time) bool {
	return !it.lease.IsZero() && it.lease.Sub(now) >= e.cfg.LeaseTTL/2
}

// leased records that the node holds row's lease, as the store says.
// Called with e.mu held.
func (e *Engine) leased(it *item, row *store.SinkDelivery) {
	if row.LeaseOwner != e.cfg.NodeID || row.LeaseUntil == nil {
		return
	}
	e.leaseGen++
	it.lease, it.leaseGen = *row.LeaseUntil, e.leaseGen
}

// claim takes the lease of an item a worker is about to attempt, through
// the writer (so that it reaches the store after the item's last record).
// When the claim is refused (another node holds it, or attempted it since
// this node saw it) the item is forgotten; when the store failed, the
// item is tried again a second later. It reports whether the attempt may
// go on; when it may not, the worker's hold on the item is undone.
func (e *Engine) claim(t *target, it *item, ent *sinkEntry, attempts int) bool {
	reply := make(chan claimResult, 1)
	res := claimResult{err: ErrClosed}
	if e.send(recOp{claim: &claimOp{id: it.id, attempts: attempts, reply: reply}}) {
		res = <-reply
	}
	e.mu.Lock()
	if res.err == nil && res.row != nil {
		e.leased(it, res.row)
		it.tries = res.row.Tries // a redelivery elsewhere starts a new round
		e.mu.Unlock()
		return true
	}
	it.inflight = false
	t.inflight--
	var closeSink *sinkEntry
	if ent != nil {
		ent.refs--
		if ent.retired && ent.refs == 0 {
			closeSink = ent
		}
	}
	switch {
	case errors.Is(res.err, ErrClosed) || !e.running:
		t.remove(it)
		delete(e.items, it.id)
	case res.err != nil:
		it.due = e.cfg.Now().Add(time.Second)
		t.requeue(it)
		e.log.Warn("claiming a delivery's lease failed; trying again", "delivery_id", it.id, "err", res.err)
	default:
		t.remove(it)
		delete(e.items, it.id)
		e.m.lost.Inc()
		e.log.Debug("delivery held by another node, or attempted since: left to it", "delivery_id", it.id)
	}
	e.mu.Unlock()
	if closeSink != nil {
		e.closeSink(closeSink)
	}
	return false
}

// renewChunk bounds the leases renewed by one statement, so that a large
// backlog does not hold SQLite's write lock for long.
const renewChunk = 2000

// renew renews the node's leases every RenewInterval.
func (e *Engine) renew() {
	defer e.background.Done()
	tick := time.NewTicker(e.cfg.RenewInterval)
	defer tick.Stop()
	for {
		select {
		case <-e.bg.Done():
			return
		case <-tick.C:
		}
		e.renewLeases(e.bg)
	}
}

// renewLeases extends every lease the node holds, in one statement per
// renewChunk leases, and forgets the deliveries whose leases it lost
// (another node took them over after they ended, or they were finished
// elsewhere); one in flight goes on, and its record will be refused.
// Nothing is sent when the node holds nothing. What a node holds is what
// it attempts or is about to: normally a few deliveries per target; a
// target slower than its arrivals makes it more (renewing 10,000 leases
// took 40 ms on SQLite, 150 ms on PostgreSQL, on a 2-core VM).
func (e *Engine) renewLeases(ctx context.Context) {
	type held struct {
		it  *item
		gen uint64
	}
	e.mu.Lock()
	var ids []int64
	var snap []held
	for id, it := range e.items {
		if !it.lease.IsZero() {
			ids = append(ids, id)
			snap = append(snap, held{it, it.leaseGen})
		}
	}
	e.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	lease, _ := e.lease()
	var renewed []int64
	for chunk := range slices.Chunk(ids, renewChunk) {
		got, err := e.cfg.Store.RenewSinkLeases(ctx, lease, chunk)
		if err != nil {
			if ctx.Err() == nil {
				e.log.Error("renewing delivery leases; they end unless a renewal succeeds", "count", len(ids), "err", err)
			}
			return
		}
		renewed = append(renewed, got...)
	}
	slices.Sort(renewed)
	lost := 0
	e.mu.Lock()
	for _, h := range snap {
		it := h.it
		if e.items[it.id] != it || it.leaseGen != h.gen || it.lease.IsZero() {
			continue // finished, released or taken again meanwhile
		}
		if _, ok := slices.BinarySearch(renewed, it.id); ok {
			it.lease = lease.Until
			continue
		}
		lost++
		it.lease = time.Time{}
		if !it.inflight {
			it.t.remove(it)
			delete(e.items, it.id)
		}
	}
	e.mu.Unlock()
	if lost > 0 {
		e.m.lost.Add(float64(lost))
		e.log.Warn("delivery leases lost: other nodes hold those deliveries now", "count", lost)
	}
}

// pickup takes over the due deliveries that no node holds.
func (e *Engine) pickup(ctx context.Context) (int, error) {
	const limit = 500
	n := 0
	for {
		lease, now := e.lease()
		rows, err := e.cfg.Store.PickupSinkDeliveries(ctx, lease, now, e.cfg.Now().Add(-e.cfg.StaleAfter), limit)
		if err != nil {
			return n, err
		}
		var refused []*item
		var drop []int64
		e.mu.Lock()
		clock := e.cfg.Now()
		for i := range rows {
			row := &rows[i]
			if e.unrecorded[row.ID] {
				// Finished here; its record, on its way, is written since
				// the lease is this node's, and releases it.
				continue
			}
			if e.closed {
				drop = append(drop, row.ID)
				continue
			}
			if it := e.items[row.ID]; it != nil {
				// Held here without a lease. When its last record is still
				// on its way (more attempts here than stored), the worker's
				// claim, which follows the record, takes the lease.
				if !it.inflight && it.attempts <= row.Attempts {
					it.attempts, it.tries = row.Attempts, row.Tries
					if row.NextAt != nil && !row.NextAt.Equal(it.due) {
						it.t.reschedule(it, *row.NextAt)
					}
					e.leased(it, row)
					e.kick(it.t, clock)
				}
				continue
			}
			it := itemFrom(row)
			if it.due.IsZero() {
				it.due = clock
			}
			e.leased(it, row)
			if !e.add(it, clock) {
				refused = append(refused, it)
				continue
			}
			n++
		}
		e.mu.Unlock()
		e.m.takenOver.Add(float64(n))
		e.failDisabled(ctx, refused)
		if len(drop) > 0 {
			if err := e.cfg.Store.ReleaseSinkLeases(ctx, e.cfg.NodeID, drop); err != nil && ctx.Err() == nil {
				e.log.Warn("releasing delivery leases", "count", len(drop), "err", err)
			}
		}
		if len(rows) < limit || ctx.Err() != nil {
			return n, nil
		}
	}
}

// releaseAll gives up, at Close, the leases of what the node still holds,
// so that other nodes take those deliveries over at once instead of
// after LeaseTTL.
func (e *Engine) releaseAll() {
	e.mu.Lock()
	ids := append([]int64(nil), e.abandoned...)
	for id, it := range e.items {
		if !it.lease.IsZero() {
			ids = append(ids, id)
		}
	}
	e.abandoned = nil
	e.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.cfg.Store.ReleaseSinkLeases(ctx, e.cfg.NodeID, ids); err != nil {
		e.log.Warn("releasing delivery leases at close; other nodes take those deliveries over when the leases end",
			"count", len(ids), "err", err)
	}
}
