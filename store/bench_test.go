package store

import (
	"context"
	"testing"

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
