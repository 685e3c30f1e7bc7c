package store

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"
)

func newSinkDelivery(event, sink, target string, owner int64, next time.Time) SinkDelivery {
	return SinkDelivery{MessageID: "msg_" + event + sink + target, EventID: event, EventType: "build-state-changed", Sink: sink,
		SinkType: "webhook", Target: target, Route: "r", OwnerID: owner, BuildID: 7, Seq: 3,
		NextAt: &next, Payload: []byte(`{"body":"x"}`)}
}

func TestDeliveriesCreateDeduplicates(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		now := time.Now().UTC().Truncate(time.Millisecond)
		first := []SinkDelivery{newSinkDelivery("e1", "hook", "https://a", 1, now), newSinkDelivery("e1", "hook", "https://b", 1, now)}
		got, err := s.CreateSinkDeliveries(ctx, first)
		if err != nil || len(got) != 2 || got[0].ID == 0 || got[1].ID == got[0].ID || got[0].Status != DeliveryPending {
			t.Fatalf("create: %+v %v", got, err)
		}
		// The same event again (a redelivery from the bus) plus one new
		// target: only the new one is created.
		again := append(first, newSinkDelivery("e1", "hook", "https://c", 1, now))
		got2, err := s.CreateSinkDeliveries(ctx, again)
		if err != nil || len(got2) != 1 || got2[0].Target != "https://c" {
			t.Fatalf("create again: %+v %v", got2, err)
		}
		d, err := s.SinkDelivery(ctx, got[0].ID)
		if err != nil || string(d.Payload) != `{"body":"x"}` || d.NextAt == nil || !d.NextAt.Equal(now) || d.MessageID != "msg_e1hookhttps://a" {
			t.Fatalf("by id: %+v %v", d, err)
		}
		if _, err := s.SinkDelivery(ctx, 9999); !errors.Is(err, ErrNotFound) {
			t.Fatalf("missing delivery: %v", err)
		}
		// A delivery created failed (a disabled endpoint) is finished.
		dead := newSinkDelivery("e2", "hook", "https://a", 1, now)
		dead.Status, dead.LastError = DeliveryFailed, "endpoint disabled"
		got3, err := s.CreateSinkDeliveries(ctx, []SinkDelivery{dead})
		if err != nil || len(got3) != 1 || got3[0].FinishedAt == nil || got3[0].NextAt != nil {
			t.Fatalf("create failed: %+v %v", got3, err)
		}
		pend, err := s.PendingSinkDeliveries(ctx, 0, time.Time{}, 100)
		if err != nil || len(pend) != 3 {
			t.Fatalf("pending: %d %v", len(pend), err)
		}
	})
}

