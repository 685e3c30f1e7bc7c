package store

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Statuses of a SinkDelivery.
const (
	// DeliveryPending: waiting for its next attempt (NextAt).
	DeliveryPending = "pending"
	// DeliverySucceeded: the destination accepted it.
	DeliverySucceeded = "succeeded"
	// DeliveryFailed: the dead letter. A permanent error, the last
	// attempt of the schedule, or a disabled endpoint; redeliverable.
	DeliveryFailed = "failed"
)

// Attempt outcomes.
const (
	OutcomeSuccess   = "success"
	OutcomeRetry     = "retry"     // temporary failure, another attempt is scheduled
	OutcomeFailed    = "failed"    // temporary failure on the last attempt of the schedule
	OutcomePermanent = "permanent" // permanent failure, no retry
	OutcomeGone      = "gone"      // the endpoint is gone (410): disabled
)

// SinkDelivery is one message for one (sink, target), identified by (event
// id, sink, target), and by MessageID, which is derived from them: the
// store keeps one delivery per message id. Payload is what the delivery engine needs to send it
// again; the store does not read it.
type SinkDelivery struct {
	ID int64 `json:"id"`
	// MessageID is the id the destination sees (webhook-id): the same on
	// every attempt.
	MessageID string `json:"message_id"`
	// LegacyMessageID, when set on a delivery to create, is the id an
	// earlier version may have stored the same delivery under (another
	// format): if a delivery with it exists, this one is not created.
	LegacyMessageID string `json:"-"`
	EventID         string `json:"event_id"`
	EventType       string `json:"event_type"`
	Sink            string `json:"sink"`
	SinkType        string `json:"sink_type"`
	Target          string `json:"target"`
	Route           string `json:"route"`
	// OwnerID is the owner of the event's project; 0 for system events,
	// which only admins see.
	OwnerID int64 `json:"owner_id"`
	// BuildID and Seq order the deliveries of one build to one target.
	BuildID  int64  `json:"build_id,omitempty"`
	Seq      int64  `json:"seq"`
	Status   string `json:"status"`
	Attempts int    `json:"attempt_count"`
	// Tries counts the attempts of the current round: the position in
	// the retry schedule. A redelivery starts a new round.
	Tries     int        `json:"tries"`
	NextAt    *time.Time `json:"next_attempt_at"`
	LastCode  int        `json:"last_status_code,omitempty"`
	LastError string     `json:"last_error,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	UpdatedAt time.Time  `json:"updated_at"`
	// FinishedAt is when it succeeded or failed for good.
	FinishedAt *time.Time `json:"finished_at"`
	// LeaseOwner is the node that holds the delivery's lease, the only
	// one that may attempt it, until LeaseUntil; empty when none does.
	LeaseOwner string     `json:"lease_owner,omitempty"`
	LeaseUntil *time.Time `json:"lease_until,omitempty"`
	Payload    []byte     `json:"-"`
}

// SinkAttempt is one logged attempt.
type SinkAttempt struct {
	DeliveryID int64         `json:"delivery_id"`
	Number     int           `json:"number"`
	Time       time.Time     `json:"time"`
	Duration   time.Duration `json:"-"`
	StatusCode int           `json:"status_code,omitempty"`
	Outcome    string        `json:"outcome"`
	Error      string        `json:"error,omitempty"`
	// Header and Body are the destination's answer, capped by the engine.
	Header http.Header `json:"response_headers,omitempty"`
	Body   []byte      `json:"-"`
}

// MarshalJSON adds the duration in milliseconds and the body as text.
func (a SinkAttempt) MarshalJSON() ([]byte, error) {
	type plain SinkAttempt
	return json.Marshal(struct {
		plain
		DurationMS float64 `json:"duration_ms"`
		Body       string  `json:"response_body,omitempty"`
	}{plain(a), float64(a.Duration.Microseconds()) / 1000, string(a.Body)})
}

// SinkAttemptRecord is the outcome of one attempt: the attempt to log
// (Attempt.Number is the delivery's attempt count with it, from 1) and
// the delivery's new state. With an empty Attempt.Outcome only the state
// changes (a delivery failed without an attempt: its endpoint is disabled)
// and Attempt.Error becomes its last error.
type SinkAttemptRecord struct {
	Attempt SinkAttempt
	Status  string
	Tries   int
	// NextAt is the next attempt of a pending delivery.
	NextAt *time.Time
}

const deliveryCols = `id, message_id, event_id, event_type, sink, sink_type, target, route, owner_id, build_id, seq,
	status, attempts, tries, next_at, last_code, last_error, created_at, updated_at, finished_at, lease_owner, lease_until`

func scanSinkDelivery(row interface{ Scan(...any) error }, extra ...any) (SinkDelivery, error) {
	var d SinkDelivery
	var next, fin sql.NullInt64
	var created, updated, leaseUntil int64
	dest := append([]any{&d.ID, &d.MessageID, &d.EventID, &d.EventType, &d.Sink, &d.SinkType, &d.Target, &d.Route,
		&d.OwnerID, &d.BuildID, &d.Seq, &d.Status, &d.Attempts, &d.Tries, &next, &d.LastCode, &d.LastError,
		&created, &updated, &fin, &d.LeaseOwner, &leaseUntil}, extra...)
	if err := row.Scan(dest...); err != nil {
		return d, err
	}
	d.NextAt, d.FinishedAt = fromNullMS(next), fromNullMS(fin)
	d.CreatedAt, d.UpdatedAt = fromMS(created), fromMS(updated)
	if d.LeaseOwner != "" {
		until := fromMS(leaseUntil)
		d.LeaseUntil = &until
	}
	return d, nil
}

// CreateSinkDeliveries persists new deliveries in one transaction and returns
// those it created, with their ids. A delivery whose message id (derived
// from event id, sink and target) exists already is skipped: a
// redelivered event creates nothing.
// Status defaults to pending; CreatedAt and UpdatedAt are set here. No
// lease is taken (WriteSinkBatch takes one).
func (s *DB) CreateSinkDeliveries(ctx context.Context, list []SinkDelivery) ([]SinkDelivery, error) {
	res, err := s.WriteSinkBatch(ctx, SinkBatch{Creates: list})
	return res.Created, err
}

// SinkLease is a node's hold on deliveries. Only the node holding a
// delivery's lease attempts it; the node renews the leases of what it
// holds, and a lease that ends unrenewed (its node died) leaves the
// delivery free for any node to take over.
type SinkLease struct {
	// Owner names the node; empty: no lease (a node alone).
	Owner string
	// Until is when the lease ends unless renewed.
	Until time.Time
}

// SinkClaim asks for the lease of one delivery that the claimant has
// seen with Attempts attempts. It is granted when the delivery is still
// pending with exactly that many attempts (nobody attempted it since)
// and its lease is free, ended, or the claimant's already.
type SinkClaim struct {
	ID       int64
	Attempts int
}

// SinkBatch is what the delivery engine's writer commits in one
// transaction: new deliveries, attempt records, then lease claims (which
// therefore see the records before them).
type SinkBatch struct {
	// Creates are new deliveries, as for CreateSinkDeliveries. With
	// Lease.Owner set, the pending ones are created leased to it: the node
	// creating a delivery attempts it at once, with no claim in between.
	Creates []SinkDelivery
	// Records are attempt outcomes, as for RecordSinkAttempts. With
	// Lease.Owner set, each is written only while the delivery's lease is
	// still Lease.Owner's (ended or not: nobody took it over), and
	// releases the lease; the others are refused.
	Records []SinkAttemptRecord
	// Claims are granted to Lease.Owner until Lease.Until.
	Claims []SinkClaim
	Lease  SinkLease
	// Now is the time leases are compared with (default: the store's clock).
	Now time.Time
}

// SinkBatchResult is what a SinkBatch did.
type SinkBatchResult struct {
	// Created are the deliveries created, with their ids (not those that
	// existed already).
	Created []SinkDelivery
	// Refused are the delivery ids of the records not written: their
	// lease is another node's now, or they are gone.
	Refused []int64
	// Claimed are the deliveries whose claims were granted, as stored now
	// (without payloads).
	Claimed []SinkDelivery
}

// WriteSinkBatch creates deliveries, records attempts and claims leases in
// one transaction: the delivery engine's writer commits everything
// waiting at once.
func (s *DB) WriteSinkBatch(ctx context.Context, b SinkBatch) (SinkBatchResult, error) {
	var res SinkBatchResult
	if len(b.Creates) == 0 && len(b.Records) == 0 && len(b.Claims) == 0 {
		return res, nil
	}
	now := s.now()
	if b.Now.IsZero() {
		b.Now = now
	}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		res = SinkBatchResult{}
		if res.Created, err = s.createSinkDeliveriesTx(ctx, tx, b.Creates, b.Lease, now); err != nil {
			return fmt.Errorf("create deliveries: %w", err)
		}
		if res.Refused, err = s.recordSinkAttemptsTx(ctx, tx, b.Records, b.Lease.Owner, now); err != nil {
			return fmt.Errorf("record attempts: %w", err)
		}
		if res.Claimed, err = s.claimSinkDeliveriesTx(ctx, tx, b.Claims, b.Lease, b.Now); err != nil {
			return fmt.Errorf("claim deliveries: %w", err)
		}
		return nil
	})
	if err != nil {
		return SinkBatchResult{}, err
	}
	return res, nil
}

// The statements of the delivery engine's writes, prepared once.
const (
	insertSinkDeliveryCols = `INSERT INTO deliveries (message_id, event_id, event_type, sink, sink_type, target,
		route, owner_id, build_id, seq, status, attempts, tries, next_at, last_error, created_at, updated_at, finished_at,
		lease_owner, lease_until) VALUES `
	insertSinkDeliveryRow      = `(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?, ?, ?, ?, ?)`
	insertSinkDeliveryReturn   = ` ON CONFLICT (message_id) DO NOTHING RETURNING id, message_id`
	insertSinkDeliveryPayloads = `INSERT INTO delivery_payloads (delivery_id, payload) VALUES `
	insertSinkDeliveryPayload  = `(?, ?)`
	updateSinkDelivery         = `UPDATE deliveries SET status = ?, attempts = ?, tries = ?, next_at = ?,
		last_code = ?, last_error = ?, updated_at = ?, finished_at = ? WHERE id = ?`
	updateSinkDeliveryState = `UPDATE deliveries SET status = ?, tries = ?, next_at = ?,
		last_code = ?, last_error = ?, updated_at = ?, finished_at = ? WHERE id = ?`
	// The same, by the lease holder: refused once the lease is another's.
	updateLeasedSinkDelivery = `UPDATE deliveries SET status = ?, attempts = ?, tries = ?, next_at = ?,
		last_code = ?, last_error = ?, updated_at = ?, finished_at = ?, lease_owner = '', lease_until = 0
		WHERE id = ? AND lease_owner = ?`
	updateLeasedSinkDeliveryState = `UPDATE deliveries SET status = ?, tries = ?, next_at = ?,
		last_code = ?, last_error = ?, updated_at = ?, finished_at = ?, lease_owner = '', lease_until = 0
		WHERE id = ? AND lease_owner = ?`
	insertSinkAttempts = `INSERT INTO delivery_attempts (delivery_id, number, started_at, duration_us,
		status_code, outcome, error, resp_headers, resp_body) VALUES `
	insertSinkAttempt = `(?, ?, ?, ?, ?, ?, ?, ?, ?)`
	claimSinkDelivery = `UPDATE deliveries SET lease_owner = ?, lease_until = ?
		WHERE id = ? AND ` + pendingCond + ` AND attempts = ? AND (lease_owner = ? OR lease_until < ?)
		RETURNING ` + deliveryCols
)

// rowChunks are the row counts of the multi-row statements: a batch is
// written in chunks of these sizes, largest first, so that only three
// statements per kind are ever prepared.
var rowChunks = [...]int{32, 8, 1}

// multiRow holds one statement written for each of rowChunks rows: head,
// the row's placeholders n times, tail. One statement writing n rows costs
// far less than n statements through database/sql and the driver.
type multiRow [len(rowChunks)]string

func newMultiRow(head, row, tail string) multiRow {
	var m multiRow
	for i, n := range rowChunks {
		m[i] = head + strings.TrimSuffix(strings.Repeat(row+", ", n), ", ") + tail
	}
	return m
}

// rows returns the statement for n rows, n one of rowChunks.
func (m *multiRow) rows(n int) string {
	for i, c := range rowChunks {
		if c == n {
			return m[i]
		}
	}
	panic(fmt.Sprintf("store: no %d-row statement", n))
}

var (
	insertSinkDeliveriesBy = newMultiRow(insertSinkDeliveryCols, insertSinkDeliveryRow, insertSinkDeliveryReturn)
	insertPayloadsBy       = newMultiRow(insertSinkDeliveryPayloads, insertSinkDeliveryPayload, "")
	insertSinkAttemptsBy   = newMultiRow(insertSinkAttempts, insertSinkAttempt, "")
)

// chunk returns the size of the next chunk of a batch with n > 0 rows
// left: one of rowChunks.
func chunk(n int) int {
	for _, c := range rowChunks {
		if n >= c {
			return c
		}
	}
	return rowChunks[len(rowChunks)-1]
}

func (s *DB) createSinkDeliveriesTx(ctx context.Context, tx *sql.Tx, list []SinkDelivery, lease SinkLease, now time.Time) ([]SinkDelivery, error) {
	if len(list) == 0 {
		return nil, nil
	}
	p := s.prepared(tx, ctx)
	rows := make([]SinkDelivery, 0, len(list))
	for _, d := range list {
		if d.MessageID == "" {
			return nil, fmt.Errorf("delivery of event %s to %s without a message id", d.EventID, d.Sink)
		}
		if d.Status == "" {
			d.Status = DeliveryPending
		}
		if d.Payload == nil {
			d.Payload = []byte{}
		}
		d.CreatedAt, d.UpdatedAt = now, now
		d.LeaseOwner, d.LeaseUntil = "", nil
		if d.Status != DeliveryPending {
			d.NextAt, d.FinishedAt = nil, &now
		} else if lease.Owner != "" {
			until := lease.Until
			d.LeaseOwner, d.LeaseUntil = lease.Owner, &until
		}
		rows = append(rows, d)
	}
	rows, err := s.withoutLegacy(p, rows)
	if err != nil {
		return nil, err
	}
	// The rows are inserted in chunks; those whose message id exists
	// already (a redelivered event) are skipped by the database, and
	// RETURNING names the others, in no promised order.
	out := make([]SinkDelivery, 0, len(rows))
	byMsg := make(map[string]int, len(rows))
	args := make([]any, 0, 20*rowChunks[0])
	for len(rows) > 0 {
		n := chunk(len(rows))
		part := rows[:n]
		rows = rows[n:]
		args = args[:0]
		clear(byMsg)
		for i := range part {
			d := &part[i]
			if _, dup := byMsg[d.MessageID]; !dup {
				byMsg[d.MessageID] = i
			}
			args = append(args, d.MessageID, d.EventID, d.EventType, d.Sink, d.SinkType, d.Target,
				d.Route, d.OwnerID, d.BuildID, d.Seq, d.Status, nullMS(d.NextAt), d.LastError,
				ms(now), ms(now), nullMS(d.FinishedAt), d.LeaseOwner, leaseMS(d.LeaseUntil))
		}
		res, err := p.Query(insertSinkDeliveriesBy.rows(n), args...)
		if err != nil {
			return nil, err
		}
		first := len(out)
		for res.Next() {
			var id int64
			var msg string
			if err := res.Scan(&id, &msg); err != nil {
				res.Close()
				return nil, err
			}
			i, ok := byMsg[msg]
			if !ok {
				res.Close()
				return nil, fmt.Errorf("insert returned message id %q, which is not in the batch", msg)
			}
			d := part[i]
			d.ID = id
			out = append(out, d)
		}
		if err := res.Close(); err != nil {
			return nil, err
		}
		if err := res.Err(); err != nil {
			return nil, err
		}
		created := out[first:]
		slices.SortFunc(created, func(a, b SinkDelivery) int { return cmp.Compare(a.ID, b.ID) })
		for len(created) > 0 {
			m := chunk(len(created))
			args = args[:0]
			for _, d := range created[:m] {
				args = append(args, d.ID, d.Payload)
			}
			if _, err := p.Exec(insertPayloadsBy.rows(m), args...); err != nil {
				return nil, fmt.Errorf("payloads of deliveries %d…: %w", created[0].ID, err)
			}
			created = created[m:]
		}
	}
	return out, nil
}

// withoutLegacy drops the rows stored already under their legacy message
// id. Only rows with one are looked up (the engine sets it for events
// that may have been handled by an earlier version).
func (s *DB) withoutLegacy(p ptx, rows []SinkDelivery) ([]SinkDelivery, error) {
	var legacy []any
	for _, d := range rows {
		if d.LegacyMessageID != "" {
			legacy = append(legacy, d.LegacyMessageID)
		}
	}
	if len(legacy) == 0 {
		return rows, nil
	}
	found := map[string]bool{}
	for len(legacy) > 0 {
		n := min(len(legacy), 256)
		// Not a cached statement: its text varies, and the path is rare.
		res, err := p.tx.QueryContext(p.ctx, s.q(`SELECT message_id FROM deliveries WHERE message_id IN (?`+strings.Repeat(", ?", n-1)+`)`), legacy[:n]...)
		if err != nil {
			return nil, fmt.Errorf("look up legacy message ids: %w", err)
		}
		for res.Next() {
			var id string
			if err := res.Scan(&id); err != nil {
				res.Close()
				return nil, err
			}
			found[id] = true
		}
		if err := res.Close(); err != nil {
			return nil, err
		}
		if err := res.Err(); err != nil {
			return nil, err
		}
		legacy = legacy[n:]
	}
	if len(found) == 0 {
		return rows, nil
	}
	kept := rows[:0]
	for _, d := range rows {
		if !found[d.LegacyMessageID] {
			kept = append(kept, d)
		}
	}
	return kept, nil
}

func leaseMS(t *time.Time) int64 {
	if t == nil {
		return 0
	}
	return ms(*t)
}

func (s *DB) claimSinkDeliveriesTx(ctx context.Context, tx *sql.Tx, claims []SinkClaim, lease SinkLease, now time.Time) ([]SinkDelivery, error) {
	if len(claims) == 0 {
		return nil, nil
	}
	if lease.Owner == "" {
		return nil, errors.New("a claim without a lease owner")
	}
	p := s.prepared(tx, ctx)
	var out []SinkDelivery
	for _, c := range claims {
		d, err := scanSinkDelivery(p.QueryRow(claimSinkDelivery, lease.Owner, ms(lease.Until), c.ID, c.Attempts, lease.Owner, ms(now)))
		if errors.Is(err, sql.ErrNoRows) {
			continue // another node's, attempted meanwhile, or finished
		}
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// SinkDelivery returns one delivery with its payload.
func (s *DB) SinkDelivery(ctx context.Context, id int64) (SinkDelivery, error) {
	var payload []byte
	d, err := scanSinkDelivery(s.db.QueryRowContext(ctx, s.q(`SELECT `+deliveryCols+`,
		COALESCE((SELECT payload FROM delivery_payloads WHERE delivery_id = deliveries.id), '')
		FROM deliveries WHERE id = ?`), id), &payload)
	if errors.Is(err, sql.ErrNoRows) {
		return d, fmt.Errorf("delivery %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return d, fmt.Errorf("delivery %d: %w", id, err)
	}
	d.Payload = payload
	return d, nil
}

// SinkDeliveryPayload returns the payload of one delivery.
func (s *DB) SinkDeliveryPayload(ctx context.Context, id int64) ([]byte, error) {
	var p []byte
	err := s.db.QueryRowContext(ctx, s.q(`SELECT COALESCE(p.payload, '') FROM deliveries d
		LEFT JOIN delivery_payloads p ON p.delivery_id = d.id WHERE d.id = ?`), id).Scan(&p)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("delivery %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("delivery %d payload: %w", id, err)
	}
	return p, nil
}

// SinkDeliveryFilter narrows ListSinkDeliveries. Zero fields do not filter.
type SinkDeliveryFilter struct {
	// OwnerID limits the list to one user's deliveries.
	OwnerID                                  int64
	Sink, Target, Status, EventID, EventType string
	// Since and Until bound the creation time: Since ≤ created < Until.
	Since, Until time.Time
	// Before is a cursor: only deliveries with a smaller id are listed.
	Before int64
	// Limit is 1 to 500 (default 50).
	Limit int
}

// ListSinkDeliveries lists deliveries newest first, without payloads.
func (s *DB) ListSinkDeliveries(ctx context.Context, f SinkDeliveryFilter) ([]SinkDelivery, error) {
	where, args := []string{"1 = 1"}, []any{}
	add := func(cond string, v any) { where, args = append(where, cond), append(args, v) }
	if f.OwnerID != 0 {
		add("owner_id = ?", f.OwnerID)
	}
	for _, c := range []struct{ col, v string }{{"sink", f.Sink}, {"target", f.Target}, {"status", f.Status},
		{"event_id", f.EventID}, {"event_type", f.EventType}} {
		if c.v != "" {
			add(c.col+" = ?", c.v)
		}
	}
	if !f.Since.IsZero() {
		add("created_at >= ?", ms(f.Since))
	}
	if !f.Until.IsZero() {
		add("created_at < ?", ms(f.Until))
	}
	if f.Before > 0 {
		add("id < ?", f.Before)
	}
	if f.Limit <= 0 || f.Limit > 500 {
		f.Limit = 50
	}
	args = append(args, f.Limit)
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT `+deliveryCols+` FROM deliveries WHERE `+strings.Join(where, " AND ")+
		` ORDER BY id DESC LIMIT ?`), args...)
	if err != nil {
		return nil, fmt.Errorf("list deliveries: %w", err)
	}
	return collectSinkDeliveries(rows, "list deliveries")
}

