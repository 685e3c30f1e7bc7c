package queue

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/builds/runner"
	"github.com/buildbridge/buildbridge/store"
	"github.com/buildbridge/buildbridge/store/storetest"
)

// blockingRunner runs every build until it is released or its context
// ends: the build stays STARTED as long as the test wants.
type blockingRunner struct {
	release chan struct{}
}

func (r *blockingRunner) Run(ctx context.Context, _ runner.Spec, log io.Writer) (runner.Outcome, error) {
	io.WriteString(log, "running\n")
	select {
	case <-ctx.Done():
		return runner.Outcome{Result: builds.Errored, Reason: "stopped"}, nil
	case <-r.release:
		return runner.Outcome{Result: builds.Passed}, nil
	}
}

// pgNode opens the store of one node on the shared schema.
func pgNode(t *testing.T, dsn string) *store.DB {
	t.Helper()
	db, err := store.Open(context.Background(), store.Config{Postgres: dsn, MaxOpenConns: 4,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func queueOne(t *testing.T, db *store.DB) builds.Build {
	t.Helper()
	ctx := context.Background()
	u, err := db.CreateUser(ctx, "u", false)
	if err != nil {
		t.Fatal(err)
	}
	p, err := db.CreateProject(ctx, builds.Project{Name: "p", OwnerID: u.ID, Repo: "/nowhere", DefaultBranch: "main"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := db.CreateBuild(ctx, store.NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: strings.Repeat("a", 40)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func nodeOf(t *testing.T, db *store.DB, id int64) string {
	t.Helper()
	var n *string
	if err := db.SQL().QueryRow(`SELECT node FROM builds WHERE id = $1`, id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n == nil {
		return ""
	}
	return *n
}

// waitNode waits until build id names node, failing with msg after within.
func waitNode(t *testing.T, db *store.DB, id int64, node string, within time.Duration, msg string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for nodeOf(t, db, id) != node {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startNodeA runs node A (TestNodeHelperProcess) as a subprocess on the
// schema of dsn, and returns what SIGKILLs it and waits for its end.
func startNodeA(t *testing.T, dsn string) (kill func()) {
	t.Helper()
	a := exec.Command(os.Args[0], "-test.run=^TestNodeHelperProcess$")
	a.Env = append(os.Environ(), "BUILDBRIDGE_QUEUE_HELPER_DSN="+dsn)
	a.Stdout, a.Stderr = os.Stderr, os.Stderr
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	aDone := make(chan struct{})
	go func() { a.Wait(); close(aDone) }()
	t.Cleanup(func() { a.Process.Kill(); <-aDone })
	return func() {
		if err := a.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-aDone
	}
}

func runQueue(t *testing.T, q *Queue) context.CancelFunc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); q.Run(ctx) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

// TestNodeHelperProcess is node A of TestRecoverLeavesLiveNodes when run
// as a subprocess: a queue on the shared schema whose builds never end,
// until the parent kills it.
func TestNodeHelperProcess(t *testing.T) {
	dsn := os.Getenv("BUILDBRIDGE_QUEUE_HELPER_DSN")
	if dsn == "" {
		t.Skip("subprocess of TestRecoverLeavesLiveNodes")
	}
	db, err := store.Open(context.Background(), store.Config{Postgres: dsn, MaxOpenConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	q, err := New(Config{Store: db, Runner: &blockingRunner{release: make(chan struct{})}, Node: "node-a",
		NodeTTL: 2 * time.Second, PollInterval: 50 * time.Millisecond, ShutdownGrace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	q.Run(context.Background()) // until SIGKILL
}

// Node A runs a build; node B starts, recovers and keeps sweeping: A's
// build is left alone while A lives. A is killed: B takes its build back
// once A's lease has expired, not before.
func TestRecoverLeavesLiveNodes(t *testing.T) {
	dsn := storetest.PostgresDSN(t)
	dbB := pgNode(t, dsn)
	b := queueOne(t, dbB)

	const ttl = 2 * time.Second
	killA := startNodeA(t, dsn)
	waitNode(t, dbB, b.ID, "node-a", 15*time.Second, "node A did not claim the build")
	claimed, _ := dbB.Build(context.Background(), b.ID)

	// Node B starts while A runs the build.
	qB, err := New(Config{Store: dbB, Runner: &blockingRunner{release: make(chan struct{})}, Node: "node-b",
		NodeTTL: ttl, PollInterval: 50 * time.Millisecond, ShutdownGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	n, err := qB.Recover(context.Background())
	if err != nil || n != 0 {
		t.Fatalf("node B's recovery: %d builds, %v; want none (node A runs it)", n, err)
	}
	runQueue(t, qB)
	// B's sweeps (every ttl/4) go on for two TTLs while A renews its lease.
	time.Sleep(2 * ttl)
	got, _ := dbB.Build(context.Background(), b.ID)
	if got.State != builds.Started || !got.StartedAt.Equal(*claimed.StartedAt) || nodeOf(t, dbB, b.ID) != "node-a" {
		t.Fatalf("node A's running build was touched: %+v (node %q)", got, nodeOf(t, dbB, b.ID))
	}

	// Node A dies.
	killA()
	killed := time.Now()
	deadline := killed.Add(ttl + 5*time.Second)
	for {
		got, _ = dbB.Build(context.Background(), b.ID)
		if got.State == builds.Finished {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node A's build not recovered %s after the kill: %+v", time.Since(killed), got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	after := time.Since(killed)
	t.Logf("node A killed: its build recovered by node B after %s (lease %s, renewed every %s)", after, ttl, ttl/4)
	if got.Result != builds.Errored || !strings.Contains(got.Reason, "node-a") {
		t.Fatalf("recovered build: %s %q, want errored naming node-a", got.Result, got.Reason)
	}
	// The lease was renewed at most ttl/4 before the kill.
	if after < ttl*3/4-200*time.Millisecond {
		t.Errorf("recovered %s after the kill: before node A's lease could have expired", after)
	}
}

// A node whose lease expired while it ran a build, and whose build another
// node took back and claimed again, records nothing for it: the build
// stops on the node that lost it and stays the other node's.
func TestExpiredNodeCannotOverwrite(t *testing.T) {
	dsn := storetest.PostgresDSN(t)
	dbA, dbB := pgNode(t, dsn), pgNode(t, dsn)
	b := queueOne(t, dbA)
	runA := &blockingRunner{release: make(chan struct{})}
	// A renews every 15s: the test expires its lease by hand in between.
	qA, err := New(Config{Store: dbA, Runner: runA, Node: "node-a", NodeTTL: time.Minute, PollInterval: 50 * time.Millisecond, Requeue: true, ShutdownGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	runQueue(t, qA)
	waitBuild(t, dbA, b.ID, builds.Started, 10*time.Second)
	if _, err := dbA.SQL().Exec(`UPDATE nodes SET expires_at = 0 WHERE id = 'node-a'`); err != nil {
		t.Fatal(err)
	}
	qB, err := New(Config{Store: dbB, Runner: &blockingRunner{release: make(chan struct{})}, Node: "node-b",
		NodeTTL: 2 * time.Second, PollInterval: 50 * time.Millisecond, Requeue: true, ShutdownGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	runQueue(t, qB) // recovers A's build (re-queued), then claims it
	waitNode(t, dbB, b.ID, "node-b", 10*time.Second, "node B did not take the build over")
	taken, _ := dbB.Build(context.Background(), b.ID)
	// Node A's build stops (it polls the build) and its result is dropped.
	close(runA.release)
	time.Sleep(500 * time.Millisecond)
	got, _ := dbB.Build(context.Background(), b.ID)
	if got.State != builds.Started || !got.StartedAt.Equal(*taken.StartedAt) || nodeOf(t, dbB, b.ID) != "node-b" {
		t.Fatalf("node A overwrote the build node B runs: %+v", got)
	}
	evs, _ := dbB.BuildEvents(context.Background(), b.ID)
	var states []string
	for _, e := range evs {
		states = append(states, string(e.State))
	}
	if want := "QUEUED STARTED QUEUED STARTED"; strings.Join(states, " ") != want {
		t.Fatalf("transitions %v, want %s", states, want)
	}
}

// A node shutting down keeps its lease while its builds use the grace
// period: another node does not take them back meanwhile.
func TestLeaseKeptDuringShutdownGrace(t *testing.T) {
	dsn := storetest.PostgresDSN(t)
	dbA, dbB := pgNode(t, dsn), pgNode(t, dsn)
	b := queueOne(t, dbA)
	const ttl = time.Second
	runA := &blockingRunner{release: make(chan struct{})}
	qA, err := New(Config{Store: dbA, Runner: runA, Node: "node-a", NodeTTL: ttl, PollInterval: 50 * time.Millisecond, ShutdownGrace: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	stopA := runQueue(t, qA)
	waitBuild(t, dbA, b.ID, builds.Started, 10*time.Second)
	qB, err := New(Config{Store: dbB, Runner: &blockingRunner{release: make(chan struct{})}, Node: "node-b",
		NodeTTL: ttl, PollInterval: 50 * time.Millisecond, ShutdownGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	runQueue(t, qB)
	stopped := make(chan struct{})
	go func() { stopA(); close(stopped) }() // shutdown: the build has 10s
	time.Sleep(3 * ttl)
	if got, _ := dbB.Build(context.Background(), b.ID); got.State != builds.Started || nodeOf(t, dbB, b.ID) != "node-a" {
		t.Fatalf("build taken from a node in its shutdown grace: %+v", got)
	}
	close(runA.release)
	<-stopped
	if got, _ := dbB.Build(context.Background(), b.ID); got.State != builds.Finished || got.Result != builds.Passed {
		t.Fatalf("build finished in the grace period: %s %s %q, want passed", got.State, got.Result, got.Reason)
	}
	var rows int
	dbB.SQL().QueryRow(`SELECT COUNT(*) FROM nodes WHERE id = 'node-a'`).Scan(&rows)
	if rows != 0 {
		t.Error("node-a's lease row is left after its shutdown")
	}
}

// With Requeue, a build stopped at shutdown goes back to the queue.
func TestShutdownRequeues(t *testing.T) {
	f := newFixture(t, "steps: []\n")
	b := f.queueBuild(t)
	q, err := New(Config{Store: f.store, Runner: &blockingRunner{release: make(chan struct{})}, Requeue: true,
		ShutdownGrace: 100 * time.Millisecond, PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := runQueue(t, q)
	waitBuild(t, f.store, b.ID, builds.Started, 10*time.Second)
	stop()
	if got, _ := f.store.Build(context.Background(), b.ID); got.State != builds.Queued {
		t.Fatalf("build stopped at shutdown with Requeue: %s %s %q, want QUEUED", got.State, got.Result, got.Reason)
	}
}

// A node restarted with the same id (serve keeps it in the data
// directory) takes its interrupted build back at start, although the
// lease its previous run renewed has not expired yet.
func TestRestartRecoversOwnBuilds(t *testing.T) {
	dsn := storetest.PostgresDSN(t)
	db := pgNode(t, dsn)
	b := queueOne(t, db)
	killA := startNodeA(t, dsn)
	waitNode(t, db, b.ID, "node-a", 15*time.Second, "node A did not claim the build")
	killA()
	// Another node leaves it alone: the lease is still current.
	other, err := New(Config{Store: db, Runner: &blockingRunner{release: make(chan struct{})}, Node: "node-b", NodeTTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := other.Recover(context.Background()); err != nil || n != 0 {
		t.Fatalf("node B recovered %d builds (%v) under node A's current lease", n, err)
	}
	again, err := New(Config{Store: db, Runner: &blockingRunner{release: make(chan struct{})}, Node: "node-a", NodeTTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	n, err := again.Recover(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("restarted node A recovered %d builds (%v), want its own 1", n, err)
	}
	if got, _ := db.Build(context.Background(), b.ID); got.State != builds.Finished || !strings.Contains(got.Reason, "server stopped") {
		t.Fatalf("build after the restart: %s %s %q", got.State, got.Result, got.Reason)
	}
}