func TestDeliveriesAttemptsAndRedelivery(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		now := time.Now().UTC().Truncate(time.Millisecond)
		got, err := s.CreateSinkDeliveries(ctx, []SinkDelivery{newSinkDelivery("e1", "hook", "https://a", 1, now)})
		if err != nil {
			t.Fatal(err)
		}
		id := got[0].ID
		next := now.Add(5 * time.Second)
		_, err = s.RecordSinkAttempts(ctx, "", []SinkAttemptRecord{{
			Attempt: SinkAttempt{DeliveryID: id, Number: 1, Time: now, Duration: 1500 * time.Microsecond, StatusCode: 503,
				Outcome: OutcomeRetry, Error: "HTTP 503", Header: http.Header{"Retry-After": {"5"}}, Body: []byte("busy")},
			Status: DeliveryPending, Tries: 1, NextAt: &next,
		}})
		if err != nil {
			t.Fatal(err)
		}
		d, _ := s.SinkDelivery(ctx, id)
		if d.Status != DeliveryPending || d.Attempts != 1 || d.Tries != 1 || d.LastCode != 503 || !d.NextAt.Equal(next) {
			t.Fatalf("after a retry: %+v", d)
		}
		if due, _ := s.PendingSinkDeliveries(ctx, 0, now.Add(time.Second), 10); len(due) != 0 {
			t.Fatalf("not yet due, listed: %+v", due)
		}
		if due, _ := s.PendingSinkDeliveries(ctx, 0, next.Add(time.Millisecond), 10); len(due) != 1 {
			t.Fatalf("due: %+v", due)
		}
		_, err = s.RecordSinkAttempts(ctx, "", []SinkAttemptRecord{{
			Attempt: SinkAttempt{DeliveryID: id, Number: 2, Time: next, Duration: time.Millisecond, StatusCode: 400, Outcome: OutcomePermanent, Error: "HTTP 400"},
			Status:  DeliveryFailed, Tries: 2,
		}})
		if err != nil {
			t.Fatal(err)
		}
		d, _ = s.SinkDelivery(ctx, id)
		if d.Status != DeliveryFailed || d.FinishedAt == nil || d.NextAt != nil || d.Attempts != 2 {
			t.Fatalf("after a permanent failure: %+v", d)
		}
		atts, err := s.SinkAttempts(ctx, id)
		if err != nil || len(atts) != 2 || atts[0].Number != 1 || atts[1].Number != 2 || atts[0].Header.Get("Retry-After") != "5" ||
			string(atts[0].Body) != "busy" || atts[0].Duration != 1500*time.Microsecond || atts[1].Outcome != OutcomePermanent {
			t.Fatalf("attempts: %+v %v", atts, err)
		}
		// Redelivery: pending again, a new round, attempts keep counting.
		d, err = s.RedeliverSinkDelivery(ctx, id, now)
		if err != nil || d.Status != DeliveryPending || d.Tries != 0 || d.Attempts != 2 || d.FinishedAt != nil {
			t.Fatalf("redeliver: %+v %v", d, err)
		}
		if _, err := s.RedeliverSinkDelivery(ctx, 424242, now); !errors.Is(err, ErrNotFound) {
			t.Fatalf("redeliver missing: %v", err)
		}
		// An attempt record for a deleted delivery is skipped.
		if _, err := s.RecordSinkAttempts(ctx, "", []SinkAttemptRecord{{Attempt: SinkAttempt{DeliveryID: 424242, Number: 1, Outcome: OutcomeSuccess}, Status: DeliverySucceeded}}); err != nil {
			t.Fatal(err)
		}
	})
}

func TestDeliveriesListFiltersAndCursor(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		now := time.Now().UTC()
		var list []SinkDelivery
		for i := 0; i < 7; i++ {
			owner := int64(1 + i%2)
			d := newSinkDelivery(fmt.Sprintf("e%d", i), "hook", "https://a", owner, now)
			if i == 3 {
				d.Sink, d.Target = "other", "x"
			}
			list = append(list, d)
		}
		if _, err := s.CreateSinkDeliveries(ctx, list); err != nil {
			t.Fatal(err)
		}
		all, err := s.ListSinkDeliveries(ctx, SinkDeliveryFilter{})
		if err != nil || len(all) != 7 || all[0].ID < all[6].ID {
			t.Fatalf("all: %d %v", len(all), err)
		}
		mine, _ := s.ListSinkDeliveries(ctx, SinkDeliveryFilter{OwnerID: 2})
		if len(mine) != 3 {
			t.Fatalf("owner 2: %d", len(mine))
		}
		if l, _ := s.ListSinkDeliveries(ctx, SinkDeliveryFilter{Sink: "other"}); len(l) != 1 || l[0].EventID != "e3" {
			t.Fatalf("sink filter: %+v", l)
		}
		if l, _ := s.ListSinkDeliveries(ctx, SinkDeliveryFilter{EventID: "e5", Target: "https://a", Status: DeliveryPending}); len(l) != 1 {
			t.Fatalf("event filter: %+v", l)
		}
		if l, _ := s.ListSinkDeliveries(ctx, SinkDeliveryFilter{Until: now.Add(-time.Hour)}); len(l) != 0 {
			t.Fatalf("until filter: %+v", l)
		}
		if l, _ := s.ListSinkDeliveries(ctx, SinkDeliveryFilter{Since: now.Add(-time.Hour)}); len(l) != 7 {
			t.Fatalf("since filter: %d", len(l))
		}
		// Pages of 3 by cursor cover everything once.
		seen := map[int64]bool{}
		var before int64
		for page := 0; page < 5; page++ {
			l, err := s.ListSinkDeliveries(ctx, SinkDeliveryFilter{Limit: 3, Before: before})
			if err != nil {
				t.Fatal(err)
			}
			if len(l) == 0 {
				break
			}
			for _, d := range l {
				if seen[d.ID] {
					t.Fatalf("delivery %d on two pages", d.ID)
				}
				seen[d.ID] = true
			}
			before = l[len(l)-1].ID
		}
		if len(seen) != 7 {
			t.Fatalf("pages covered %d of 7", len(seen))
		}
	})
}

