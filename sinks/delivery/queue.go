package delivery

import (
	"container/heap"
	"sort"
	"time"

	"github.com/buildbridge/buildbridge/sinks"
)

// item is one pending delivery held by the engine. The engine's mutex
// guards every field except d, which only the worker holding the item
// (inflight) touches.
type item struct {
	id        int64
	msgID     string
	eventID   string
	sink      string
	target    string
	sinkType  string
	eventType string
	buildID   int64
	seq       int64
	due       time.Time
	created   time.Time
	tries     int // attempts in this round: the position in the schedule
	attempts  int // every attempt ever made
	d         *sinks.Delivery
	heapIdx   int // index in target.ready, -1 when not there
	inflight  bool
	t         *target
	// lease is when this node's lease of the delivery ends, on the
	// engine's lease clock; zero when the node does not hold it (it
	// claims it before an attempt). leaseGen numbers the lease, so that a
	// renewal answered after the lease was given up and taken again does
	// not judge the new one.
	lease    time.Time
	leaseGen uint64
}

// target is the queue of one (sink, target): its own workers, its own
// concurrency and rate limits, so it never holds up another.
//
// Deliveries of one build form a lane ordered by seq; only the head of a
// lane may be attempted, so a build's events reach the target in order,
// while other builds' lanes go on. Deliveries without a build are not
// ordered. ready holds what may be attempted (lane heads and deliveries
// without a build, not in flight), earliest due first.
type target struct {
	sink, name string
	ready      itemHeap
	lanes      map[int64]*lane
	count      int // pending items, in flight included
	inflight   int
	workers    int
	wakeAt     time.Time // scheduler wake-up registered for this target
	limiter    *bucket
	disabled   bool
	reason     string
	failing    time.Time // start of the current run of failures
}

type lane struct{ items []*item } // by (seq, id)

func newTarget(sink, name string) *target {
	return &target{sink: sink, name: name, lanes: map[int64]*lane{}}
}

// add queues an item.
func (t *target) add(it *item) {
	it.t, it.heapIdx = t, -1
	t.count++
	if it.buildID == 0 {
		heap.Push(&t.ready, it)
		return
	}
	l := t.lanes[it.buildID]
	if l == nil {
		l = &lane{}
		t.lanes[it.buildID] = l
	}
	p := sort.Search(len(l.items), func(i int) bool { return it.before(l.items[i]) })
	if p == 0 && len(l.items) > 0 && l.items[0].inflight {
		p = 1 // the head is being sent already: come next
	}
	l.items = append(l.items, nil)
	copy(l.items[p+1:], l.items[p:])
	l.items[p] = it
	if p == 0 {
		if len(l.items) > 1 && l.items[1].heapIdx >= 0 {
			heap.Remove(&t.ready, l.items[1].heapIdx)
		}
		heap.Push(&t.ready, it)
	}
}

func (a *item) before(b *item) bool {
	if a.seq != b.seq {
		return a.seq < b.seq
	}
	return a.id < b.id
}

// remove drops a finished item; the next of its lane becomes ready.
func (t *target) remove(it *item) {
	if it.heapIdx >= 0 {
		heap.Remove(&t.ready, it.heapIdx)
	}
	t.count--
	if it.buildID == 0 {
		return
	}
	l := t.lanes[it.buildID]
	if l == nil {
		return
	}
	for i, x := range l.items {
		if x != it {
			continue
		}
		l.items = append(l.items[:i], l.items[i+1:]...)
		if i == 0 && len(l.items) > 0 && !l.items[0].inflight && l.items[0].heapIdx < 0 {
			heap.Push(&t.ready, l.items[0])
		}
		break
	}
	if len(l.items) == 0 {
		delete(t.lanes, it.buildID)
	}
}

// requeue puts an item back after a temporary failure, at its new due time.
func (t *target) requeue(it *item) {
	if it.buildID != 0 {
		if l := t.lanes[it.buildID]; l == nil || l.items[0] != it {
			return // not a lane head: it is ready when its lane reaches it
		}
	}
	heap.Push(&t.ready, it)
}

// reschedule changes a queued item's due time.
func (t *target) reschedule(it *item, due time.Time) {
	it.due = due
	if it.heapIdx >= 0 {
		heap.Fix(&t.ready, it.heapIdx)
	}
}

// popDue takes the earliest ready item if it is due.
func (t *target) popDue(now time.Time) *item {
	if len(t.ready) == 0 || t.ready[0].due.After(now) {
		return nil
	}
	return heap.Pop(&t.ready).(*item)
}

// next is the due time of the earliest ready item.
func (t *target) next() (time.Time, bool) {
	if len(t.ready) == 0 {
		return time.Time{}, false
	}
	return t.ready[0].due, true
}

// itemHeap orders ready items by due time, then id.
type itemHeap []*item

func (h itemHeap) Len() int { return len(h) }
func (h itemHeap) Less(i, j int) bool {
	if !h[i].due.Equal(h[j].due) {
		return h[i].due.Before(h[j].due)
	}
	return h[i].id < h[j].id
}
func (h itemHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx, h[j].heapIdx = i, j
}
func (h *itemHeap) Push(x any) {
	it := x.(*item)
	it.heapIdx = len(*h)
	*h = append(*h, it)
}
func (h *itemHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	it.heapIdx = -1
	*h = old[:len(old)-1]
	return it
}

// wake is a scheduler entry: look at target t at time at.
type wake struct {
	at time.Time
	t  *target
}

type wakeHeap []wake

func (h wakeHeap) Len() int           { return len(h) }
func (h wakeHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h wakeHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *wakeHeap) Push(x any)        { *h = append(*h, x.(wake)) }
func (h *wakeHeap) Pop() any {
	old := *h
	w := old[len(old)-1]
	*h = old[:len(old)-1]
	return w
}
