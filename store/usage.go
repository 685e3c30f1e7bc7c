package store

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"
	"time"
)

// UsageRow is the API usage of one user's token on one route during one
// UTC day. TokenID is 0 for requests authenticated by a dashboard session
// and in rows summed over tokens.
type UsageRow struct {
	// Day is the UTC day, YYYY-MM-DD.
	Day     string `json:"day"`
	UserID  int64  `json:"user_id"`
	TokenID int64  `json:"token_id,omitempty"`
	// Route is the method and route pattern: "GET /api/v1/projects/:name".
	Route    string `json:"route"`
	Requests int64  `json:"requests"`
	// Errors counts the answers with a status of 400 or more.
	Errors int64 `json:"errors"`
	// LatencyUS is the sum of the requests' latencies in microseconds;
	// MaxLatencyUS the largest.
	LatencyUS    int64 `json:"latency_us"`
	MaxLatencyUS int64 `json:"max_latency_us"`
}

// DayLayout is the layout of UsageRow.Day.
const DayLayout = "2006-01-02"

// UsageDay is the UTC day of t as UsageRow.Day spells it.
func UsageDay(t time.Time) string { return t.UTC().Format(DayLayout) }

func checkDay(field, day string) error {
	if t, err := time.Parse(DayLayout, day); err != nil || t.Format(DayLayout) != day {
		return fmt.Errorf("usage: %s %q is not a day like 2006-01-02", field, day)
	}
	return nil
}

const addUsageSQL = `INSERT INTO api_usage (day, user_id, token_id, route, requests, errors, latency_us, max_latency_us)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?)
	ON CONFLICT (day, user_id, token_id, route) DO UPDATE SET
		requests = api_usage.requests + excluded.requests,
		errors = api_usage.errors + excluded.errors,
		latency_us = api_usage.latency_us + excluded.latency_us,
		max_latency_us = CASE WHEN excluded.max_latency_us > api_usage.max_latency_us
			THEN excluded.max_latency_us ELSE api_usage.max_latency_us END`

// AddUsage adds rows to the stored usage in one transaction: counts and
// latency sums are added to those of the same day, user, token and route,
// the largest latency is kept. Either every row is added or none.
// Concurrent callers may add the same keys.
func (s *DB) AddUsage(ctx context.Context, rows []UsageRow) error {
	for _, r := range rows {
		if err := checkDay("day", r.Day); err != nil {
			return err
		}
		if r.Route == "" || r.Requests < 0 || r.Errors < 0 || r.LatencyUS < 0 || r.MaxLatencyUS < 0 {
			return fmt.Errorf("usage: invalid row %+v", r)
		}
	}
	if len(rows) == 0 {
		return nil
	}
	// In key order, so that writers adding the same keys at once (several
	// nodes flushing) lock rows in the same order and cannot deadlock.
	rows = slices.Clone(rows)
	slices.SortFunc(rows, func(a, b UsageRow) int {
		return cmp.Or(cmp.Compare(a.Day, b.Day), cmp.Compare(a.UserID, b.UserID),
			cmp.Compare(a.TokenID, b.TokenID), cmp.Compare(a.Route, b.Route))
	})
	err := s.tx(ctx, func(tx *sql.Tx) error {
		p := s.prepared(tx, ctx)
		for _, r := range rows {
			if _, err := p.Exec(addUsageSQL, r.Day, r.UserID, r.TokenID, r.Route,
				r.Requests, r.Errors, r.LatencyUS, r.MaxLatencyUS); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("add usage (%d rows): %w", len(rows), err)
	}
	return nil
}

// UsageQuery selects stored usage.
type UsageQuery struct {
	// UserID selects one user; 0 selects every user.
	UserID int64
	// From and To are the first and last day, inclusive (YYYY-MM-DD).
	From, To string
	// ByToken keeps each token's rows apart; otherwise rows are summed
	// over the tokens of a user (TokenID 0).
	ByToken bool
}

// Usage returns the stored usage of q's days, ordered by day, user,
// route (and token).
func (s *DB) Usage(ctx context.Context, q UsageQuery) ([]UsageRow, error) {
	if err := checkDay("from", q.From); err != nil {
		return nil, err
	}
	if err := checkDay("to", q.To); err != nil {
		return nil, err
	}
	tokenCol, group := "0", "day, user_id, route"
	if q.ByToken {
		tokenCol, group = "token_id", "day, user_id, route, token_id"
	}
	query := `SELECT day, user_id, ` + tokenCol + `, route, CAST(SUM(requests) AS BIGINT), CAST(SUM(errors) AS BIGINT),
		CAST(SUM(latency_us) AS BIGINT), CAST(MAX(max_latency_us) AS BIGINT)
		FROM api_usage WHERE day >= ? AND day <= ?`
	args := []any{q.From, q.To}
	if q.UserID != 0 {
		query += ` AND user_id = ?`
		args = append(args, q.UserID)
	}
	query += ` GROUP BY ` + group + ` ORDER BY ` + group
	rows, err := s.db.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, fmt.Errorf("usage: %w", err)
	}
	defer rows.Close()
	var out []UsageRow
	for rows.Next() {
		var r UsageRow
		if err := rows.Scan(&r.Day, &r.UserID, &r.TokenID, &r.Route, &r.Requests, &r.Errors, &r.LatencyUS, &r.MaxLatencyUS); err != nil {
			return nil, fmt.Errorf("usage: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("usage: %w", err)
	}
	return out, nil
}