func TestDeliveryEndpointsAndRecover(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		now := time.Now().UTC().Truncate(time.Millisecond)
		created, err := s.CreateSinkDeliveries(ctx, []SinkDelivery{
			newSinkDelivery("e1", "hook", "https://a", 1, now), newSinkDelivery("e2", "hook", "https://a", 2, now),
			newSinkDelivery("e1", "hook", "https://b", 1, now),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SetSinkEndpointFailing(ctx, "hook", "https://a", &now); err != nil {
			t.Fatal(err)
		}
		changed, failed, err := s.DisableSinkEndpoint(ctx, "hook", "https://a", "HTTP 410 Gone", "evt_x", now)
		if err != nil || !changed || failed != 2 {
			t.Fatalf("disable: %v %d %v", changed, failed, err)
		}
		if changed, _, err := s.DisableSinkEndpoint(ctx, "hook", "https://a", "again", "evt_y", now); err != nil || changed {
			t.Fatalf("second disable: %v %v", changed, err)
		}
		eps, err := s.SinkEndpoints(ctx, "hook")
		if err != nil || len(eps) != 1 || eps[0].DisabledAt == nil || eps[0].Reason != "HTTP 410 Gone" || eps[0].EventID != "evt_x" ||
			eps[0].FailingSince == nil || eps[0].NotifiedAt != nil {
			t.Fatalf("endpoints: %+v %v", eps, err)
		}
		if err := s.MarkSinkEndpointNotified(ctx, "hook", "https://a", "evt_x"); err != nil {
			t.Fatal(err)
		}
		if eps, _ = s.SinkEndpoints(ctx, ""); eps[0].NotifiedAt == nil {
			t.Fatalf("not marked notified: %+v", eps)
		}
		d, _ := s.SinkDelivery(ctx, created[0].ID)
		if d.Status != DeliveryFailed || d.LastError != "endpoint disabled: HTTP 410 Gone" {
			t.Fatalf("pending delivery of a disabled endpoint: %+v", d)
		}
		// Recovery skips disabled endpoints.
		if l, err := s.RecoverSinkDeliveries(ctx, SinkRecoverFilter{Sink: "hook", Since: now.Add(-time.Hour)}, now); err != nil || len(l) != 0 {
			t.Fatalf("recover while disabled: %+v %v", l, err)
		}
		if err := s.EnableSinkEndpoint(ctx, "hook", "https://a"); err != nil {
			t.Fatal(err)
		}
		if eps, _ = s.SinkEndpoints(ctx, "hook"); eps[0].DisabledAt != nil || eps[0].FailingSince != nil {
			t.Fatalf("enable: %+v", eps)
		}
		if l, _ := s.RecoverSinkDeliveries(ctx, SinkRecoverFilter{Sink: "hook", Since: now.Add(time.Hour)}, now); len(l) != 0 {
			t.Fatalf("recover since a later time: %+v", l)
		}
		if l, _ := s.RecoverSinkDeliveries(ctx, SinkRecoverFilter{Sink: "hook", Since: now.Add(-time.Hour), OwnerID: 2}, now); len(l) != 1 || l[0].EventID != "e2" {
			t.Fatalf("recover by owner: %+v", l)
		}
		l, err := s.RecoverSinkDeliveries(ctx, SinkRecoverFilter{Sink: "hook", Since: now.Add(-time.Hour)}, now)
		if err != nil || len(l) != 1 || l[0].Status != DeliveryPending || l[0].NextAt == nil {
			t.Fatalf("recover: %+v %v", l, err)
		}
		if _, err := s.RecoverSinkDeliveries(ctx, SinkRecoverFilter{}, now); err == nil {
			t.Fatal("recover without a sink accepted")
		}
	})
}

