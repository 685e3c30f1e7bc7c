package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

func TestWebhookSecretRotation(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
		s.cfg.Now = func() time.Time { return now }
		_, p := mkProject(t, s, "app")

		got, w, err := s.ProjectWebhook(ctx, "app")
		if err != nil || got.ID != p.ID || got.Name != "app" || len(got.Steps) != 1 || w.Secret != "" || len(w.Valid(now)) != 0 {
			t.Fatalf("before any secret: %+v %+v %v", got, w, err)
		}
		if _, _, err := s.ProjectWebhook(ctx, "nope"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown project: %v", err)
		}
		if _, err := s.RotateWebhookSecret(ctx, 9999, "x", 0); !errors.Is(err, ErrNotFound) {
			t.Fatalf("secret of unknown project: %v", err)
		}
		if _, err := s.RotateWebhookSecret(ctx, p.ID, "", 0); err == nil {
			t.Fatal("empty secret accepted")
		}

		if _, err := s.RotateWebhookSecret(ctx, p.ID, "first", time.Hour); err != nil {
			t.Fatal(err)
		}
		_, w, _ = s.ProjectWebhook(ctx, "app")
		if v := w.Valid(now); len(v) != 1 || v[0] != "first" {
			t.Fatalf("after create: %v", v)
		}

		r, err := s.RotateWebhookSecret(ctx, p.ID, "second", 24*time.Hour)
		if err != nil || r.Previous != "first" || !r.PreviousExpiresAt.Equal(now.Add(24*time.Hour)) {
			t.Fatalf("rotate: %+v %v", r, err)
		}
		_, w, _ = s.ProjectWebhook(ctx, "app")
		if v := w.Valid(now.Add(23 * time.Hour)); len(v) != 2 || v[0] != "second" || v[1] != "first" {
			t.Fatalf("during grace: %v", v)
		}
		if v := w.Valid(now.Add(24 * time.Hour)); len(v) != 1 || v[0] != "second" {
			t.Fatalf("after grace: %v", v)
		}

		// A rotation without grace drops the old secret at once, and only
		// two secrets ever verify.
		s.RotateWebhookSecret(ctx, p.ID, "third", time.Hour)
		s.RotateWebhookSecret(ctx, p.ID, "fourth", 0)
		_, w, _ = s.ProjectWebhook(ctx, "app")
		if v := w.Valid(now); len(v) != 1 || v[0] != "fourth" {
			t.Fatalf("after rotation without grace: %v", v)
		}
	})
}

