package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

func mkProject(t *testing.T, s *DB, name string) (User, builds.Project) {
	t.Helper()
	ctx := context.Background()
	u, err := s.CreateUser(ctx, "owner-"+name, false)
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.CreateProject(ctx, builds.Project{Name: name, OwnerID: u.ID, Repo: "/r", DefaultBranch: "main",
		Steps: []builds.Step{{Name: "t", Run: "true"}}, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return u, p
}

func TestUsersAndTokens(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		u, err := s.CreateUser(ctx, "ann", true)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateUser(ctx, "ann", false); !errors.Is(err, ErrConflict) {
			t.Fatalf("duplicate user: %v", err)
		}
		if _, err := s.CreateUser(ctx, "bad name", false); err == nil {
			t.Fatal("user name with a space accepted")
		}
		plain, tok, err := s.CreateToken(ctx, u.ID, "ci")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(plain, TokenPrefix) || len(plain) < 40 || !strings.HasPrefix(plain, tok.Prefix) {
			t.Fatalf("token %q prefix %q", plain, tok.Prefix)
		}
		var stored int
		s.db.QueryRow(s.q(`SELECT COUNT(*) FROM tokens WHERE hash = ? OR prefix = ?`), plain, plain).Scan(&stored)
		if stored != 0 {
			t.Fatal("plain token stored")
		}
		got, _, err := s.Authenticate(ctx, plain)
		if err != nil || got.ID != u.ID || !got.Admin {
			t.Fatalf("authenticate: %+v %v", got, err)
		}
		for _, bad := range []string{"", "bb_", plain + "x", strings.TrimPrefix(plain, "bb_"), "bb_" + strings.Repeat("0", 48)} {
			if _, _, err := s.Authenticate(ctx, bad); !errors.Is(err, ErrBadToken) {
				t.Errorf("authenticate(%q) = %v", bad, err)
			}
		}
		if err := s.RevokeToken(ctx, u.ID+1, tok.ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("revoke of another user's token: %v", err)
		}
		if err := s.RevokeToken(ctx, u.ID, tok.ID); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Authenticate(ctx, plain); !errors.Is(err, ErrBadToken) {
			t.Fatalf("revoked token still works: %v", err)
		}
		list, err := s.ListTokens(ctx, u.ID)
		if err != nil || len(list) != 1 || list[0].RevokedAt == nil {
			t.Fatalf("list tokens: %+v %v", list, err)
		}
		if _, _, err := s.CreateToken(ctx, 9999, "x"); !errors.Is(err, ErrNotFound) {
			t.Errorf("token for unknown user: %v", err)
		}
	})
}

func TestProjects(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		u, p := mkProject(t, s, "app")
		if _, err := s.CreateProject(ctx, builds.Project{Name: "app", OwnerID: u.ID}); !errors.Is(err, ErrConflict) {
			t.Fatalf("duplicate project: %v", err)
		}
		for _, bad := range []string{"", "../x", "-x", "a b", strings.Repeat("a", 101)} {
			if _, err := s.CreateProject(ctx, builds.Project{Name: bad, OwnerID: u.ID}); err == nil {
				t.Errorf("project name %q accepted", bad)
			}
		}
		got, err := s.ProjectByName(ctx, "app")
		if err != nil || got.ID != p.ID || got.Timeout != time.Minute || len(got.Steps) != 1 || got.Steps[0].Run != "true" {
			t.Fatalf("project by name: %+v %v", got, err)
		}
		got.Repo = "/other"
		got.Settings = builds.Settings{BuildTags: true, Branches: builds.BranchFilter{Include: []string{"release/*"}}}
		if _, err := s.UpdateProject(ctx, got); err != nil {
			t.Fatal(err)
		}
		if got, _ = s.ProjectByID(ctx, p.ID); got.Repo != "/other" || !got.Settings.BuildTags || got.Settings.Branches.Include[0] != "release/*" {
			t.Fatalf("update lost: %+v", got)
		}
		mkProject(t, s, "zed")
		if all, _ := s.ListProjects(ctx, 0); len(all) != 2 {
			t.Fatalf("all projects: %d", len(all))
		}
		if mine, _ := s.ListProjects(ctx, u.ID); len(mine) != 1 || mine[0].Name != "app" {
			t.Fatalf("own projects: %+v", mine)
		}
		b, err := s.CreateBuild(ctx, NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: "a"})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteProject(ctx, p.ID); !errors.Is(err, ErrConflict) {
			t.Fatalf("delete with a queued build: %v", err)
		}
		if _, err := s.RequestCancel(ctx, b.ID, "test"); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteProject(ctx, p.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Build(ctx, b.ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("build of deleted project: %v", err)
		}
	})
}