// Leases: a delivery created by a node is leased to it; two nodes claiming
// and picking up concurrently never get the same delivery; an ended lease
// is taken over; a record by a node whose lease was taken over is refused
// and changes nothing.
func TestDeliveryLeases(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		now := time.Now()
		a := SinkLease{Owner: "node-a", Until: now.Add(time.Hour)}
		b := SinkLease{Owner: "node-b", Until: now.Add(time.Hour)}

		// Created leased: node B can neither list nor claim them.
		res, err := s.WriteSinkBatch(ctx, SinkBatch{Lease: a, Creates: []SinkDelivery{
			newSinkDelivery("e1", "hook", "https://a", 1, now), newSinkDelivery("e2", "hook", "https://a", 1, now)}})
		if err != nil || len(res.Created) != 2 || res.Created[0].LeaseOwner != "node-a" {
			t.Fatalf("create leased: %+v %v", res, err)
		}
		ids := []int64{res.Created[0].ID, res.Created[1].ID}
		if d, _ := s.SinkDelivery(ctx, ids[0]); d.LeaseOwner != "node-a" || d.LeaseUntil == nil || d.LeaseUntil.UnixMilli() != a.Until.UnixMilli() {
			t.Fatalf("stored lease: %+v", d)
		}
		if l, _ := s.FreeSinkDeliveries(ctx, "node-b", now, 0, 10); len(l) != 0 {
			t.Fatalf("node B sees node A's leased deliveries as free: %+v", l)
		}
		if l, _ := s.FreeSinkDeliveries(ctx, "node-a", now, 0, 10); len(l) != 2 {
			t.Fatalf("node A's own leased deliveries: %+v", l)
		}
		if l, err := s.PickupSinkDeliveries(ctx, b, now, now.Add(time.Hour), 10); err != nil || len(l) != 0 {
			t.Fatalf("node B picked up leased deliveries: %+v %v", l, err)
		}
		if r, _ := s.WriteSinkBatch(ctx, SinkBatch{Lease: b, Claims: []SinkClaim{{ID: ids[0]}}}); len(r.Claimed) != 0 {
			t.Fatalf("node B's claim of a leased delivery granted: %+v", r.Claimed)
		}
		if got, err := s.RenewSinkLeases(ctx, b, ids); err != nil || len(got) != 0 {
			t.Fatalf("node B renewed node A's leases: %v %v", got, err)
		}
		if got, err := s.RenewSinkLeases(ctx, SinkLease{Owner: "node-a", Until: now.Add(2 * time.Hour)}, ids); err != nil || len(got) != 2 {
			t.Fatalf("renew: %v %v", got, err)
		}

		// The lease ends (node A died): node B takes the deliveries over.
		later := now.Add(3 * time.Hour)
		taken, err := s.PickupSinkDeliveries(ctx, SinkLease{Owner: "node-b", Until: later.Add(time.Minute)}, later, later, 10)
		if err != nil || len(taken) != 2 || taken[0].LeaseOwner != "node-b" {
			t.Fatalf("take-over: %+v %v", taken, err)
		}
		if got, _ := s.RenewSinkLeases(ctx, SinkLease{Owner: "node-a", Until: later.Add(time.Hour)}, ids); len(got) != 0 {
			t.Fatalf("node A renewed leases node B took over: %v", got)
		}
		// Node A, back, records an attempt it made: refused, nothing written.
		rec := func(id int64, n int, status string) SinkAttemptRecord {
			next := later.Add(time.Minute)
			r := SinkAttemptRecord{Attempt: SinkAttempt{DeliveryID: id, Number: n, Time: later, StatusCode: 503, Outcome: OutcomeRetry,
				Error: "HTTP 503"}, Status: status, Tries: n}
			if status == DeliveryPending {
				r.NextAt = &next
			} else {
				r.Attempt.StatusCode, r.Attempt.Outcome, r.Attempt.Error = 200, OutcomeSuccess, ""
			}
			return r
		}
		refused, err := s.RecordSinkAttempts(ctx, "node-a", []SinkAttemptRecord{rec(ids[0], 1, DeliverySucceeded)})
		if err != nil || len(refused) != 1 || refused[0] != ids[0] {
			t.Fatalf("record after the take-over: refused %v, %v", refused, err)
		}
		if d, _ := s.SinkDelivery(ctx, ids[0]); d.Status != DeliveryPending || d.Attempts != 0 || d.LeaseOwner != "node-b" {
			t.Fatalf("a refused record changed the delivery: %+v", d)
		}
		if atts, _ := s.SinkAttempts(ctx, ids[0]); len(atts) != 0 {
			t.Fatalf("a refused record logged an attempt: %+v", atts)
		}
		// Node B's records are written and release the leases.
		refused, err = s.RecordSinkAttempts(ctx, "node-b", []SinkAttemptRecord{rec(ids[0], 1, DeliveryPending), rec(ids[1], 1, DeliverySucceeded)})
		if err != nil || len(refused) != 0 {
			t.Fatalf("holder's records: refused %v, %v", refused, err)
		}
		d, _ := s.SinkDelivery(ctx, ids[0])
		if d.Attempts != 1 || d.Status != DeliveryPending || d.LeaseOwner != "" || d.LeaseUntil != nil {
			t.Fatalf("after the holder's record: %+v", d)
		}
		// A claim made on a stale view (0 attempts seen, 1 made) is refused;
		// on the current one it is granted, with the row as it is.
		r, err := s.WriteSinkBatch(ctx, SinkBatch{Lease: a, Claims: []SinkClaim{{ID: ids[0], Attempts: 0}}, Now: later})
		if err != nil || len(r.Claimed) != 0 {
			t.Fatalf("stale claim granted: %+v %v", r.Claimed, err)
		}
		a2 := SinkLease{Owner: "node-a", Until: later.Add(time.Minute)}
		r, err = s.WriteSinkBatch(ctx, SinkBatch{Lease: a2, Claims: []SinkClaim{{ID: ids[0], Attempts: 1}, {ID: ids[1], Attempts: 1}}, Now: later})
		if err != nil || len(r.Claimed) != 1 || r.Claimed[0].ID != ids[0] || r.Claimed[0].Attempts != 1 || r.Claimed[0].LeaseOwner != "node-a" {
			t.Fatalf("claim (the succeeded one must not be granted): %+v %v", r.Claimed, err)
		}
		// Redelivering a pending delivery keeps its holder's lease; a
		// finished one comes back without a lease.
		if d, _ := s.RedeliverSinkDelivery(ctx, ids[0], later); d.LeaseOwner != "node-a" {
			t.Fatalf("redelivery of a pending delivery dropped its lease: %+v", d)
		}
		if d, _ := s.RedeliverSinkDelivery(ctx, ids[1], later); d.LeaseOwner != "" || d.Status != DeliveryPending {
			t.Fatalf("redelivery of a finished delivery: %+v", d)
		}
		// A clean stop releases: free at once for another node.
		if err := s.ReleaseSinkLeases(ctx, "node-a", ids); err != nil {
			t.Fatal(err)
		}
		if l, _ := s.FreeSinkDeliveries(ctx, "node-b", now, 0, 10); len(l) != 2 {
			t.Fatalf("released deliveries not free: %+v", l)
		}
	})
}

