package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

// BenchmarkCreateBuild measures one queued build: its row, its QUEUED
// transition and the outbox row, in one transaction.
func BenchmarkCreateBuild(b *testing.B) {
	s, err := Open(context.Background(), Config{DataDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	u, _ := s.CreateUser(context.Background(), "u", false)
	p, _ := s.CreateProject(context.Background(), builds.Project{Name: "p", OwnerID: u.ID, Repo: "/r", DefaultBranch: "main"})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.CreateBuild(context.Background(), NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: "abc"}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSinkDeliveryLifecycle measures what the delivery engine writes
// for one delivery that succeeds at its first attempt, in batches of 64
// as its writer commits them under load: the delivery created (with a
// 1.4 KB payload, leased to the node), then its attempt recorded. The
// figure is per delivery.
func BenchmarkSinkDeliveryLifecycle(b *testing.B) {
	s, err := Open(context.Background(), Config{DataDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	// A deadline, as the engine's writer gives each batch.
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	payload := []byte(strings.Repeat("x", 1400))
	hdr := http.Header{"Content-Type": {"text/plain"}, "Date": {"Mon, 23 Nov 2026 10:00:00 GMT"}}
	const batch = 64
	b.ResetTimer()
	for n := 0; n < b.N; n += batch {
		now := time.Now()
		lease := SinkLease{Owner: "node-1", Until: now.Add(30 * time.Second)}
		list := make([]SinkDelivery, batch)
		for i := range list {
			ev := "evt_" + strconv.Itoa(n+i)
			list[i] = SinkDelivery{MessageID: msgID(n+i, ev), EventID: ev, EventType: "build-state-changed", Sink: "hook",
				SinkType: "webhook", Target: "http://127.0.0.1:9/hook", Route: "r", OwnerID: 5, BuildID: int64(n + i), Seq: 3,
				NextAt: &now, Payload: payload}
		}
		res, err := s.WriteSinkBatch(ctx, SinkBatch{Creates: list, Lease: lease})
		if err != nil || len(res.Created) != batch {
			b.Fatalf("create: %d %v", len(res.Created), err)
		}
		recs := make([]SinkAttemptRecord, batch)
		for i, d := range res.Created {
			recs[i] = SinkAttemptRecord{Status: DeliverySucceeded, Tries: 1, Attempt: SinkAttempt{DeliveryID: d.ID, Number: 1,
				Time: now, Duration: time.Millisecond, StatusCode: 204, Outcome: OutcomeSuccess, Header: hdr}}
		}
		res, err = s.WriteSinkBatch(ctx, SinkBatch{Records: recs, Lease: lease})
		if err != nil || len(res.Refused) != 0 {
			b.Fatalf("record: %v %v", res.Refused, err)
		}
	}
}

// msgID is shaped like the delivery engine's message ids: the event's
// position in time, then a hash (with the hash alone, as earlier
// versions had it, the unique index sees inserts all over: 67 µs per
// delivery here at 100,000 rows instead of 37–45 µs).
func msgID(seq int, ev string) string {
	sum := sha256.Sum256([]byte(ev))
	return fmt.Sprintf("msg_%010d%s", seq, hex.EncodeToString(sum[:11]))
}

// BenchmarkIngestPushes measures what a signed push writes (its delivery
// id, the build, its QUEUED transition and outbox row) in one commit of
// `batch` pushes, as the ingester's group commit makes them, on a store
// that already holds 20,000 builds. frames/push is the WAL pages written
// per push: the B-tree pages a push touches, shared ones counted once per
// commit.
func BenchmarkIngestPushes(b *testing.B) {
	for _, batch := range []int{1, 2, 8} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			ctx := context.Background()
			dir := b.TempDir()
			// No checkpoint during the run: the WAL's growth counts the frames.
			s, err := Open(ctx, Config{DataDir: dir, CheckpointDelay: time.Hour})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			u, _ := s.CreateUser(ctx, "u", false)
			p, err := s.CreateProject(ctx, builds.Project{Name: "p", OwnerID: u.ID, Repo: "/r", DefaultBranch: "main"})
			if err != nil {
				b.Fatal(err)
			}
			n := 0
			push := func() PushRequest {
				n++
				sha := fmt.Sprintf("%040x", n)
				id := fmt.Sprintf("%x", sha256.Sum256([]byte(sha)))[:36] // random order, as forges' GUIDs
				return PushRequest{Delivery: Delivery{ProjectID: p.ID, Source: "github", ID: id},
					Builds: []PushBuild{{NewBuild: NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: sha,
						Author: "Ann", AuthorEmail: "ann@example.com", Message: "work"}, CompareURL: "https://example.com/c", Pusher: "ann"}}}
			}
			commit := func() {
				reqs := make([]PushRequest, batch)
				for i := range reqs {
					reqs[i] = push()
				}
				if _, _, err := s.IngestPushes(ctx, reqs); err != nil {
					b.Fatal(err)
				}
			}
			for range 20000 / batch {
				commit()
			}
			truncate := func() {
				if _, err := s.SQL().ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
					b.Fatal(err)
				}
			}
			// The frames of 100 commits, well below the checkpoint threshold.
			truncate()
			for range 100 {
				commit()
			}
			st, err := os.Stat(filepath.Join(dir, "buildbridge.db-wal"))
			if err != nil {
				b.Fatal(err)
			}
			frames := float64(st.Size()-32) / (4096 + 24) / float64(100*batch)
			truncate()
			b.ResetTimer()
			for b.Loop() {
				commit()
			}
			b.ReportMetric(frames, "frames/push")
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*batch), "µs/push")
		})
	}
}

// BenchmarkPruneSinkDeliveries measures one prune statement of 500
// finished deliveries (each with a 1.4 KB payload and one attempt), as
// the engine runs them: on SQLite, how long the write lock is held.
func BenchmarkPruneSinkDeliveries(b *testing.B) {
	ctx := context.Background()
	s, err := Open(ctx, Config{DataDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	payload := []byte(strings.Repeat("x", 1400))
	const batch = 500
	fill := func(n int) {
		now := time.Now()
		for done := 0; done < n; done += 64 {
			list := make([]SinkDelivery, 64)
			for i := range list {
				ev := "evt_" + strconv.Itoa(done+i) + "_" + strconv.FormatInt(now.UnixNano(), 36)
				list[i] = SinkDelivery{MessageID: msgID(done+i, ev), EventID: ev, EventType: "build-state-changed", Sink: "hook",
					SinkType: "webhook", Target: "http://127.0.0.1:9/hook", OwnerID: 5, NextAt: &now, Payload: payload}
			}
			res, err := s.WriteSinkBatch(ctx, SinkBatch{Creates: list})
			if err != nil {
				b.Fatal(err)
			}
			recs := make([]SinkAttemptRecord, len(res.Created))
			for i, d := range res.Created {
				recs[i] = SinkAttemptRecord{Status: DeliverySucceeded, Tries: 1, Attempt: SinkAttempt{DeliveryID: d.ID, Number: 1,
					Time: now, Duration: time.Millisecond, StatusCode: 204, Outcome: OutcomeSuccess}}
			}
			if _, err := s.WriteSinkBatch(ctx, SinkBatch{Records: recs}); err != nil {
				b.Fatal(err)
			}
		}
	}
	for b.Loop() {
		b.StopTimer()
		fill(batch + 64) // the newest rows stay: they are not older than the cut
		b.StartTimer()
		if n, err := s.PruneSinkDeliveries(ctx, time.Now().Add(time.Hour), batch); err != nil || n != batch {
			b.Fatalf("pruned %d, %v", n, err)
		}
	}
}
