package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/buildbridge/buildbridge/store"
)

// hotQuery is a query the hub runs often, as the store writes it, with
// its arguments as SQL literals. Write is set for queries that lock or
// change rows: they run inside a transaction that is rolled back.
type hotQuery struct {
	name  string
	where string // what runs it, and how often
	sql   string // with $1, $2, … placeholders
	args  []string
	write bool
}

// literal is the query's text with its arguments written in.
func (q hotQuery) literal() string {
	text := q.sql
	for i := len(q.args); i >= 1; i-- {
		text = strings.ReplaceAll(text, "$"+strconv.Itoa(i), q.args[i-1])
	}
	return text
}

// Fixed points of the seeded data (see seed).
const (
	seedProjects = 1000
	bigProject   = 1   // 10% of the builds
	smallProject = 500 // about 0.1%
	seedUsers    = 5000
	epochMS      = int64(1_790_000_000_000) // seeded builds start here, one a second
)

func hotQueries(rows int) []hotQuery {
	now := strconv.FormatInt(epochMS+int64(rows)*1000, 10)
	return []hotQuery{
		{name: "runner claim, no labels", where: "every claim and idle poll of a runner without labels (ClaimForRunner)",
			sql: `SELECT b.id, COALESCE(pl.labels, '') FROM builds b LEFT JOIN project_labels pl ON pl.project_id = b.project_id
			WHERE b.state = 'QUEUED' AND pl.project_id IS NULL ORDER BY b.id LIMIT 1 FOR UPDATE OF b SKIP LOCKED`,
			write: true},
		{name: "runner claim, labels (window 50)", where: "every claim and idle poll of a runner with labels",
			sql: `SELECT b.id, COALESCE(pl.labels, '') FROM builds b LEFT JOIN project_labels pl ON pl.project_id = b.project_id
			WHERE b.state = 'QUEUED' ORDER BY b.id LIMIT 50 FOR UPDATE OF b SKIP LOCKED`,
			write: true},
		{name: "claim: anything queued?", where: "every idle embedded worker and idle runner without labels, every second (ClaimQueuedOn, ClaimForRunner)",
			sql: `SELECT EXISTS (SELECT 1 FROM builds WHERE state = 'QUEUED' AND project_id NOT IN (SELECT project_id FROM project_labels))`},
		{name: "embedded claim", where: "every claim of an embedded worker",
			sql: `SELECT id FROM builds WHERE state = 'QUEUED' AND project_id NOT IN (SELECT project_id FROM project_labels)
			AND EXISTS (SELECT 1 FROM nodes WHERE id = $1 AND expires_at > $2) ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED`,
			args: []string{"'node-a'", now}, write: true},
		{name: "previous finished build of a branch", where: "every transition (recordTransition)",
			sql: `SELECT number, result FROM builds WHERE project_id = $1 AND branch = $2 AND number < $3 AND state = 'FINISHED' AND result <> 'canceled'
			ORDER BY number DESC LIMIT 1`, args: []string{strconv.Itoa(bigProject), "'main'", strconv.Itoa(rows + 1)}},
		{name: "build by id, locked", where: "every transition (transitionTx)",
			sql:  `SELECT ` + buildColsSQL + `, p.name, p.owner_id FROM builds b JOIN projects p ON p.id = b.project_id WHERE b.id = $1 FOR UPDATE OF b`,
			args: []string{strconv.Itoa(rows / 2)}, write: true},
		{name: "latest 50 builds of a big project (10%)", where: "API GET /projects/{p}/builds, dashboard",
			sql:  `SELECT ` + buildColsSQL + ` FROM builds b WHERE 1 = 1 AND b.project_id = $1 ORDER BY b.id DESC LIMIT $2`,
			args: []string{strconv.Itoa(bigProject), "50"}},
		{name: "latest 50 builds of a small project (0.1%)", where: "API GET /projects/{p}/builds, Slack /build list",
			sql:  `SELECT ` + buildColsSQL + ` FROM builds b WHERE 1 = 1 AND b.project_id = $1 ORDER BY b.id DESC LIMIT $2`,
			args: []string{strconv.Itoa(smallProject), "50"}},
		{name: "latest 50 builds of a project's branch", where: "API ?branch=",
			sql:  `SELECT ` + buildColsSQL + ` FROM builds b WHERE 1 = 1 AND b.project_id = $1 AND b.branch = $2 ORDER BY b.id DESC LIMIT $3`,
			args: []string{strconv.Itoa(smallProject), "'main'", "50"}},
		{name: "latest 50 builds", where: "dashboard, API GET /builds",
			sql: `SELECT ` + buildColsSQL + ` FROM builds b WHERE 1 = 1 ORDER BY b.id DESC LIMIT $1`, args: []string{"50"}},
		{name: "running builds", where: "API ?state=STARTED",
			sql:  `SELECT ` + buildColsSQL + ` FROM builds b WHERE 1 = 1 AND b.state = $1 ORDER BY b.id DESC LIMIT $2`,
			args: []string{"'STARTED'", "50"}},
		{name: "orphaned builds", where: "recovery, every few seconds on every node (OrphanedBuilds)",
			sql: `SELECT b.id, COALESCE(b.node, ''), n.expires_at FROM builds b LEFT JOIN nodes n ON n.id = b.node
			WHERE b.state = 'STARTED' AND NOT EXISTS (SELECT 1 FROM build_leases l WHERE l.build_id = b.id)
			AND (b.node IS NULL OR (b.node <> $1 AND (n.id IS NULL OR n.expires_at <= $2))) ORDER BY b.id LIMIT $3`,
			args: []string{"'node-self'", now, "100"}},
		{name: "builds waiting for labels", where: "the lease reaper, every second on every node (WaitingForLabels)",
			sql: `SELECT pl.labels, COUNT(*) FROM builds b JOIN project_labels pl ON pl.project_id = b.project_id
			WHERE b.state = 'QUEUED' GROUP BY pl.labels`},
		{name: "expired leases", where: "the lease reaper, every second on every node (ExpiredLeases)",
			sql: `SELECT l.build_id, l.runner_id, l.token, l.expires_at, r.name FROM build_leases l JOIN runners r ON r.id = l.runner_id
			WHERE l.expires_at <= $1 ORDER BY l.expires_at LIMIT $2`, args: []string{now, "100"}},
		{name: "builds by state and result", where: "every /metrics scrape of every node (CountBuilds)",
			sql: `SELECT state, result, SUM(n) FROM build_counts GROUP BY state, result HAVING SUM(n) <> 0`},
		{name: "due deliveries: any?", where: "delivery pickup, every node, each tick (PickupSinkDeliveries)",
			sql:  `SELECT 1 FROM deliveries WHERE status = 'pending' AND next_at < $1 AND lease_until < $2 LIMIT 1`,
			args: []string{now, now}},
		{name: "due deliveries: lease 500", where: "delivery pickup when some are due",
			sql: `UPDATE deliveries SET lease_owner = $1, lease_until = $2
			WHERE id IN (SELECT id FROM deliveries WHERE status = 'pending' AND next_at < $3 AND lease_until < $4 ORDER BY next_at, id LIMIT $5 FOR UPDATE SKIP LOCKED)
			RETURNING ` + deliveryColsSQL, args: []string{"'node-self'", now, now, now, "500"}, write: true},
		{name: "free pending deliveries (start-up)", where: "a node starting (FreeSinkDeliveries, pages of 1,000)",
			sql:  `SELECT ` + deliveryColsSQL + ` FROM deliveries WHERE status = 'pending' AND id > $1 AND (lease_owner = $2 OR lease_until < $3) ORDER BY id LIMIT $4`,
			args: []string{"0", "'node-self'", now, "1000"}},
		{name: "a user's latest 50 deliveries", where: "API GET /deliveries",
			sql:  `SELECT ` + deliveryColsSQL + ` FROM deliveries WHERE 1 = 1 AND owner_id = $1 ORDER BY id DESC LIMIT $2`,
			args: []string{"42", "50"}},
		{name: "latest 50 dead-letter deliveries", where: "API GET /deliveries?status=failed (admin)",
			sql:  `SELECT ` + deliveryColsSQL + ` FROM deliveries WHERE 1 = 1 AND status = $1 ORDER BY id DESC LIMIT $2`,
			args: []string{"'failed'", "50"}},
		{name: "outbox read", where: "the relay holding the outbox lock, after every commit or each second",
			sql: `SELECT id, event_id, topic, payload, created_at FROM outbox ORDER BY id LIMIT $1`, args: []string{"256"}},
	}
}

