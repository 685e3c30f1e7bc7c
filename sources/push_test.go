package sources

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/store"
)

const (
	zero = "0000000000000000000000000000000000000000"
	shaA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	shaB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	shaC = "cccccccccccccccccccccccccccccccccccccccc"
)

func TestPlan(t *testing.T) {
	p := builds.Project{ID: 7, Settings: builds.Settings{Branches: builds.BranchFilter{Include: []string{"main", "feat/*"}, Exclude: []string{"feat/wip*"}}}}
	push := Push{Source: SourceGit, Pusher: "ann", TriggeredBy: 3, Refs: []RefUpdate{
		{Ref: "refs/heads/main", Old: shaA, New: shaB, Commit: Commit{Author: "Ann", AuthorEmail: "a@x", Message: "fix"}, CompareURL: "u"},
		{Ref: "refs/heads/feat/x", Old: zero, New: shaB, Commit: Commit{Message: "new branch"}},
		{Ref: "refs/heads/feat/wip-1", Old: zero, New: shaB},
		{Ref: "refs/heads/other", Old: shaA, New: shaB},
		{Ref: "refs/heads/main", Old: shaB, New: zero},
		{Ref: "refs/tags/v1", Old: zero, New: shaC, Commit: Commit{SHA: shaA}},
		{Ref: "refs/heads/feat/y", Old: zero, New: shaC, Commit: Commit{Message: "x\n\n[CI SKIP]"}},
		{Ref: "refs/pull/1/head", Old: zero, New: shaC},
	}}
	got, skips := Plan(p, push)
	if len(got) != 2 {
		t.Fatalf("builds %+v", got)
	}
	if b := got[0]; b.ProjectID != 7 || b.Ref != "refs/heads/main" || b.Branch != "main" || b.SHA != shaB || b.Author != "Ann" ||
		b.AuthorEmail != "a@x" || b.Message != "fix" || b.TriggeredBy != 3 || b.Pusher != "ann" || b.CompareURL != "u" {
		t.Fatalf("first build %+v", b)
	}
	if got[1].Branch != "feat/x" {
		t.Fatalf("second build %+v", got[1])
	}
	var reasons []string
	for _, s := range skips {
		reasons = append(reasons, s.Ref+":"+s.Reason)
		if s.Message == "" {
			t.Errorf("skip without a message: %+v", s)
		}
	}
	want := "refs/heads/feat/wip-1:branch_filter refs/heads/other:branch_filter refs/heads/main:deleted refs/tags/v1:tags_disabled " +
		"refs/heads/feat/y:skip_ci refs/pull/1/head:not_a_branch"
	if strings.Join(reasons, " ") != want {
		t.Fatalf("skips\n got %s\nwant %s", strings.Join(reasons, " "), want)
	}

	p.Settings.BuildTags = true
	got, _ = Plan(p, Push{Refs: []RefUpdate{{Ref: "refs/tags/v1", Old: zero, New: shaC, Commit: Commit{SHA: shaA, Message: strings.Repeat("é", MaxMessageBytes)}}}})
	if len(got) != 1 || got[0].SHA != shaA || got[0].Branch != "" || len(got[0].Message) > MaxMessageBytes || !strings.HasPrefix(got[0].Message, "é") ||
		!strings.HasSuffix(got[0].Message, "é") {
		t.Fatalf("tag build %+v", got)
	}
}

func TestChecks(t *testing.T) {
	for ref, ok := range map[string]bool{
		"refs/heads/main": true, "refs/heads/feat/x-1": true, "refs/tags/v1.0": true, "refs/heads/-x": true,
		"main": false, "refs/": false, "refs/heads/a..b": false, "refs/heads/a b": false, "refs/heads/x.lock": false,
		"refs/heads/.x": false, "refs/heads/x/": false, "refs/heads//x": false, "refs/heads/a@{1}": false,
		"refs/heads/a~1": false, "refs/heads/\x00": false, "refs/heads/x.": false, "refs/heads/\xff": false,
	} {
		if (CheckRef(ref) == nil) != ok {
			t.Errorf("CheckRef(%q) = %v", ref, CheckRef(ref))
		}
	}
	for s, ok := range map[string]bool{shaA: true, strings.Repeat("a", 64): true, strings.ToUpper(shaA): false, shaA[:39]: false, "": false} {
		if ValidSHA(s) != ok {
			t.Errorf("ValidSHA(%q)", s)
		}
	}
	if !IsZeroSHA(zero) || IsZeroSHA("") || IsZeroSHA(shaA) {
		t.Error("IsZeroSHA")
	}
	for msg, skip := range map[string]bool{"[skip ci]": true, "a [Skip CI] b": true, "[ci skip]": true, "skip ci": false, "[skip  ci]": false} {
		if SkipsCI(msg) != skip {
			t.Errorf("SkipsCI(%q)", msg)
		}
	}
	if !MatchBranch(builds.BranchFilter{}, "any/thing") || MatchBranch(builds.BranchFilter{Include: []string{"release/*"}}, "release/1/2") {
		t.Error("MatchBranch")
	}
}