func TestBuildLifecycleAndOutbox(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		notified := 0
		s.SetOnOutbox(func() { notified++ })
		u, p := mkProject(t, s, "app")
		b1, err := s.CreateBuild(ctx, NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: "abc", Author: "Ann", TriggeredBy: u.ID})
		if err != nil {
			t.Fatal(err)
		}
		if b1.Number != 1 || b1.State != builds.Queued {
			t.Fatalf("first build: %+v", b1)
		}
		if _, err := s.Transition(ctx, b1.ID, builds.Finished, nil); err == nil {
			t.Fatal("FINISHED without a result accepted")
		}
		claimed, err := s.ClaimQueued(ctx)
		if err != nil || claimed.ID != b1.ID || claimed.State != builds.Started || claimed.StartedAt == nil {
			t.Fatalf("claim: %+v %v", claimed, err)
		}
		if _, err := s.ClaimQueued(ctx); !errors.Is(err, ErrNotFound) {
			t.Fatalf("second claim: %v", err)
		}
		fin, err := s.Transition(ctx, b1.ID, builds.Finished, func(b *builds.Build) error { b.Result = builds.Passed; return nil })
		if err != nil || fin.FinishedAt == nil || fin.Result != builds.Passed {
			t.Fatalf("finish: %+v %v", fin, err)
		}
		if _, err := s.Transition(ctx, b1.ID, builds.Started, nil); !errors.Is(err, builds.ErrTransition) {
			t.Fatalf("FINISHED → STARTED: %v", err)
		}
		b2, _ := s.CreateBuild(ctx, NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: "def"})
		if b2.Number != 2 {
			t.Fatalf("second number %d", b2.Number)
		}
		s.ClaimQueued(ctx)
		s.Transition(ctx, b2.ID, builds.Finished, func(b *builds.Build) error { b.Result = builds.Failed; return nil })

		rows, err := s.PendingOutbox(ctx, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != 6 || notified != 6 {
			t.Fatalf("outbox rows %d, notified %d, want 6", len(rows), notified)
		}
		var last builds.Transition
		var lastSeq int64
		seen := map[string]bool{}
		for _, r := range rows {
			if r.Topic != builds.TopicTransition || seen[r.EventID] {
				t.Fatalf("row %+v", r)
			}
			seen[r.EventID] = true
			if err := json.Unmarshal(r.Payload, &last); err != nil {
				t.Fatal(err)
			}
			if last.EventID != r.EventID || last.Seq <= lastSeq {
				t.Fatalf("event id %s/%s seq %d after %d", last.EventID, r.EventID, last.Seq, lastSeq)
			}
			lastSeq = last.Seq
		}
		if last.To != builds.Finished || last.From != builds.Started || last.Build.Result != builds.Failed ||
			last.Previous == nil || last.Previous.Number != 1 || last.Previous.Result != builds.Passed ||
			last.Project.Name != "app" || last.Project.OwnerID != u.ID {
			t.Fatalf("last transition: %+v prev %+v", last, last.Previous)
		}
		if builds.DeriveStatus(last.Build.State, last.Build.Result, last.Previous.Result) != builds.StatusBroken {
			t.Fatal("second build not broken")
		}
		ids := []int64{rows[0].ID, rows[1].ID}
		if err := s.DeleteOutbox(ctx, ids); err != nil {
			t.Fatal(err)
		}
		if n, _, _ := s.OutboxBacklog(ctx); n != 4 {
			t.Fatalf("backlog %d", n)
		}
		evs, _ := s.BuildEvents(ctx, b1.ID)
		if len(evs) != 3 || evs[0].State != builds.Queued || evs[2].State != builds.Finished {
			t.Fatalf("build events %+v", evs)
		}
		list, _ := s.ListBuilds(ctx, BuildFilter{ProjectID: p.ID})
		if len(list) != 2 || list[0].ID != b2.ID {
			t.Fatalf("newest first: %+v", list)
		}
		page, _ := s.ListBuilds(ctx, BuildFilter{ProjectID: p.ID, Before: b2.ID, Limit: 1})
		if len(page) != 1 || page[0].ID != b1.ID {
			t.Fatalf("cursor page: %+v", page)
		}
		if f, _ := s.ListBuilds(ctx, BuildFilter{ProjectID: p.ID, State: builds.Queued}); len(f) != 0 {
			t.Fatalf("state filter: %+v", f)
		}
	})
}