// Column lists as the store's queries have them.
const (
	buildColsSQL = `b.id, b.project_id, b.number, b.state, b.result, b.reason, b.ref, b.branch, b.sha,
	b.author, b.author_email, b.message, b.triggered_by, b.cancel_requested, b.created_at, b.started_at, b.finished_at,
	b.compare_url, b.pusher`
	deliveryColsSQL = `id, message_id, event_id, event_type, sink, sink_type, target, route, owner_id, build_id, seq,
	status, attempts, tries, next_at, last_code, last_error, created_at, updated_at, finished_at, lease_owner, lease_until`
)

// plan is what one EXPLAIN (ANALYZE, BUFFERS) showed.
type plan struct {
	exec    float64 // ms, median of the runs
	buffers int64   // shared blocks hit + read, last run
	shape   string
	seqScan bool
}

func runPostgres(ctx context.Context, o options) error {
	fmt.Printf("\n== postgres: hot queries at %v builds and as many deliveries (private schema, dropped after)\n", o.sizes)
	var raw [4]byte
	rand.Read(raw[:])
	sc, err := privateSchema(ctx, o.pgDSN, "bbscale_pg_", "bbscale-pg-"+hex.EncodeToString(raw[:]))
	if err != nil {
		return err
	}
	if o.keep {
		defer func() { fmt.Printf("schema %s kept\n", sc.name); sc.admin.Close() }()
	} else {
		defer sc.drop()
	}
	s, err := store.Open(ctx, store.Config{Postgres: sc.dsn, Logger: slog.New(slog.DiscardHandler), MaxOpenConns: 2})
	if err != nil {
		return err
	}
	defer s.Close()
	conn, err := s.SQL().Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := seedFixed(ctx, conn); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	sizes := slices.Clone(o.sizes)
	slices.Sort(sizes)
	modes := []struct{ mode, title string }{
		{"custom", "custom plan, i.e. planned with the values"},
		{"auto", "as a prepared statement runs after 10 executions (plan_cache_mode auto: PostgreSQL may switch to a generic plan; pgx prepares every statement)"},
		{"generic", "generic plan forced (plan_cache_mode force_generic_plan): what a switch would cost"},
	}
	results := map[string]map[string][]plan{}
	for _, m := range modes {
		results[m.mode] = map[string][]plan{}
	}
	have := 0
	for _, n := range sizes {
		t0 := time.Now()
		if err := seedRows(ctx, conn, have, n); err != nil {
			return fmt.Errorf("seed %d rows: %w", n, err)
		}
		have = n
		fmt.Printf("seeded %d builds, %d deliveries, %d delivery attempts in %.1fs (load %s)\n", n, n, n, time.Since(t0).Seconds(), loadAvg())
		for _, q := range hotQueries(n) {
			for _, m := range modes {
				// A query without parameters runs too: it has one plan
				// whatever the plan cache does, which is the point of
				// writing its constants into its text.
				p, err := explain(ctx, conn, q, m.mode)
				if err != nil {
					return fmt.Errorf("%s (%s): %w", q.name, m.mode, err)
				}
				results[m.mode][q.name] = append(results[m.mode][q.name], p)
			}
		}
		if err := sizesReport(ctx, conn, n); err != nil {
			return err
		}
	}
	head := fmt.Sprintf("%-44s", "query")
	for _, n := range sizes {
		head += fmt.Sprintf(" %10s", short(n))
	}
	for _, m := range modes {
		fmt.Printf("\nexecution time in ms (median of 5 EXPLAIN ANALYZE runs) at each size, buffers and plan at the largest; %s:\n", m.title)
		fmt.Println(head + "  buffers  plan")
		for _, q := range hotQueries(sizes[len(sizes)-1]) {
			ps := results[m.mode][q.name]
			if ps[0].exec < 0 {
				continue
			}
			line := fmt.Sprintf("%-44s", q.name)
			for _, p := range ps {
				line += fmt.Sprintf(" %10.3f", p.exec)
			}
			last := ps[len(ps)-1]
			fmt.Printf("%s %8d  %s\n", line, last.buffers, last.shape)
		}
	}
	if err := throughStore(ctx, sc.dsn, have); err != nil {
		return fmt.Errorf("through the store: %w", err)
	}
	if err := churn(ctx, conn, have); err != nil {
		return fmt.Errorf("churn: %w", err)
	}
	return retention(ctx, conn, have)
}