func TestIngestPush(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		notified := 0
		s.SetOnOutbox(func() { notified++ })
		u, p := mkProject(t, s, "app")
		pb := func(branch, sha string) PushBuild {
			return PushBuild{NewBuild: NewBuild{ProjectID: p.ID, Ref: "refs/heads/" + branch, Branch: branch, SHA: sha,
				Author: "Ann", AuthorEmail: "ann@example.com", Message: "msg " + sha, TriggeredBy: u.ID},
				CompareURL: "https://forge.example/compare/" + sha, Pusher: "ann"}
		}
		d := Delivery{ProjectID: p.ID, Source: "github", ID: "d-1"}
		out, err := s.IngestPush(ctx, d, []PushBuild{pb("main", "a1"), pb("dev", "b1")}, false)
		if err != nil || out.Duplicate || len(out.Builds) != 2 || notified != 1 {
			t.Fatalf("first ingest: %+v %v (notified %d)", out, err, notified)
		}
		b, devID := out.Builds[0], out.Builds[1].ID
		if b.Number != 1 || b.State != builds.Queued || b.SHA != "a1" || b.Author != "Ann" || b.Message != "msg a1" || out.Builds[1].Number != 2 {
			t.Fatalf("builds: %+v", out.Builds)
		}
		if pi, err := s.BuildPushInfo(ctx, b.ID); err != nil || pi.Pusher != "ann" || pi.CompareURL != "https://forge.example/compare/a1" {
			t.Fatalf("push info: %+v %v", pi, err)
		}
		if evs, _ := s.BuildEvents(ctx, b.ID); len(evs) != 1 || evs[0].State != builds.Queued {
			t.Fatalf("events: %+v", evs)
		}

		// The same delivery again writes nothing; the same id from another
		// source or for another project is another delivery.
		out, err = s.IngestPush(ctx, d, []PushBuild{pb("main", "a1")}, false)
		if err != nil || !out.Duplicate || len(out.Builds) != 0 {
			t.Fatalf("duplicate: %+v %v", out, err)
		}
		if out, err = s.IngestPush(ctx, Delivery{ProjectID: p.ID, Source: "gitea", ID: "d-1"}, nil, false); err != nil || out.Duplicate {
			t.Fatalf("same id from another source: %+v %v", out, err)
		}
		if list, _ := s.ListBuilds(ctx, BuildFilter{ProjectID: p.ID}); len(list) != 2 {
			t.Fatalf("%d builds after the duplicate", len(list))
		}

		// A failure in the middle leaves no trace, not even the delivery.
		bad := pb("main", "x")
		bad.ProjectID = 9999
		if _, err := s.IngestPush(ctx, Delivery{ProjectID: p.ID, Source: "github", ID: "d-2"}, []PushBuild{pb("main", "c1"), bad}, false); err == nil {
			t.Fatal("ingest with a build of another project accepted")
		}
		if out, err := s.IngestPush(ctx, Delivery{ProjectID: p.ID, Source: "github", ID: "d-2"}, nil, false); err != nil || out.Duplicate {
			t.Fatalf("failed delivery was recorded: %+v %v", out, err)
		}
		if list, _ := s.ListBuilds(ctx, BuildFilter{ProjectID: p.ID}); len(list) != 2 {
			t.Fatalf("%d builds after a failed ingest", len(list))
		}
		if _, err := s.IngestPush(ctx, Delivery{ProjectID: 9999, Source: "github", ID: "z"}, nil, false); !errors.Is(err, ErrNotFound) {
			t.Fatalf("delivery to an unknown project: %v", err)
		}

		// Superseding cancels the queued builds of the same branch only.
		out, err = s.IngestPush(ctx, Delivery{ProjectID: p.ID, Source: "git", ID: "k-3"}, []PushBuild{pb("main", "a2")}, true)
		if err != nil || len(out.Superseded) != 1 || out.Superseded[0].ID != b.ID {
			t.Fatalf("supersede: %+v %v", out, err)
		}
		old, _ := s.Build(ctx, b.ID)
		if old.State != builds.Finished || old.Result != builds.Canceled || old.Reason != "superseded by build #3 (a2)" {
			t.Fatalf("superseded build: %+v", old)
		}
		if dev, _ := s.Build(ctx, devID); dev.State != builds.Queued || dev.Branch != "dev" {
			t.Fatalf("other branch touched: %+v", dev)
		}
		// A started build is never superseded.
		claimed, err := s.ClaimQueued(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out, err = s.IngestPush(ctx, Delivery{ProjectID: p.ID, Source: "git", ID: "k-4"}, []PushBuild{pb(claimed.Branch, "z9")}, true)
		if err != nil || len(out.Superseded) != 0 {
			t.Fatalf("started build superseded: %+v %v", out, err)
		}
		if c, _ := s.Build(ctx, claimed.ID); c.State != builds.Started {
			t.Fatalf("claimed build: %+v", c)
		}

		// Empty ids are not de-duplicated.
		for range 2 {
			if out, err := s.IngestPush(ctx, Delivery{ProjectID: p.ID, Source: "github"}, nil, false); err != nil || out.Duplicate {
				t.Fatalf("empty id: %+v %v", out, err)
			}
		}
	})
}