func TestCancel(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		_, p := mkProject(t, s, "app")
		q, _ := s.CreateBuild(ctx, NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: "a"})
		got, err := s.RequestCancel(ctx, q.ID, "canceled by ann")
		if err != nil || got.State != builds.Finished || got.Result != builds.Canceled || got.Reason != "canceled by ann" {
			t.Fatalf("cancel queued: %+v %v", got, err)
		}
		if _, err := s.RequestCancel(ctx, q.ID, ""); !errors.Is(err, ErrConflict) {
			t.Fatalf("cancel finished: %v", err)
		}
		r, _ := s.CreateBuild(ctx, NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: "b"})
		s.ClaimQueued(ctx)
		got, err = s.RequestCancel(ctx, r.ID, "")
		if err != nil || got.State != builds.Started || !got.CancelRequested {
			t.Fatalf("cancel running: %+v %v", got, err)
		}
		if b, _ := s.Build(ctx, r.ID); !b.CancelRequested {
			t.Fatal("cancel request not stored")
		}
		if _, err := s.RequestCancel(ctx, 12345, ""); !errors.Is(err, ErrNotFound) {
			t.Fatalf("cancel unknown: %v", err)
		}
	})
}

func TestConcurrentClaims(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		_, p := mkProject(t, s, "app")
		const n = 30
		for i := 0; i < n; i++ {
			if _, err := s.CreateBuild(ctx, NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: "a"}); err != nil {
				t.Fatal(err)
			}
		}
		var mu sync.Mutex
		got := map[int64]int{}
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					b, err := s.ClaimQueued(ctx)
					if errors.Is(err, ErrNotFound) {
						return
					}
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					got[b.ID]++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if len(got) != n {
			t.Fatalf("claimed %d distinct builds, want %d", len(got), n)
		}
		for id, c := range got {
			if c != 1 {
				t.Fatalf("build %d claimed %d times", id, c)
			}
		}
	})
}