func short(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return strconv.Itoa(n/1_000_000) + "M"
	case n >= 1000 && n%1000 == 0:
		return strconv.Itoa(n/1000) + "k"
	}
	return strconv.Itoa(n)
}

// seedFixed writes what does not grow: users, projects (ten of them need
// the label gpu), runners and nodes, an outbox of 100 rows.
func seedFixed(ctx context.Context, c *sql.Conn) error {
	stmts := []string{
		`INSERT INTO users (id, name, created_at) SELECT i, 'user' || i, 0 FROM generate_series(1, ` + strconv.Itoa(seedUsers) + `) i`,
		`INSERT INTO projects (id, name, owner_id, repo, default_branch, steps, created_at, updated_at, last_number)
		 SELECT i, 'project' || i, 1 + i % ` + strconv.Itoa(seedUsers) + `, '/dev/null', 'main', '[]', 0, 0, 100000000 FROM generate_series(1, ` + strconv.Itoa(seedProjects) + `) i`,
		`INSERT INTO project_labels (project_id, labels) SELECT i, 'gpu' FROM generate_series(991, 1000) i`,
		`INSERT INTO runners (id, name, hash, created_at) SELECT i, 'runner' || i, md5(i::text), 0 FROM generate_series(1, 100) i`,
		`INSERT INTO nodes (id, started_at, expires_at) VALUES ('node-a', 0, 9000000000000), ('node-dead', 0, 1)`,
		`INSERT INTO outbox (event_id, topic, payload, created_at)
		 SELECT 'evt_outbox_' || i, 'build.transition', convert_to(repeat('x', 600), 'UTF8'), 0 FROM generate_series(1, 100) i`,
	}
	for _, q := range stmts {
		if _, err := c.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%.60s…: %w", q, err)
		}
	}
	return nil
}