// Two nodes claiming the same free deliveries at once, by pick-up and by
// claim, never both get one; together they get every one.
func TestDeliveryLeasesConcurrentClaims(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		now := time.Now()
		const n = 120
		var list []SinkDelivery
		for i := range n {
			list = append(list, newSinkDelivery(fmt.Sprintf("e%d", i), "hook", "https://a", 1, now.Add(-time.Minute)))
		}
		created, err := s.CreateSinkDeliveries(ctx, list)
		if err != nil || len(created) != n {
			t.Fatalf("create: %d %v", len(created), err)
		}
		got := make([][]int64, 2)
		errs := make(chan error, 2)
		for node := range 2 {
			go func() {
				lease := SinkLease{Owner: fmt.Sprintf("node-%d", node), Until: now.Add(time.Hour)}
				for round := 0; ; round++ {
					// Node 0 claims one by one from the lowest id, node 1 from
					// the highest; both pick up in batches of 7 in between.
					var claims []SinkClaim
					for k := range 5 {
						i := (round*5 + k) % n
						if node == 1 {
							i = n - 1 - i
						}
						claims = append(claims, SinkClaim{ID: created[i].ID})
					}
					r, err := s.WriteSinkBatch(ctx, SinkBatch{Lease: lease, Claims: claims, Now: now})
					if err != nil {
						errs <- err
						return
					}
					for _, d := range r.Claimed {
						got[node] = append(got[node], d.ID)
					}
					p, err := s.PickupSinkDeliveries(ctx, lease, now, now, 7)
					if err != nil {
						errs <- err
						return
					}
					for _, d := range p {
						got[node] = append(got[node], d.ID)
					}
					if len(p) == 0 && round*5 >= n {
						errs <- nil
						return
					}
				}
			}()
		}
		for range 2 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		// A node's claim of its own lease is granted again: count each
		// delivery once per node.
		seen := map[int64]int{}
		for node, ids := range got {
			for _, id := range ids {
				if prev, ok := seen[id]; ok && prev != node {
					t.Fatalf("delivery %d granted to node %d and node %d", id, prev, node)
				}
				seen[id] = node
			}
		}
		if len(seen) != n {
			t.Fatalf("%d of %d deliveries claimed", len(seen), n)
		}
		counts := [2]int{}
		for _, node := range seen {
			counts[node]++
		}
		t.Logf("node 0 got %d, node 1 got %d", counts[0], counts[1])
	})
}