func TestLogsAndArtifacts(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		_, p := mkProject(t, s, "app")
		b, _ := s.CreateBuild(ctx, NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: "a"})
		for _, chunk := range []string{"hello ", "world\n", "bye\n"} {
			if _, err := s.AppendLog(ctx, b.ID, []byte(chunk)); err != nil {
				t.Fatal(err)
			}
		}
		cases := []struct {
			off  int64
			max  int
			want string
		}{{0, 100, "hello world\nbye\n"}, {3, 100, "lo world\nbye\n"}, {6, 3, "wor"}, {12, 100, "bye\n"}, {16, 100, ""}, {99, 10, ""}}
		for _, c := range cases {
			got, size, err := s.ReadLog(ctx, b.ID, c.off, c.max)
			if err != nil || string(got) != c.want || size != 16 {
				t.Errorf("ReadLog(%d, %d) = %q, %d, %v; want %q", c.off, c.max, got, size, err, c.want)
			}
		}
		if _, _, err := s.ReadLog(ctx, 999, 0, 10); !errors.Is(err, ErrNotFound) {
			t.Errorf("log of unknown build: %v", err)
		}
		arts := []Artifact{{Path: "out/a.txt", Size: 3, SHA256: "x"}, {Path: "b.bin", Size: 5, SHA256: "y"}}
		if err := s.AddArtifacts(ctx, b.ID, arts); err != nil {
			t.Fatal(err)
		}
		list, _ := s.Artifacts(ctx, b.ID)
		if len(list) != 2 || list[0].Path != "b.bin" {
			t.Fatalf("artifacts %+v", list)
		}
		if a, err := s.ArtifactByPath(ctx, b.ID, "out/a.txt"); err != nil || a.Size != 3 {
			t.Fatalf("artifact by path %+v %v", a, err)
		}
		if _, err := s.ArtifactByPath(ctx, b.ID, "../etc/passwd"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown artifact: %v", err)
		}
	})
}

func TestReopenKeepsData(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s, err := Open(ctx, Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	_, p := mkProject(t, s, "app")
	s.CreateBuild(ctx, NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: "a"})
	s.Close()
	s, err = Open(ctx, Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if list, _ := s.ListBuilds(ctx, BuildFilter{}); len(list) != 1 {
		t.Fatalf("after reopen: %d builds", len(list))
	}
}

func TestBuildsWithArtifactsFinishedBefore(t *testing.T) {
	eachStore(t, func(t *testing.T, s *DB) {
		ctx := context.Background()
		_, p := mkProject(t, s, "app")
		now := time.Now()
		var ids []int64
		for i := range 4 {
			b, err := s.CreateBuild(ctx, NewBuild{ProjectID: p.ID, Ref: "refs/heads/main", Branch: "main", SHA: fmt.Sprint(i)})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, b.ID)
		}
		// 0: finished two days ago, artifacts; 1: finished now, artifacts;
		// 2: not finished, artifacts; 3: finished two days ago, none.
		finished := map[int]time.Time{0: now.AddDate(0, 0, -2), 1: now, 3: now.AddDate(0, 0, -2)}
		for i, at := range finished {
			if _, err := s.db.ExecContext(ctx, s.q(`UPDATE builds SET finished_at = ? WHERE id = ?`), ms(at), ids[i]); err != nil {
				t.Fatal(err)
			}
		}
		for _, i := range []int{0, 1, 2} {
			if err := s.AddArtifacts(ctx, ids[i], []Artifact{{Path: "a.txt", Size: 1, SHA256: "x"}, {Path: "b.txt", Size: 1, SHA256: "y"}}); err != nil {
				t.Fatal(err)
			}
		}
		old, err := s.BuildsWithArtifactsFinishedBefore(ctx, now.AddDate(0, 0, -1), 10)
		if err != nil || len(old) != 1 || old[0] != ids[0] {
			t.Fatalf("old builds with artifacts: %v %v, want [%d]", old, err, ids[0])
		}
		if n, err := s.DeleteArtifacts(ctx, ids[0]); err != nil || n != 2 {
			t.Fatalf("delete: %d %v", n, err)
		}
		if l, _ := s.Artifacts(ctx, ids[0]); len(l) != 0 {
			t.Fatalf("artifacts left: %+v", l)
		}
		if l, _ := s.Artifacts(ctx, ids[1]); len(l) != 2 {
			t.Fatalf("a recent build's artifacts: %+v", l)
		}
		if old, err := s.BuildsWithArtifactsFinishedBefore(ctx, now.AddDate(0, 0, -1), 10); err != nil || len(old) != 0 {
			t.Fatalf("after the delete: %v %v", old, err)
		}
	})
}