// seedRows grows builds, deliveries and their attempts from have to n
// rows, one build a second from epochMS. Project 1 gets 10% of the
// builds, projects 991–1000 (label gpu) 1%, the others the rest; a
// quarter are on feature branches; 10% failed, 2% canceled. The newest
// 100 builds are QUEUED and the 50 before them STARTED (half held by a
// remote runner's lease, a quarter by a live node, a quarter by a dead
// one); the newest 1,000 deliveries are pending (due over the next 10
// minutes, some overdue), 2% of the others failed (dead letters).
func seedRows(ctx context.Context, c *sql.Conn, have, n int) error {
	from, to := strconv.Itoa(have+1), strconv.Itoa(n)
	stmts := []string{
		// What was live at the previous size finished.
		`DELETE FROM build_leases`,
		`UPDATE builds SET state = 'FINISHED', result = 'passed', node = NULL WHERE state <> 'FINISHED'`,
		`UPDATE deliveries SET status = 'succeeded', next_at = NULL, finished_at = created_at + 500 WHERE status = 'pending'`,
		`INSERT INTO builds (id, project_id, number, state, result, ref, branch, sha, author, message, created_at, started_at, finished_at)
		 SELECT i,
		   CASE WHEN i % 10 = 0 THEN 1 WHEN i % 100 = 1 THEN 991 + (i / 100) % 10 ELSE 2 + i % 989 END,
		   i, 'FINISHED',
		   CASE WHEN i % 10 = 3 THEN 'failed' WHEN i % 50 = 7 THEN 'canceled' ELSE 'passed' END,
		   CASE WHEN i % 4 = 0 THEN 'refs/heads/feature-' || (i % 97) ELSE 'refs/heads/main' END,
		   CASE WHEN i % 4 = 0 THEN 'feature-' || (i % 97) ELSE 'main' END,
		   md5(i::text) || substr(md5((i + 1)::text), 1, 8), 'A. Developer', 'commit message of build ' || i,
		   ` + strconv.FormatInt(epochMS, 10) + ` + i * 1000::bigint, ` + strconv.FormatInt(epochMS, 10) + ` + i * 1000::bigint + 2000,
		   ` + strconv.FormatInt(epochMS, 10) + ` + i * 1000::bigint + 62000
		 FROM generate_series(` + from + `, ` + to + `) i`,
		`UPDATE builds SET state = 'QUEUED', result = '', started_at = NULL, finished_at = NULL WHERE id > ` + to + ` - 100`,
		`UPDATE builds SET state = 'STARTED', result = '', finished_at = NULL,
		   node = CASE WHEN id % 4 = 1 THEN 'node-a' WHEN id % 4 = 3 THEN 'node-dead' END
		 WHERE id > ` + to + ` - 150 AND id <= ` + to + ` - 100`,
		`INSERT INTO build_leases (build_id, runner_id, token, expires_at)
		 SELECT id, 1 + id % 100, md5(id::text), ` + strconv.FormatInt(epochMS, 10) + ` + id * 1000::bigint + 30000
		 FROM builds WHERE state = 'STARTED' AND node IS NULL`,
		`INSERT INTO deliveries (id, message_id, event_id, event_type, sink, sink_type, target, route, owner_id, build_id, seq,
		   status, attempts, tries, next_at, last_code, created_at, updated_at, finished_at)
		 SELECT i, 'msg_' || i, 'evt_' || i, 'build-state-changed',
		   (ARRAY['hook', 'slack', 'mail'])[1 + i % 3], (ARRAY['webhook', 'slack', 'email'])[1 + i % 3],
		   'https://hooks.example.com/' || (i % 50), 'route' || (i % 7), 1 + i % ` + strconv.Itoa(seedUsers) + `, i, i,
		   CASE WHEN i % 50 = 9 THEN 'failed' ELSE 'succeeded' END, 1, 1, NULL,
		   CASE WHEN i % 50 = 9 THEN 500 ELSE 200 END,
		   ` + strconv.FormatInt(epochMS, 10) + ` + i * 1000::bigint, ` + strconv.FormatInt(epochMS, 10) + ` + i * 1000::bigint + 300,
		   ` + strconv.FormatInt(epochMS, 10) + ` + i * 1000::bigint + 300
		 FROM generate_series(` + from + `, ` + to + `) i`,
		`INSERT INTO delivery_payloads (delivery_id, payload)
		 SELECT i, convert_to(repeat('p', 400), 'UTF8') FROM generate_series(` + from + `, ` + to + `) i`,
		`INSERT INTO delivery_attempts (delivery_id, number, started_at, duration_us, status_code, outcome, resp_headers, resp_body)
		 SELECT i, 1, ` + strconv.FormatInt(epochMS, 10) + ` + i * 1000::bigint, 12000, CASE WHEN i % 50 = 9 THEN 500 ELSE 200 END,
		   CASE WHEN i % 50 = 9 THEN 'failed' ELSE 'success' END, '{"Content-Type":["text/plain"]}', convert_to('ok', 'UTF8')
		 FROM generate_series(` + from + `, ` + to + `) i`,
		// The newest 1,000 are pending: due from 100 s ago to 15 min ahead.
		`UPDATE deliveries SET status = 'pending', finished_at = NULL, attempts = 0, tries = 0,
		   next_at = ` + strconv.FormatInt(epochMS, 10) + ` + ` + to + ` * 1000::bigint + (id % 1000 - 100) * 1000
		 WHERE id > ` + to + ` - 1000`,
		`SELECT setval(pg_get_serial_sequence('builds', 'id'), ` + to + `)`,
		`SELECT setval(pg_get_serial_sequence('deliveries', 'id'), ` + to + `)`,
		`VACUUM ANALYZE builds`, `VACUUM ANALYZE deliveries`, `VACUUM ANALYZE delivery_attempts`, `VACUUM ANALYZE build_leases`,
		`VACUUM ANALYZE project_labels`, `VACUUM ANALYZE projects`, `VACUUM ANALYZE outbox`, `VACUUM ANALYZE nodes`, `VACUUM ANALYZE runners`,
	}
	for _, q := range stmts {
		if _, err := c.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%.70s…: %w", strings.Join(strings.Fields(q), " "), err)
		}
	}
	return nil
}