// Batches are written in multi-row chunks (32, 8, 1): every row must get
// its own id and its own payload back, whatever the chunking, and a
// message id twice in one batch is created once.
func TestDeliveriesCreateInChunks(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		now := time.Now().UTC().Truncate(time.Millisecond)
		for _, n := range []int{1, 7, 8, 33, 45, 100} {
			var list []SinkDelivery
			for i := range n {
				d := newSinkDelivery(fmt.Sprintf("chunk%d-%d", n, i), "hook", "https://a", 1, now)
				d.Payload = []byte(fmt.Sprintf(`{"n":%d,"i":%d}`, n, i))
				list = append(list, d)
			}
			list = append(list, list[n/2]) // the same message twice in one batch
			got, err := s.CreateSinkDeliveries(ctx, list)
			if err != nil || len(got) != n {
				t.Fatalf("%d rows: created %d, %v", n, len(got), err)
			}
			ids := map[int64]bool{}
			for _, d := range got {
				if d.ID == 0 || ids[d.ID] {
					t.Fatalf("%d rows: id %d missing or twice", n, d.ID)
				}
				ids[d.ID] = true
				stored, err := s.SinkDelivery(ctx, d.ID)
				if err != nil || stored.MessageID != d.MessageID || string(stored.Payload) != string(d.Payload) {
					t.Fatalf("%d rows: delivery %d stored as %q with %q, created as %q with %q (%v)",
						n, d.ID, stored.MessageID, stored.Payload, d.MessageID, d.Payload, err)
				}
			}
		}
	})
}

// A delivery stored by an earlier version under another message id is
// not created again when the new one names that id as its legacy id.
func TestDeliveriesLegacyMessageID(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		now := time.Now().UTC().Truncate(time.Millisecond)
		old := newSinkDelivery("e1", "hook", "https://a", 1, now)
		old.MessageID = "msg_old_e1"
		if _, err := s.CreateSinkDeliveries(ctx, []SinkDelivery{old}); err != nil {
			t.Fatal(err)
		}
		again := newSinkDelivery("e1", "hook", "https://a", 1, now)
		again.LegacyMessageID = "msg_old_e1"
		other := newSinkDelivery("e2", "hook", "https://a", 1, now)
		other.LegacyMessageID = "msg_old_e2" // never stored
		got, err := s.CreateSinkDeliveries(ctx, []SinkDelivery{again, other})
		if err != nil || len(got) != 1 || got[0].EventID != "e2" {
			t.Fatalf("created %+v, %v; want only e2", got, err)
		}
	})
}

