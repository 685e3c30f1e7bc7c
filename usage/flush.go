package usage

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/buildbridge/buildbridge/store"
)

// idleAfter is how long a token must be idle, beyond two windows, before
// its state is dropped from memory (its counts stored first).
const idleAfter = 10 * time.Minute

// FinalFlushTimeout bounds the flush Run makes when it stops.
const FinalFlushTimeout = 10 * time.Second

// Run adds the counts to the store every FlushInterval, and at every
// midnight UTC so that each count is stored under its day, until ctx
// ends; then it flushes once more and returns. A failed flush is logged
// and its counts are tried again at the next one.
func (m *Meter) Run(ctx context.Context) error {
	timer := time.NewTimer(m.nextFlush())
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), FinalFlushTimeout)
			defer cancel()
			if err := m.Flush(fctx); err != nil {
				return fmt.Errorf("usage: last flush: %w", err)
			}
			return nil
		case <-timer.C:
		}
		if err := m.Flush(ctx); err != nil && !errors.Is(err, context.Canceled) {
			m.cfg.Logger.Warn("usage: flush failed; the counts are kept for the next one", "err", err)
		}
		timer.Reset(m.nextFlush())
	}
}

// nextFlush is how long until the next flush: the interval, or less when
// a UTC day ends first.
func (m *Meter) nextFlush() time.Duration {
	now := m.cfg.Now().UTC()
	midnight := time.Date(now.Year(), now.Month(), now.Day()+1, 0, 0, 0, 0, time.UTC)
	return max(min(m.cfg.FlushInterval, midnight.Sub(now)+time.Millisecond), time.Millisecond)
}

// Flush adds the counts made since the last flush to the store, under
// the current UTC day, in one transaction. When the store fails, the
// counts are kept and added by the next flush.
func (m *Meter) Flush(ctx context.Context) error {
	m.flushMu.Lock()
	defer m.flushMu.Unlock()
	now := m.cfg.Now()
	rows := m.drain(store.UsageDay(now), m.ms(now))
	rows = mergeRows(append(m.unsaved, rows...))
	if len(rows) == 0 {
		return nil
	}
	if err := m.cfg.Store.AddUsage(ctx, rows); err != nil {
		m.unsaved = rows
		return fmt.Errorf("usage: flush %d rows: %w", len(rows), err)
	}
	m.unsaved = nil
	return nil
}

// drain takes the counts of every token, and drops from memory the
// tokens idle for long (counted once more at the next flush, in case a
// request was still running).
func (m *Meter) drain(day string, nowMS uint64) []store.UsageRow {
	var rows []store.UsageRow
	take := func(t *tokenState) bool {
		empty := true
		for id, c := range t.counters() {
			if c == nil {
				continue
			}
			r := store.UsageRow{Day: day, UserID: t.userID, TokenID: t.tokenID, Route: m.routeName(int32(id)),
				Requests: c.requests.Swap(0), Errors: c.errors.Swap(0), LatencyUS: c.latencyUS.Swap(0), MaxLatencyUS: c.maxUS.Swap(0)}
			if r.Requests > 0 || r.Errors > 0 {
				rows = append(rows, r)
			}
			if c.actRequests.Load() > 0 {
				empty = false
			}
		}
		return empty
	}
	for _, t := range m.retired {
		take(t)
	}
	m.retired = m.retired[:0]
	idle := 2*m.windowMS + uint64(idleAfter/time.Millisecond)
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.RLock()
		var drop []int64
		for key, t := range sh.tokens {
			if take(t) && nowMS > uint64(t.lastUse.Load())+idle {
				drop = append(drop, key)
			}
		}
		sh.mu.RUnlock()
		if len(drop) == 0 {
			continue
		}
		sh.mu.Lock()
		for _, key := range drop {
			if t := sh.tokens[key]; t != nil && nowMS > uint64(t.lastUse.Load())+idle {
				delete(sh.tokens, key)
				m.retired = append(m.retired, t)
			}
		}
		sh.mu.Unlock()
	}
	return rows
}

// rowKey identifies a stored row.
type rowKey struct {
	day         string
	user, token int64
	route       string
}

// mergeRows sums rows of the same key, keeping the first one's place.
func mergeRows(rows []store.UsageRow) []store.UsageRow {
	if len(rows) < 2 {
		return rows
	}
	at := make(map[rowKey]int, len(rows))
	out := rows[:0:0]
	for _, r := range rows {
		k := rowKey{r.Day, r.UserID, r.TokenID, r.Route}
		if i, ok := at[k]; ok {
			o := &out[i]
			o.Requests += r.Requests
			o.Errors += r.Errors
			o.LatencyUS += r.LatencyUS
			o.MaxLatencyUS = max(o.MaxLatencyUS, r.MaxLatencyUS)
			continue
		}
		at[k] = len(out)
		out = append(out, r)
	}
	return out
}

// Usage reads the usage of q: what is stored, with what the Meter has
// counted and not stored yet (under the current day). It is what the
// usage endpoints serve, so a request shows up at once.
func (m *Meter) Usage(ctx context.Context, q store.UsageQuery) ([]store.UsageRow, error) {
	m.flushMu.Lock()
	defer m.flushMu.Unlock()
	rows, err := m.cfg.Store.Usage(ctx, q)
	if err != nil {
		return nil, err
	}
	today := store.UsageDay(m.cfg.Now())
	pending := append([]store.UsageRow(nil), m.unsaved...)
	for _, t := range append(m.tokens(), m.retired...) {
		if q.UserID != 0 && t.userID != q.UserID {
			continue
		}
		for id, c := range t.counters() {
			if c == nil {
				continue
			}
			r := store.UsageRow{Day: today, UserID: t.userID, TokenID: t.tokenID, Route: m.routeName(int32(id)),
				Requests: c.requests.Load(), Errors: c.errors.Load(), LatencyUS: c.latencyUS.Load(), MaxLatencyUS: c.maxUS.Load()}
			if r.Requests > 0 {
				pending = append(pending, r)
			}
		}
	}
	for _, r := range pending {
		if (q.UserID != 0 && r.UserID != q.UserID) || r.Day < q.From || r.Day > q.To {
			continue
		}
		if !q.ByToken {
			r.TokenID = 0
		}
		rows = append(rows, r)
	}
	rows = mergeRows(rows)
	slices.SortFunc(rows, func(a, b store.UsageRow) int {
		c := cmp.Or(cmp.Compare(a.Day, b.Day), cmp.Compare(a.UserID, b.UserID), cmp.Compare(a.Route, b.Route))
		if q.ByToken {
			c = cmp.Or(c, cmp.Compare(a.TokenID, b.TokenID))
		}
		return c
	})
	return rows, nil
}