// prepared numbers the statements explain prepares.
var prepared int

// explain runs q under EXPLAIN (ANALYZE, BUFFERS) five times (inside a
// rolled-back transaction when it writes) and returns the median
// execution time and the last run's plan. mode "custom" plans it with its
// values; "auto" prepares it and runs it 10 times first, as the store's
// prepared statements are, leaving PostgreSQL's plan cache to choose;
// "generic" forces the generic plan.
func explain(ctx context.Context, c *sql.Conn, q hotQuery, mode string) (plan, error) {
	text := q.literal()
	inTx := func(f func() error) error {
		if q.write {
			if _, err := c.ExecContext(ctx, `BEGIN`); err != nil {
				return err
			}
		}
		err := f()
		if q.write {
			if _, rerr := c.ExecContext(ctx, `ROLLBACK`); rerr != nil && err == nil {
				err = rerr
			}
		}
		return err
	}
	stmt := `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ` + text
	if mode != "custom" {
		if mode == "generic" {
			if _, err := c.ExecContext(ctx, `SET plan_cache_mode = force_generic_plan`); err != nil {
				return plan{}, err
			}
			defer c.ExecContext(context.Background(), `RESET plan_cache_mode`)
		}
		// A name of its own each time: pgx caches statements by their text.
		prepared++
		name := "bbscale_q" + strconv.Itoa(prepared)
		if _, err := c.ExecContext(ctx, `PREPARE `+name+` AS `+q.sql); err != nil {
			return plan{}, err
		}
		defer c.ExecContext(context.Background(), `DEALLOCATE `+name)
		exec := `EXECUTE ` + name
		if len(q.args) > 0 {
			exec += `(` + strings.Join(q.args, ", ") + `)`
		}
		if mode == "auto" {
			for range 10 {
				if err := inTx(func() error {
					rows, err := c.QueryContext(ctx, exec)
					if err != nil {
						return err
					}
					for rows.Next() {
					}
					rows.Close()
					return rows.Err()
				}); err != nil {
					return plan{}, err
				}
			}
		}
		stmt = `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ` + exec
	}
	var times []float64
	var last plan
	for range 5 {
		var out string
		if err := inTx(func() error { return c.QueryRowContext(ctx, stmt).Scan(&out) }); err != nil {
			return plan{}, err
		}
		p, err := decodeExplain(out)
		if err != nil {
			return plan{}, err
		}
		times = append(times, p.exec)
		last = p
	}
	slices.Sort(times)
	last.exec = times[len(times)/2]
	return last, nil
}

