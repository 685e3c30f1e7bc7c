package email

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/buildbridge/buildbridge/sinks"
	"github.com/buildbridge/buildbridge/sinks/delivery"
	"github.com/buildbridge/buildbridge/store"
)

// claimLimit bounds the held mail one flush takes at once.
const claimLimit = 500

// hold keeps a delivery's mail in the store until until (or the release
// of the open batch of its recipients).
func (s *Sink) hold(ctx context.Context, d *sinks.Delivery, p *parts, until time.Time) (delivery.Response, error) {
	st := s.store()
	if st == nil {
		return delivery.Response{}, ErrNoStore
	}
	payload, err := json.Marshal(p)
	if err != nil {
		return delivery.Response{}, delivery.Permanent(fmt.Errorf("encoding the held mail: %w", err))
	}
	h, _, err := st.HoldMail(ctx, store.MailHold{Sink: d.Sink, Group: strings.Join(p.To, ","), EventID: d.EventID,
		ReleaseAt: until, Payload: payload})
	if err != nil {
		return delivery.Response{}, err
	}
	s.poke()
	why := "the digest"
	if p.Params["digest"] == "" || p.Params["digest"] == "0s" {
		why = "the end of quiet hours"
	}
	return delivery.Response{Body: []byte(fmt.Sprintf("held for %s until %s, to %s", why, h.ReleaseAt.UTC().Format(time.RFC3339), strings.Join(p.To, ", ")))}, nil
}

// poke wakes the flusher to look at its next release.
func (s *Sink) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// flusher sends held mail when it is due, until ctx ends.
func (s *Sink) flusher(ctx context.Context) {
	defer close(s.done)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-s.wake:
		}
		switch err := s.FlushDue(ctx); {
		case errors.Is(err, ErrNoStore):
			// Not given yet (the hub makes sinks before it hands them the store).
		case err != nil && ctx.Err() == nil:
			s.log.Error("sending held mail", "err", err)
		}
		wait := s.opts.Poll
		if st := s.store(); st != nil {
			if next, ok, err := st.NextMailRelease(ctx, s.name); err == nil && ok {
				wait = min(wait, max(next.Sub(s.opts.Now()), 50*time.Millisecond))
			}
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
	}
}

// FlushDue sends the held mail that is due by the sink's clock: one mail
// per group of recipients, a digest when the group holds several. The
// sink's flusher calls it; tests call it with their clock. A group whose
// send fails temporarily is due again later; one refused (5xx), or still
// failing after MaxTries, is dropped and logged.
func (s *Sink) FlushDue(ctx context.Context) error {
	st := s.store()
	if st == nil {
		return ErrNoStore
	}
	for range 20 { // bounded: at most 20 × claimLimit holds per call
		now := s.opts.Now()
		hs, err := st.ClaimMailHolds(ctx, s.name, now, s.opts.Lease, claimLimit)
		if err != nil {
			return err
		}
		var errs []error
		for len(hs) > 0 {
			n := 1
			for n < len(hs) && hs[n].Group == hs[0].Group {
				n++
			}
			if err := s.flushGroup(ctx, st, now, hs[:n]); err != nil {
				errs = append(errs, err)
			}
			hs = hs[n:]
		}
		if err := errors.Join(errs...); err != nil || len(hs) < claimLimit {
			return err
		}
	}
	return nil
}

// flushGroup sends the claimed holds of one group.
func (s *Sink) flushGroup(ctx context.Context, st Store, now time.Time, hs []store.MailHold) error {
	// Store writes outlive a flush cut short by Close: the lease would
	// expire anyway, but a clean release is sooner.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	var (
		items []parts
		ids   []int64
		tries int
	)
	for _, h := range hs {
		var p parts
		if err := json.Unmarshal(h.Payload, &p); err != nil || len(p.To) == 0 {
			s.log.Error("a held mail cannot be read; dropped", "id", h.ID, "event_id", h.EventID, "err", err)
			st.DeleteMailHolds(wctx, []int64{h.ID})
			continue
		}
		items = append(items, p)
		ids = append(ids, h.ID)
		tries = max(tries, h.Tries)
	}
	if len(items) == 0 {
		return nil
	}
	if end, ok := s.quietUntil(now, items); ok {
		return st.ReleaseMailHolds(wctx, ids, end, false)
	}
	msg := s.single(&items[0])
	if len(items) > 1 {
		msg = s.digest(items)
	}
	err := s.send(ctx, msg)
	var de *delivery.Error
	switch {
	case err == nil:
		s.log.Info("held mail sent", "events", len(items), "to", items[0].To)
		return st.DeleteMailHolds(wctx, ids)
	case errors.As(err, &de) && de.Permanent:
		s.log.Error("held mail refused; dropped", "events", len(items), "to", items[0].To, "err", err)
		return st.DeleteMailHolds(wctx, ids)
	case tries+1 >= s.opts.MaxTries:
		s.log.Error("held mail still failing; dropped", "events", len(items), "to", items[0].To, "tries", tries+1, "err", err)
		return st.DeleteMailHolds(wctx, ids)
	}
	retry := now.Add(backoff(tries))
	s.log.Warn("held mail not sent; retrying", "events", len(items), "to", items[0].To, "at", retry, "err", err)
	return st.ReleaseMailHolds(wctx, ids, retry, true)
}

// backoff is the wait after a group's tries-th failed send: 30s doubling,
// at most an hour.
func backoff(tries int) time.Duration {
	d := 30 * time.Second
	for range tries {
		d *= 2
		if d >= time.Hour {
			return time.Hour
		}
	}
	return d
}

// quietUntil reports that a group is in its quiet hours with nothing
// urgent: it waits for their end. The newest item's settings decide.
func (s *Sink) quietUntil(now time.Time, items []parts) (time.Time, bool) {
	for _, it := range items {
		if it.Urgent {
			return time.Time{}, false
		}
	}
	pol, err := parsePolicy(items[len(items)-1].Params)
	if err != nil || pol.quiet == nil {
		return time.Time{}, false
	}
	return pol.quiet.end(now)
}