func collectSinkDeliveries(rows *sql.Rows, what string) ([]SinkDelivery, error) {
	defer rows.Close()
	out := []SinkDelivery{}
	for rows.Next() {
		d, err := scanSinkDelivery(rows)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

// PendingSinkDeliveries lists pending deliveries by id, without payloads:
// those with an id above after, due before dueBefore when it is not zero.
func (s *DB) PendingSinkDeliveries(ctx context.Context, after int64, dueBefore time.Time, limit int) ([]SinkDelivery, error) {
	q, args := `SELECT `+deliveryCols+` FROM deliveries WHERE status = ? AND id > ?`, []any{DeliveryPending, after}
	if !dueBefore.IsZero() {
		q, args = q+` AND next_at < ?`, append(args, ms(dueBefore))
	}
	rows, err := s.db.QueryContext(ctx, s.q(q+` ORDER BY id LIMIT ?`), append(args, limit)...)
	if err != nil {
		return nil, fmt.Errorf("pending deliveries: %w", err)
	}
	return collectSinkDeliveries(rows, "pending deliveries")
}

// RecordSinkAttempts logs attempts and updates their deliveries, all in one
// transaction (the engine batches them). With owner set, a record is
// written only while the delivery's lease is owner's, and releases it;
// refused lists the delivery ids of the records refused.
func (s *DB) RecordSinkAttempts(ctx context.Context, owner string, recs []SinkAttemptRecord) (refused []int64, err error) {
	res, err := s.WriteSinkBatch(ctx, SinkBatch{Records: recs, Lease: SinkLease{Owner: owner}})
	return res.Refused, err
}

func (s *DB) recordSinkAttemptsTx(ctx context.Context, tx *sql.Tx, recs []SinkAttemptRecord, owner string, now time.Time) ([]int64, error) {
	if len(recs) == 0 {
		return nil, nil
	}
	p := s.prepared(tx, ctx)
	var refused []int64
	var logged []SinkAttempt
	for _, r := range recs {
		a := r.Attempt
		var fin *time.Time
		next := r.NextAt
		if r.Status != DeliveryPending {
			fin, next = &now, nil
		}
		var res sql.Result
		var err error
		switch {
		case a.Outcome == "" && owner == "":
			res, err = p.Exec(updateSinkDeliveryState, r.Status, r.Tries, nullMS(next), a.StatusCode, a.Error, ms(now), nullMS(fin), a.DeliveryID)
		case a.Outcome == "":
			res, err = p.Exec(updateLeasedSinkDeliveryState, r.Status, r.Tries, nullMS(next), a.StatusCode, a.Error, ms(now), nullMS(fin),
				a.DeliveryID, owner)
		case a.Number < 1:
			return nil, fmt.Errorf("attempt of delivery %d without a number", a.DeliveryID)
		case owner == "":
			res, err = p.Exec(updateSinkDelivery, r.Status, a.Number, r.Tries, nullMS(next), a.StatusCode, a.Error, ms(now), nullMS(fin), a.DeliveryID)
		default:
			res, err = p.Exec(updateLeasedSinkDelivery, r.Status, a.Number, r.Tries, nullMS(next), a.StatusCode, a.Error, ms(now), nullMS(fin),
				a.DeliveryID, owner)
		}
		if err != nil {
			return nil, err
		}
		if n, err := res.RowsAffected(); err != nil {
			return nil, err
		} else if n == 0 {
			if owner != "" {
				refused = append(refused, a.DeliveryID)
			}
			continue // taken over, or deleted meanwhile
		}
		if a.Outcome != "" {
			logged = append(logged, a)
		}
	}
	args := make([]any, 0, 9*min(len(logged), rowChunks[0]))
	for len(logged) > 0 {
		n := chunk(len(logged))
		args = args[:0]
		for _, a := range logged[:n] {
			hdr := ""
			if len(a.Header) > 0 {
				b, err := json.Marshal(a.Header)
				if err != nil {
					return nil, err
				}
				hdr = string(b)
			}
			args = append(args, a.DeliveryID, a.Number, ms(a.Time), a.Duration.Microseconds(), a.StatusCode,
				a.Outcome, a.Error, hdr, a.Body)
		}
		if _, err := p.Exec(insertSinkAttemptsBy.rows(n), args...); err != nil {
			return nil, err
		}
		logged = logged[n:]
	}
	return refused, nil
}

// FreeSinkDeliveries lists, by id, the pending deliveries owner may take
// (without payloads): those without a lease, with one that ended before
// now, or with owner's own (left by its previous run). Those held by a
// live node are not listed.
func (s *DB) FreeSinkDeliveries(ctx context.Context, owner string, now time.Time, after int64, limit int) ([]SinkDelivery, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT `+deliveryCols+` FROM deliveries
		WHERE `+pendingCond+` AND id > ? AND (lease_owner = ? OR lease_until < ?) ORDER BY id LIMIT ?`),
		after, owner, ms(now), limit)
	if err != nil {
		return nil, fmt.Errorf("free deliveries: %w", err)
	}
	return collectSinkDeliveries(rows, "free deliveries")
}

// PickupSinkDeliveries takes over pending deliveries that no node holds:
// due before dueBefore, without a lease or with one that ended before
// now; at most limit, earliest due first. It leases them to lease and
// returns them (without payloads). Concurrent callers never get the same
// delivery. When there is none, as on an idle hub, it costs one indexed
// read and no write.
func (s *DB) PickupSinkDeliveries(ctx context.Context, lease SinkLease, now, dueBefore time.Time, limit int) ([]SinkDelivery, error) {
	if lease.Owner == "" {
		return nil, errors.New("pick up deliveries: a lease owner is required")
	}
	const free = pendingCond + ` AND next_at < ? AND lease_until < ?`
	var one int
	err := s.db.QueryRowContext(ctx, s.q(`SELECT 1 FROM deliveries WHERE `+free+` LIMIT 1`), ms(dueBefore), ms(now)).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pick up deliveries: %w", err)
	}
	// PostgreSQL: rows another node is claiming are skipped, not waited
	// for. SQLite has one writer at a time: the update is atomic as it is.
	lock := ""
	if s.postgres {
		lock = ` FOR UPDATE SKIP LOCKED`
	}
	rows, err := s.db.QueryContext(ctx, s.q(`UPDATE deliveries SET lease_owner = ?, lease_until = ?
		WHERE id IN (SELECT id FROM deliveries WHERE `+free+` ORDER BY next_at, id LIMIT ?`+lock+`)
		RETURNING `+deliveryCols),
		lease.Owner, ms(lease.Until), ms(dueBefore), ms(now), limit)
	if err != nil {
		return nil, fmt.Errorf("pick up deliveries: %w", err)
	}
	return collectSinkDeliveries(rows, "pick up deliveries")
}

// RenewSinkLeases extends owner's leases of the pending deliveries ids to
// lease.Until, in one statement, and returns the ids renewed: a missing
// one is no longer owner's to attempt (taken over after its lease ended,
// or finished).
func (s *DB) RenewSinkLeases(ctx context.Context, lease SinkLease, ids []int64) ([]int64, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	in, arg := s.idsIn(ids)
	rows, err := s.db.QueryContext(ctx, s.q(`UPDATE deliveries SET lease_until = ? WHERE lease_owner = ? AND `+pendingCond+` AND `+in+` RETURNING id`),
		ms(lease.Until), lease.Owner, arg)
	if err != nil {
		return nil, fmt.Errorf("renew delivery leases: %w", err)
	}
	defer rows.Close()
	out := make([]int64, 0, len(ids))
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("renew delivery leases: %w", err)
		}
		out = append(out, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("renew delivery leases: %w", err)
	}
	return out, nil
}

// ReleaseSinkLeases gives up owner's leases of ids, so that another node
// takes the deliveries over at once (a node shutting down cleanly).
func (s *DB) ReleaseSinkLeases(ctx context.Context, owner string, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	in, arg := s.idsIn(ids)
	if _, err := s.db.ExecContext(ctx, s.q(`UPDATE deliveries SET lease_owner = '', lease_until = 0 WHERE lease_owner = ? AND `+in),
		owner, arg); err != nil {
		return fmt.Errorf("release delivery leases: %w", err)
	}
	return nil
}

// pendingCond selects pending deliveries with the very term of the
// partial index deliveries_due: a bound parameter in its place keeps a
// generic plan (a statement PostgreSQL has cached) off the index.
const pendingCond = `status = '` + DeliveryPending + `'`

// idsIn is the condition "id is one of ids" with ids as one parameter,
// whatever their number: a JSON array for SQLite, an array for PostgreSQL.
func (s *DB) idsIn(ids []int64) (string, any) {
	var b strings.Builder
	open, end := "[", "]"
	if s.postgres {
		open, end = "{", "}"
	}
	b.WriteString(open)
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(id, 10))
	}
	b.WriteString(end)
	if s.postgres {
		return `id = ANY(?::bigint[])`, b.String()
	}
	return `id IN (SELECT value FROM json_each(?))`, b.String()
}

// SinkAttempts returns the attempts of one delivery, oldest first.
func (s *DB) SinkAttempts(ctx context.Context, id int64) ([]SinkAttempt, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT delivery_id, number, started_at, duration_us, status_code, outcome, error,
		resp_headers, resp_body FROM delivery_attempts WHERE delivery_id = ? ORDER BY number`), id)
	if err != nil {
		return nil, fmt.Errorf("delivery attempts: %w", err)
	}
	defer rows.Close()
	out := []SinkAttempt{}
	for rows.Next() {
		var a SinkAttempt
		var started, us int64
		var hdr string
		if err := rows.Scan(&a.DeliveryID, &a.Number, &started, &us, &a.StatusCode, &a.Outcome, &a.Error, &hdr, &a.Body); err != nil {
			return nil, fmt.Errorf("delivery attempts: %w", err)
		}
		a.Time, a.Duration = fromMS(started), time.Duration(us)*time.Microsecond
		if hdr != "" {
			if err := json.Unmarshal([]byte(hdr), &a.Header); err != nil {
				return nil, fmt.Errorf("delivery attempts: headers of attempt %d: %w", a.Number, err)
			}
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// RedeliverSinkDelivery makes a delivery pending again, due at at, with a new
// round of the retry schedule. A pending delivery is only made due (and
// keeps its lease: its holder may be attempting it); a finished one has
// no lease, so any node may take it.
func (s *DB) RedeliverSinkDelivery(ctx context.Context, id int64, at time.Time) (SinkDelivery, error) {
	d, err := scanSinkDelivery(s.db.QueryRowContext(ctx, s.q(`UPDATE deliveries SET status = ?, tries = 0, next_at = ?, updated_at = ?,
		finished_at = NULL,
		lease_owner = CASE WHEN status = ? THEN lease_owner ELSE '' END,
		lease_until = CASE WHEN status = ? THEN lease_until ELSE 0 END
		WHERE id = ? RETURNING `+deliveryCols), DeliveryPending, ms(at), ms(s.now()), DeliveryPending, DeliveryPending, id))
	if errors.Is(err, sql.ErrNoRows) {
		return d, fmt.Errorf("delivery %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return d, fmt.Errorf("redeliver %d: %w", id, err)
	}
	return d, nil
}

// SinkRecoverFilter selects the failed deliveries RecoverSinkDeliveries redelivers.
type SinkRecoverFilter struct {
	// Sink is required.
	Sink string
	// Since: deliveries that failed at or after it.
	Since time.Time
	// OwnerID limits recovery to one user's deliveries when not 0.
	OwnerID int64
}

// RecoverSinkDeliveries makes every failed delivery of a sink that failed
// since f.Since pending again, due at at, except those of disabled
// endpoints. It returns them.
func (s *DB) RecoverSinkDeliveries(ctx context.Context, f SinkRecoverFilter, at time.Time) ([]SinkDelivery, error) {
	if f.Sink == "" {
		return nil, errors.New("recover deliveries: sink is required")
	}
	q := `UPDATE deliveries SET status = ?, tries = 0, next_at = ?, updated_at = ?, finished_at = NULL,
		lease_owner = '', lease_until = 0
		WHERE status = ? AND sink = ? AND finished_at >= ?
		AND NOT EXISTS (SELECT 1 FROM delivery_endpoints e WHERE e.sink = deliveries.sink AND e.target = deliveries.target
			AND e.disabled_at IS NOT NULL)`
	args := []any{DeliveryPending, ms(at), ms(s.now()), DeliveryFailed, f.Sink, ms(f.Since)}
	if f.OwnerID != 0 {
		q, args = q+` AND owner_id = ?`, append(args, f.OwnerID)
	}
	rows, err := s.db.QueryContext(ctx, s.q(q+` RETURNING `+deliveryCols), args...)
	if err != nil {
		return nil, fmt.Errorf("recover deliveries: %w", err)
	}
	return collectSinkDeliveries(rows, "recover deliveries")
}

// SinkEndpoint is the health of one (sink, target).
type SinkEndpoint struct {
	Sink   string `json:"sink"`
	Target string `json:"target"`
	// FailingSince is the first failure with no success after it.
	FailingSince *time.Time `json:"failing_since"`
	DisabledAt   *time.Time `json:"disabled_at"`
	Reason       string     `json:"disabled_reason,omitempty"`
	// EventID is the endpoint-disabled event of the last disabling;
	// NotifiedAt is set once that event's deliveries were persisted.
	EventID    string     `json:"event_id,omitempty"`
	NotifiedAt *time.Time `json:"notified_at,omitempty"`
}

// SinkEndpoints lists the endpoints with a recorded state, of one
// sink or of all when sink is empty.
func (s *DB) SinkEndpoints(ctx context.Context, sink string) ([]SinkEndpoint, error) {
	q, args := `SELECT sink, target, failing_since, disabled_at, disabled_reason, event_id, notified_at FROM delivery_endpoints`, []any{}
	if sink != "" {
		q, args = q+` WHERE sink = ?`, append(args, sink)
	}
	rows, err := s.db.QueryContext(ctx, s.q(q+` ORDER BY sink, target`), args...)
	if err != nil {
		return nil, fmt.Errorf("delivery endpoints: %w", err)
	}
	defer rows.Close()
	out := []SinkEndpoint{}
	for rows.Next() {
		var e SinkEndpoint
		var failing, disabled, notified sql.NullInt64
		if err := rows.Scan(&e.Sink, &e.Target, &failing, &disabled, &e.Reason, &e.EventID, &notified); err != nil {
			return nil, fmt.Errorf("delivery endpoints: %w", err)
		}
		e.FailingSince, e.DisabledAt, e.NotifiedAt = fromNullMS(failing), fromNullMS(disabled), fromNullMS(notified)
		out = append(out, e)
	}
	return out, rows.Err()
}

// SetSinkEndpointFailing records when an endpoint started failing; nil
// clears it after a success.
func (s *DB) SetSinkEndpointFailing(ctx context.Context, sink, target string, since *time.Time) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO delivery_endpoints (sink, target, failing_since) VALUES (?, ?, ?)
		ON CONFLICT (sink, target) DO UPDATE SET failing_since = excluded.failing_since`), sink, target, nullMS(since))
	if err != nil {
		return fmt.Errorf("endpoint %s %s: %w", sink, target, err)
	}
	return nil
}

// DisableSinkEndpoint disables an endpoint and, in the same transaction,
// fails its pending deliveries. changed is false when it was disabled
// already (nothing is written then).
func (s *DB) DisableSinkEndpoint(ctx context.Context, sink, target, reason, eventID string, at time.Time) (changed bool, failed int, err error) {
	err = s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q(`INSERT INTO delivery_endpoints (sink, target, disabled_at, disabled_reason, event_id, notified_at)
			VALUES (?, ?, ?, ?, ?, NULL)
			ON CONFLICT (sink, target) DO UPDATE SET disabled_at = excluded.disabled_at, disabled_reason = excluded.disabled_reason,
				event_id = excluded.event_id, notified_at = NULL
			WHERE delivery_endpoints.disabled_at IS NULL`), sink, target, ms(at), reason, eventID)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil || n == 0 {
			return err
		}
		changed = true
		res, err = tx.ExecContext(ctx, s.q(`UPDATE deliveries SET status = ?, next_at = NULL, last_error = ?, updated_at = ?, finished_at = ?
			WHERE status = ? AND sink = ? AND target = ?`), DeliveryFailed, "endpoint disabled: "+reason, ms(s.now()), ms(at),
			DeliveryPending, sink, target)
		if err != nil {
			return err
		}
		nf, err := res.RowsAffected()
		failed = int(nf)
		return err
	})
	if err != nil {
		return false, 0, fmt.Errorf("disable endpoint %s %s: %w", sink, target, err)
	}
	return changed, failed, nil
}

// EnableSinkEndpoint enables an endpoint again and forgets its failures.
// Deliveries failed meanwhile stay failed: recover them.
func (s *DB) EnableSinkEndpoint(ctx context.Context, sink, target string) error {
	_, err := s.db.ExecContext(ctx, s.q(`UPDATE delivery_endpoints SET disabled_at = NULL, disabled_reason = '', failing_since = NULL
		WHERE sink = ? AND target = ?`), sink, target)
	if err != nil {
		return fmt.Errorf("enable endpoint %s %s: %w", sink, target, err)
	}
	return nil
}

// MarkSinkEndpointNotified records that the endpoint-disabled event eventID
// was handed on.
func (s *DB) MarkSinkEndpointNotified(ctx context.Context, sink, target, eventID string) error {
	_, err := s.db.ExecContext(ctx, s.q(`UPDATE delivery_endpoints SET notified_at = ? WHERE sink = ? AND target = ? AND event_id = ?`),
		ms(s.now()), sink, target, eventID)
	if err != nil {
		return fmt.Errorf("endpoint %s %s notified: %w", sink, target, err)
	}
	return nil
}

// PruneSinkDeliveries deletes up to limit finished deliveries (succeeded,
// failed, …: anything but pending) created before before, oldest first,
// with their attempts and payloads, and returns how many it deleted. A
// pending delivery is kept whatever its age, and so is the newest
// delivery: SQLite would hand its id out again. Ids grow with creation
// time, so the scan starts at the oldest row and stops at the first one
// created since before: a prune that finds nothing to do reads one row.
func (s *DB) PruneSinkDeliveries(ctx context.Context, before time.Time, limit int) (int64, error) {
	if limit < 1 {
		return 0, fmt.Errorf("prune deliveries: limit %d", limit)
	}
	// The first delivery created since before bounds the deletion; none:
	// the newest one does (kept).
	var bound int64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT id FROM deliveries WHERE created_at >= ? ORDER BY id LIMIT 1`), ms(before)).Scan(&bound)
	if errors.Is(err, sql.ErrNoRows) {
		err = s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(id), 0) FROM deliveries`).Scan(&bound)
	}
	if err != nil {
		return 0, fmt.Errorf("prune deliveries: %w", err)
	}
	res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM deliveries WHERE id IN (
		SELECT id FROM deliveries WHERE id < ? AND status <> ? ORDER BY id LIMIT ?)`), bound, DeliveryPending, limit)
	if err != nil {
		return 0, fmt.Errorf("prune deliveries: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("prune deliveries: %w", err)
	}
	return n, nil
}