// decodeExplain reads one EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) output:
// its execution time, top node's buffers and plan shape.
func decodeExplain(out string) (plan, error) {
	var doc []struct {
		Plan          map[string]any `json:"Plan"`
		ExecutionTime float64        `json:"Execution Time"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil || len(doc) != 1 {
		return plan{}, fmt.Errorf("explain output: %v", err)
	}
	p := plan{exec: doc[0].ExecutionTime}
	var nodes []string
	walkPlan(doc[0].Plan, &nodes, &p)
	p.shape = strings.Join(nodes, " › ")
	hit, _ := doc[0].Plan["Shared Hit Blocks"].(float64)
	read, _ := doc[0].Plan["Shared Read Blocks"].(float64)
	p.buffers = int64(hit + read)
	return p, nil
}

// walkPlan lists the plan's nodes, depth first, with the index or table
// each reads.
func walkPlan(n map[string]any, out *[]string, p *plan) {
	t, _ := n["Node Type"].(string)
	s := t
	if ix, ok := n["Index Name"].(string); ok {
		s += " " + ix
	} else if rel, ok := n["Relation Name"].(string); ok && strings.Contains(t, "Scan") {
		s += " " + rel
	}
	if t == "Seq Scan" {
		p.seqScan = true
		if rows, ok := n["Actual Rows"].(float64); ok {
			s += fmt.Sprintf(" (%.0f rows out", rows)
			if rem, ok := n["Rows Removed by Filter"].(float64); ok {
				s += fmt.Sprintf(", %.0f filtered", rem)
			}
			s += ")"
		}
	}
	switch t {
	case "Limit", "Result", "Materialize", "Hash", "Memoize":
		// Glue: not worth a place in the summary.
	default:
		*out = append(*out, s)
	}
	kids, _ := n["Plans"].([]any)
	for _, k := range kids {
		if m, ok := k.(map[string]any); ok {
			walkPlan(m, out, p)
		}
	}
}

// sizesReport prints the size of the tables that grow, per row.
func sizesReport(ctx context.Context, c *sql.Conn, n int) error {
	var parts []string
	for _, t := range []string{"builds", "deliveries", "delivery_attempts"} {
		var heap, idx int64
		if err := c.QueryRowContext(ctx, `SELECT pg_table_size($1::regclass), pg_indexes_size($1::regclass)`, t).Scan(&heap, &idx); err != nil {
			return err
		}
		parts = append(parts, fmt.Sprintf("%s %.0f MiB + %.0f MiB indexes (%.0f B/row)", t, mib(uint64(heap)), mib(uint64(idx)), float64(heap+idx)/float64(n)))
	}
	fmt.Printf("  sizes at %s: %s\n", short(n), strings.Join(parts, "; "))
	return nil
}

// churn moves 50,000 builds through QUEUED → FINISHED without a vacuum in
// between, as a busy hour does between two autovacuums, and times the
// claim on the index full of dead entries: the first scan and the next.
func churn(ctx context.Context, c *sql.Conn, n int) error {
	const burst = 50000
	q := hotQueries(n)[0]
	lo := strconv.Itoa(n / 4)
	hi := strconv.Itoa(n/4 + burst)
	for _, st := range []string{
		`UPDATE builds SET state = 'QUEUED', result = '' WHERE id > ` + lo + ` AND id <= ` + hi,
		`VACUUM ANALYZE builds`,
		`UPDATE builds SET state = 'STARTED' WHERE id > ` + lo + ` AND id <= ` + hi,
		`UPDATE builds SET state = 'FINISHED', result = 'passed' WHERE id > ` + lo + ` AND id <= ` + hi,
	} {
		if _, err := c.ExecContext(ctx, st); err != nil {
			return err
		}
	}
	var dead int64
	c.QueryRowContext(ctx, `SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'builds'`).Scan(&dead)
	first, err := explainOnce(ctx, c, q)
	if err != nil {
		return err
	}
	next, err := explain(ctx, c, q, "custom")
	if err != nil {
		return err
	}
	if _, err := c.ExecContext(ctx, `VACUUM ANALYZE builds`); err != nil {
		return err
	}
	after, err := explain(ctx, c, q, "custom")
	if err != nil {
		return err
	}
	fmt.Printf("\nclaim after %d builds went QUEUED → STARTED → FINISHED without a vacuum (%d dead rows): first run %.3f ms (%d buffers), "+
		"next runs %.3f ms (%d buffers); after VACUUM %.3f ms (%d buffers)\n",
		burst, dead, first.exec, first.buffers, next.exec, next.buffers, after.exec, after.buffers)
	return nil
}

// explainOnce runs q once under EXPLAIN (ANALYZE, BUFFERS), in a
// rolled-back transaction: a first run, before any cache is warm.
func explainOnce(ctx context.Context, c *sql.Conn, q hotQuery) (plan, error) {
	text := q.literal()
	if _, err := c.ExecContext(ctx, `BEGIN`); err != nil {
		return plan{}, err
	}
	defer c.ExecContext(context.Background(), `ROLLBACK`)
	var out string
	if err := c.QueryRowContext(ctx, `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) `+text).Scan(&out); err != nil {
		return plan{}, err
	}
	return decodeExplain(out)
}

// retention times the batched deletes that would keep builds and
// deliveries bounded: the 10,000 oldest finished rows of each, with what
// cascades from them, inside a transaction that is rolled back.
func retention(ctx context.Context, c *sql.Conn, n int) error {
	fmt.Printf("\nretention, one batch of 10,000 of the oldest rows (rolled back):\n")
	for _, d := range []struct{ name, sql string }{
		{"deliveries (+ their attempts, ON DELETE CASCADE)", `DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries
			WHERE status <> 'pending' AND created_at < ` + strconv.FormatInt(epochMS+int64(n)*500, 10) + ` ORDER BY id LIMIT 10000)`},
		{"builds (+ logs, artifacts, leases, ON DELETE CASCADE)", `DELETE FROM builds WHERE id IN (SELECT id FROM builds
			WHERE state = 'FINISHED' AND created_at < ` + strconv.FormatInt(epochMS+int64(n)*500, 10) + ` ORDER BY id LIMIT 10000)`},
	} {
		if _, err := c.ExecContext(ctx, `BEGIN`); err != nil {
			return err
		}
		t0 := time.Now()
		res, err := c.ExecContext(ctx, d.sql)
		took := time.Since(t0)
		c.ExecContext(context.Background(), `ROLLBACK`)
		if err != nil {
			return fmt.Errorf("%s: %w", d.name, err)
		}
		rows, _ := res.RowsAffected()
		fmt.Printf("  %-54s %6d rows in %7.1f ms (%.1f µs a row)\n", d.name, rows, ms(took), us(took)/float64(max(rows, 1)))
	}
	return nil
}

// throughStore times the store's own methods on one connection, call by
// call: PostgreSQL plans a prepared statement with its values for the
// first five executions and may then keep a generic plan, which is what
// the store's statements get in production.
func throughStore(ctx context.Context, dsn string, n int) error {
	s, err := store.Open(ctx, store.Config{Postgres: dsn, Logger: slog.New(slog.DiscardHandler), MaxOpenConns: 1})
	if err != nil {
		return err
	}
	defer s.Close()
	now := time.UnixMilli(epochMS + int64(n)*1000)
	lease := store.SinkLease{Owner: "node-bench", Until: now.Add(time.Minute)}
	calls := []struct {
		name string
		f    func() error
	}{
		{"ClaimQueuedOn (embedded worker; a build each)", func() error {
			_, err := s.ClaimQueuedOn(ctx, "node-a")
			return err
		}},
		{"ClaimForRunner, no labels (a build each)", func() error {
			_, _, err := s.ClaimForRunner(ctx, 1, nil, time.Minute)
			return err
		}},
		{"PickupSinkDeliveries (first call leases the due ones)", func() error {
			_, err := s.PickupSinkDeliveries(ctx, lease, now, now, 500)
			return err
		}},
		{"WaitingForLabels (reaper)", func() error {
			_, err := s.WaitingForLabels(ctx)
			return err
		}},
		{"OrphanedBuilds (recovery)", func() error {
			_, err := s.OrphanedBuilds(ctx, "node-a", false, false, 500)
			return err
		}},
		{"CountBuilds (metrics scrape)", func() error {
			_, err := s.CountBuilds(ctx)
			return err
		}},
		{"ListBuilds of a small project (0.1%)", func() error {
			_, err := s.ListBuilds(ctx, store.BuildFilter{ProjectID: smallProject, Limit: 50})
			return err
		}},
	}
	fmt.Printf("\nthrough the store, one connection, %d rows (ms per call, calls 1–12 in order):\n", n)
	series := func(name string, f func() error) error {
		var line []string
		for range 12 {
			t0 := time.Now()
			if err := f(); err != nil && !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("%s: %w", name, err)
			}
			line = append(line, fmt.Sprintf("%.2f", ms(time.Since(t0))))
		}
		fmt.Printf("  %-54s %s\n", name, strings.Join(line, " "))
		return nil
	}
	for _, c := range calls {
		if err := series(c.name, c.f); err != nil {
			return err
		}
	}
	// Nothing queued, as on an idle hub: every idle embedded worker asks
	// every second, every idle runner every second.
	db := s.SQL()
	var ids []int64
	rows, err := db.QueryContext(ctx, `UPDATE builds SET state = 'FINISHED' WHERE state = 'QUEUED' RETURNING id`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var id int64
		rows.Scan(&id)
		ids = append(ids, id)
	}
	rows.Close()
	defer db.ExecContext(context.Background(), `UPDATE builds SET state = 'QUEUED' WHERE id = ANY($1)`, ids)
	if err := series("ClaimQueuedOn, nothing queued (idle worker)", func() error {
		_, err := s.ClaimQueuedOn(ctx, "node-a")
		return err
	}); err != nil {
		return err
	}
	return series("ClaimForRunner, nothing queued (idle runner)", func() error {
		_, _, err := s.ClaimForRunner(ctx, 1, nil, time.Minute)
		return err
	})
}