// TestPruneSinkDeliveries: finished deliveries past the retention go,
// oldest first, with their attempts and payloads; pending ones and the
// newest delivery stay whatever their age.
func TestPruneSinkDeliveries(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		now := time.Now().UTC().Truncate(time.Millisecond)
		var list []SinkDelivery
		for i := range 6 {
			list = append(list, newSinkDelivery(fmt.Sprintf("e%d", i), "hook", "https://a", 1, now))
		}
		list[1].Status, list[1].LastError = DeliveryFailed, "endpoint disabled"
		got, err := s.CreateSinkDeliveries(ctx, list)
		if err != nil || len(got) != 6 {
			t.Fatalf("create: %d %v", len(got), err)
		}
		id := func(i int) int64 { return got[i].ID }
		// 0, 3, 4 and 5 succeed; 1 failed; 2 stays pending.
		var recs []SinkAttemptRecord
		for _, i := range []int{0, 3, 4, 5} {
			recs = append(recs, SinkAttemptRecord{Attempt: SinkAttempt{DeliveryID: id(i), Number: 1, Time: now, StatusCode: 200, Outcome: OutcomeSuccess},
				Status: DeliverySucceeded, Tries: 1})
		}
		if _, err := s.RecordSinkAttempts(ctx, "", recs); err != nil {
			t.Fatal(err)
		}
		age := func(days int, idx ...int) {
			t.Helper()
			for _, i := range idx {
				if _, err := s.db.ExecContext(ctx, s.q(`UPDATE deliveries SET created_at = ? WHERE id = ?`), ms(now.AddDate(0, 0, -days)), id(i)); err != nil {
					t.Fatal(err)
				}
			}
		}
		prune := func(limit int, want int64) {
			t.Helper()
			n, err := s.PruneSinkDeliveries(ctx, now.AddDate(0, 0, -1), limit)
			if err != nil || n != want {
				t.Fatalf("prune (limit %d): %d deleted, %v; want %d", limit, n, err, want)
			}
		}
		exists := func(i int) bool {
			_, err := s.SinkDelivery(ctx, id(i))
			if err != nil && !errors.Is(err, ErrNotFound) {
				t.Fatal(err)
			}
			return err == nil
		}
		age(2, 0, 1, 2, 3)
		prune(1, 1) // the oldest only
		if exists(0) || !exists(1) {
			t.Fatal("limit 1 did not delete exactly the oldest delivery")
		}
		if atts, err := s.SinkAttempts(ctx, id(0)); err != nil || len(atts) != 0 {
			t.Fatalf("attempts of a pruned delivery: %+v %v", atts, err)
		}
		var payloads int
		if err := s.db.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM delivery_payloads WHERE delivery_id = ?`), id(0)).Scan(&payloads); err != nil || payloads != 0 {
			t.Fatalf("payload of a pruned delivery: %d %v", payloads, err)
		}
		prune(100, 2) // 1 (failed) and 3; 2 is pending, 4 and 5 are recent
		if exists(1) || !exists(2) || exists(3) || !exists(4) || !exists(5) {
			t.Fatal("wrong deliveries pruned")
		}
		prune(100, 0)
		// Everything old and finished: the newest delivery stays (SQLite
		// would give its id to the next one).
		if _, err := s.RecordSinkAttempts(ctx, "", []SinkAttemptRecord{{Attempt: SinkAttempt{DeliveryID: id(2), Number: 1, Time: now,
			StatusCode: 410, Outcome: OutcomePermanent}, Status: DeliveryFailed, Tries: 1}}); err != nil {
			t.Fatal(err)
		}
		age(3, 2, 4, 5)
		prune(100, 2)
		if exists(2) || exists(4) || !exists(5) {
			t.Fatal("the newest delivery was pruned, or an old one kept")
		}
		next, err := s.CreateSinkDeliveries(ctx, []SinkDelivery{newSinkDelivery("e9", "hook", "https://a", 1, now)})
		if err != nil || len(next) != 1 || next[0].ID <= id(5) {
			t.Fatalf("a delivery after the prune: %+v %v, want an id above %d", next, err, id(5))
		}
		if _, err := s.PruneSinkDeliveries(ctx, now, 0); err == nil {
			t.Fatal("limit 0 accepted")
		}
	})
}