type wakes struct{ n atomic.Int64 }

func (w *wakes) Wake() { w.n.Add(1) }

func TestIngester(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	s, err := store.Open(ctx, store.Config{DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	u, _ := s.CreateUser(ctx, "ann", false)
	p, err := s.CreateProject(ctx, builds.Project{Name: "app", OwnerID: u.ID, Repo: "/r", DefaultBranch: "main", Settings: builds.Settings{SupersedeQueued: true}})
	if err != nil {
		t.Fatal(err)
	}
	w := &wakes{}
	in, err := New(Config{Store: s, Scheduler: w, Logger: slog.New(slog.DiscardHandler), Retention: 24 * time.Hour, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	push := func(id, sha string) Push {
		return Push{Source: SourceGitHub, DeliveryID: id, Refs: []RefUpdate{{Ref: "refs/heads/main", Old: zero, New: sha}}}
	}
	r, err := in.Ingest(ctx, p, push("d1", shaA))
	if err != nil || len(r.Builds) != 1 || r.Duplicate || w.n.Load() != 1 {
		t.Fatalf("first: %+v %v", r, err)
	}
	r, err = in.Ingest(ctx, p, push("d1", shaA))
	if err != nil || !r.Duplicate || len(r.Builds) != 0 || w.n.Load() != 1 {
		t.Fatalf("duplicate: %+v %v", r, err)
	}
	r, _ = in.Ingest(ctx, p, push("d2", shaB))
	if len(r.Superseded) != 1 || r.JSON().Superseded[0] != r.Superseded[0].ID {
		t.Fatalf("supersede: %+v", r)
	}
	// Nothing to build: no wake, but the delivery is recorded.
	r, _ = in.Ingest(ctx, p, Push{Source: SourceGitHub, DeliveryID: "d3", Refs: []RefUpdate{{Ref: "refs/heads/main", Old: shaA, New: zero}}})
	if len(r.Builds) != 0 || len(r.Skipped) != 1 || w.n.Load() != 2 {
		t.Fatalf("deletion: %+v (wakes %d)", r, w.n.Load())
	}
	// Past the retention, a delivery id is forgotten at the next prune.
	now = now.Add(2 * time.Hour) // before PruneEvery: no prune yet
	if r, _ := in.Ingest(ctx, p, push("d1", shaA)); !r.Duplicate {
		t.Fatal("forgotten too early")
	}
	now = now.Add(48 * time.Hour)
	in.Ingest(ctx, p, push("d9", shaC)) // prunes d1…d3
	if r, _ := in.Ingest(ctx, p, push("d1", shaA)); r.Duplicate {
		t.Fatal("delivery id kept past its retention")
	}
	if _, err := New(Config{Store: s}); err == nil {
		t.Fatal("config without a scheduler accepted")
	}
}

// TestIngesterGroupCommit sends many pushes at once: each caller gets its
// own builds, every push is committed exactly once, and pushes that
// arrived together shared transactions.
func TestIngesterGroupCommit(t *testing.T) {
	ctx := context.Background()
	s, err := store.Open(ctx, store.Config{DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	u, _ := s.CreateUser(ctx, "ann", false)
	p, _ := s.CreateProject(ctx, builds.Project{Name: "app", OwnerID: u.ID, Repo: "/r", DefaultBranch: "main"})
	reg := prometheus.NewRegistry()
	m, _ := NewMetrics(reg)
	in, err := New(Config{Store: s, Scheduler: &wakes{}, Logger: slog.New(slog.DiscardHandler), Metrics: m, MaxBatch: 8})
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	var wg sync.WaitGroup
	results := make([]Result, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sha := fmt.Sprintf("%040x", i+1)
			// Every fifth push is a redelivery of the one before it.
			id := fmt.Sprintf("d-%d", i-i%5/4)
			results[i], errs[i] = in.Ingest(ctx, p, Push{Source: SourceGitHub, DeliveryID: id,
				Refs: []RefUpdate{{Ref: "refs/heads/b" + strconv.Itoa(i), Old: zero, New: sha}}})
		}()
	}
	wg.Wait()
	built := map[int64]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("push %d: %v", i, errs[i])
		}
		for _, b := range results[i].Builds {
			if b.Branch != "b"+strconv.Itoa(i) || built[b.ID] {
				t.Fatalf("push %d got build %+v", i, b)
			}
			built[b.ID] = true
		}
	}
	list, _ := s.ListBuilds(ctx, store.BuildFilter{ProjectID: p.ID, Limit: 500})
	if len(list) != len(built) || len(built) != n-n/5 {
		t.Fatalf("%d builds stored, %d returned, want %d", len(list), len(built), n-n/5)
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "buildbridge_source_commit_pushes" {
			h := mf.GetMetric()[0].GetHistogram()
			if h.GetSampleSum() != n || h.GetSampleCount() > n {
				t.Fatalf("commit histogram: %d commits of %v pushes", h.GetSampleCount(), h.GetSampleSum())
			}
			t.Logf("%d pushes in %d commits", n, h.GetSampleCount())
		}
	}
}
