package store

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/store/storetest"
)

// TestGenericPlansUseIndexes runs the statements that run all the time
// (claims and their idle probes, recovery, the reaper, the delivery
// pickup and start-up load, a project's latest builds) through the store
// on one connection, then explains every statement pgx prepared on it
// with PostgreSQL's generic plan forced: the plan a prepared statement
// may keep after five executions, made without its parameters' values.
// None may read builds or deliveries whole: no sequential scan, no walk
// of the primary key without a bound. At 1M builds such a plan took
// 120-1,100 ms per call where the index takes well under one.
func TestGenericPlansUseIndexes(t *testing.T) {
	s, err := Open(context.Background(), Config{Postgres: storetest.PostgresDSN(t), MaxOpenConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	_, p := mkProject(t, s, "big")
	_, gpu := mkProject(t, s, "gpu")
	if err := s.SetProjectLabels(ctx, gpu.ID, []string{"gpu"}); err != nil {
		t.Fatal(err)
	}
	// 100 more projects; 20,000 finished builds spread over them (a
	// tenth in "big", 2% in "gpu") and as many deliveries, then a few
	// queued builds and pending deliveries, the newest, as on a hub that
	// has run for a while.
	const rows = 20000
	for _, q := range []string{
		`INSERT INTO projects (name, owner_id, repo, default_branch, steps, created_at, updated_at)
			SELECT 'p' || i, owner_id, repo, default_branch, steps, 0, 0 FROM projects, generate_series(1, 100) i WHERE name = 'big'`,
		fmt.Sprintf(`INSERT INTO builds (project_id, number, state, result, ref, branch, sha, created_at, started_at, finished_at)
			SELECT CASE WHEN i %% 10 = 0 THEN %d WHEN i %% 50 = 1 THEN %d ELSE (SELECT MAX(id) FROM projects) - i %% 100 END,
			i, 'FINISHED', CASE WHEN i %% 10 = 3 THEN 'failed' ELSE 'passed' END,
			'refs/heads/main', CASE WHEN i %% 4 = 0 THEN 'feature' ELSE 'main' END, md5(i::text), i, i, i
			FROM generate_series(1, %d) i`, p.ID, gpu.ID, rows),
		`UPDATE projects SET last_number = 100000`,
		fmt.Sprintf(`INSERT INTO deliveries (message_id, event_id, event_type, sink, sink_type, target, status, next_at, created_at, updated_at)
			SELECT 'msg_' || i, 'evt_' || i, 'build-state-changed', 'hook', 'webhook', 'https://example.com/',
			CASE WHEN i > %d THEN 'pending' ELSE 'succeeded' END, CASE WHEN i > %d THEN i END, i, i
			FROM generate_series(1, %d) i`, rows-20, rows-20, rows),
		`ANALYZE`,
	} {
		if _, err := s.db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%.60s: %v", q, err)
		}
	}
	for range 3 {
		if _, err := s.CreateBuild(ctx, NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: "abc"}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateBuild(ctx, NewBuild{ProjectID: gpu.ID, Ref: "refs/heads/main", Branch: "main", SHA: "abc"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RenewNode(ctx, "node-a", time.Minute); err != nil {
		t.Fatal(err)
	}
	_, runner, err := s.CreateRunner(ctx, "r", nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	lease := SinkLease{Owner: "node-a", Until: now.Add(time.Minute)}
	calls := map[string]func() error{
		"ClaimQueuedOn": func() error { _, err := s.ClaimQueuedOn(ctx, "node-a"); return err },
		"ClaimQueued":   func() error { _, err := s.ClaimQueued(ctx); return err },
		"ClaimForRunner": func() error {
			_, _, err := s.ClaimForRunner(ctx, runner.ID, nil, time.Minute)
			return err
		},
		"ClaimForRunner with labels": func() error {
			_, _, err := s.ClaimForRunner(ctx, runner.ID, []string{"gpu"}, time.Minute)
			return err
		},
		"OrphanedBuilds": func() error {
			for _, v := range [][2]bool{{false, false}, {true, false}, {false, true}, {true, true}} {
				if _, err := s.OrphanedBuilds(ctx, "node-a", v[0], v[1], 100); err != nil {
					return err
				}
			}
			return nil
		},
		"WaitingForLabels": func() error { _, err := s.WaitingForLabels(ctx); return err },
		"PruneNodes":       func() error { return s.PruneNodes(ctx, now.Add(-time.Hour)) },
		"CountBuilds":      func() error { _, err := s.CountBuilds(ctx); return err },
		"ListBuilds of a project": func() error {
			_, err := s.ListBuilds(ctx, BuildFilter{ProjectID: gpu.ID})
			return err
		},
		"ListBuilds of a branch": func() error {
			_, err := s.ListBuilds(ctx, BuildFilter{ProjectID: gpu.ID, Branch: "feature"})
			return err
		},
		"PickupSinkDeliveries": func() error { _, err := s.PickupSinkDeliveries(ctx, lease, now, now, 10); return err },
		"FreeSinkDeliveries": func() error {
			_, err := s.FreeSinkDeliveries(ctx, "node-b", now, 0, 10)
			return err
		},
	}
	// Past the claims (nothing left to claim) too: the idle probes.
	for range 8 {
		for name, call := range calls {
			if err := call(); err != nil && !strings.Contains(err.Error(), ErrNotFound.Error()) {
				t.Fatalf("%s: %v", name, err)
			}
		}
	}
	s.preparing.Wait()

	conn, err := s.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `SET plan_cache_mode = force_generic_plan`); err != nil {
		t.Fatal(err)
	}
	list, err := conn.QueryContext(ctx, `SELECT name, statement, cardinality(parameter_types) FROM pg_prepared_statements`)
	if err != nil {
		t.Fatal(err)
	}
	type prepared struct {
		name, text string
		params     int
	}
	var stmts []prepared
	for list.Next() {
		var p prepared
		if err := list.Scan(&p.name, &p.text, &p.params); err != nil {
			t.Fatal(err)
		}
		stmts = append(stmts, p)
	}
	list.Close()
	checked := 0
	for _, st := range stmts {
		if !strings.Contains(st.text, "FROM builds") && !strings.Contains(st.text, "FROM deliveries") &&
			!strings.Contains(st.text, "UPDATE deliveries") {
			continue
		}
		args := strings.TrimSuffix(strings.Repeat("NULL, ", st.params), ", ")
		exec := `EXPLAIN (FORMAT JSON) EXECUTE ` + st.name
		if st.params > 0 {
			exec += `(` + args + `)`
		}
		var out string
		if err := conn.QueryRowContext(ctx, exec).Scan(&out); err != nil {
			t.Fatalf("%s\n%s: %v", st.text, exec, err)
		}
		var doc []struct {
			Plan map[string]any `json:"Plan"`
		}
		if err := json.Unmarshal([]byte(out), &doc); err != nil || len(doc) != 1 {
			t.Fatalf("explain output %q: %v", out, err)
		}
		checked++
		if bad := wholeTableRead(doc[0].Plan); bad != "" {
			t.Errorf("the generic plan reads a whole table (%s):\n%s\nplan: %s", bad, strings.Join(strings.Fields(st.text), " "), out)
		}
	}
	// Every call above prepared at least one such statement.
	if checked < len(calls) {
		t.Fatalf("only %d statements on builds or deliveries were prepared on the connection, want at least %d", checked, len(calls))
	}
}

// wholeTableRead names the first node of a plan that reads builds or
// deliveries whole: a sequential scan, or a walk of the primary key
// without an index condition.
func wholeTableRead(n map[string]any) string {
	typ, _ := n["Node Type"].(string)
	rel, _ := n["Relation Name"].(string)
	ix, _ := n["Index Name"].(string)
	_, cond := n["Index Cond"]
	switch {
	case rel != "builds" && rel != "deliveries":
	case typ == "Seq Scan":
		return "Seq Scan on " + rel
	case (typ == "Index Scan" || typ == "Index Only Scan") && strings.HasSuffix(ix, "_pkey") && !cond:
		return typ + " using " + ix + " without a condition"
	}
	kids, _ := n["Plans"].([]any)
	for _, k := range kids {
		if m, ok := k.(map[string]any); ok {
			if bad := wholeTableRead(m); bad != "" {
				return bad
			}
		}
	}
	return ""
}