func TestIngestPushConcurrentRedeliveries(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		_, p := mkProject(t, s, "app")
		const deliveries, copies = 10, 4
		var wg sync.WaitGroup
		var mu sync.Mutex
		built := map[string]int{}
		for i := range deliveries {
			for range copies {
				wg.Add(1)
				go func() {
					defer wg.Done()
					id := fmt.Sprintf("d-%d", i)
					out, err := s.IngestPush(ctx, Delivery{ProjectID: p.ID, Source: "github", ID: id},
						[]PushBuild{{NewBuild: NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: id}}}, true)
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					built[id] += len(out.Builds)
					mu.Unlock()
				}()
			}
		}
		wg.Wait()
		for i := range deliveries {
			if n := built[fmt.Sprintf("d-%d", i)]; n != 1 {
				t.Errorf("delivery d-%d built %d times", i, n)
			}
		}
		queued, _ := s.ListBuilds(ctx, BuildFilter{ProjectID: p.ID, State: builds.Queued})
		if len(queued) != 1 {
			t.Fatalf("%d builds still queued after superseding pushes, want 1", len(queued))
		}
	})
}

func TestPruneDeliveries(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
		s.cfg.Now = func() time.Time { return now }
		_, p := mkProject(t, s, "app")
		s.IngestPush(ctx, Delivery{ProjectID: p.ID, Source: "github", ID: "old"}, nil, false)
		now = now.Add(48 * time.Hour)
		s.IngestPush(ctx, Delivery{ProjectID: p.ID, Source: "github", ID: "new"}, nil, false)
		n, err := s.PruneDeliveries(ctx, 24*time.Hour)
		if err != nil || n != 1 {
			t.Fatalf("prune: %d %v", n, err)
		}
		if out, _ := s.IngestPush(ctx, Delivery{ProjectID: p.ID, Source: "github", ID: "old"}, nil, false); out.Duplicate {
			t.Fatal("pruned delivery still known")
		}
		if out, _ := s.IngestPush(ctx, Delivery{ProjectID: p.ID, Source: "github", ID: "new"}, nil, false); !out.Duplicate {
			t.Fatal("recent delivery forgotten")
		}
	})
}

func TestIngestPushesBatch(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		notified := 0
		s.SetOnOutbox(func() { notified++ })
		_, p := mkProject(t, s, "app")
		req := func(id, sha string, project int64) PushRequest {
			return PushRequest{Delivery: Delivery{ProjectID: p.ID, Source: "github", ID: id},
				Builds: []PushBuild{{NewBuild: NewBuild{ProjectID: project, Ref: "refs/heads/main", Branch: "main", SHA: sha}}}, Supersede: true}
		}
		outs, errs, err := s.IngestPushes(ctx, []PushRequest{
			req("a", "1", p.ID),
			req("b", "2", 9999), // fails: the batch is retried one by one, the others commit
			req("a", "1", p.ID), // the same delivery twice in one batch
			req("c", "3", p.ID),
		})
		if err != nil {
			t.Fatal(err)
		}
		if errs[0] != nil || errs[1] == nil || errs[2] != nil || errs[3] != nil {
			t.Fatalf("errs %v", errs)
		}
		if len(outs[0].Builds) != 1 || len(outs[1].Builds) != 0 || !outs[2].Duplicate || len(outs[3].Builds) != 1 ||
			len(outs[3].Superseded) != 1 || outs[3].Superseded[0].ID != outs[0].Builds[0].ID || notified == 0 {
			t.Fatalf("outs %+v (notified %d)", outs, notified)
		}
		if outs[3].Builds[0].Number != outs[0].Builds[0].Number+1 {
			t.Fatalf("numbers %d then %d: the failed delivery used one", outs[0].Builds[0].Number, outs[3].Builds[0].Number)
		}
		if out, err := s.IngestPush(ctx, Delivery{ProjectID: p.ID, Source: "github", ID: "b"}, nil, false); err != nil || out.Duplicate {
			t.Fatalf("failed delivery recorded: %+v %v", out, err)
		}
	})
}
