package runner

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestResolveCommit(t *testing.T) {
	t.Parallel()
	repo, first := newRepo(t, map[string]string{"README": "x"})
	feature := repo.commit(t, "feature/login", map[string]string{"login.go": "package x"}, "add login")
	runGit(t, repo.work, "tag", "-a", "-m", "release one", "v1", first)
	runGit(t, repo.work, "push", "--quiet", "origin", "v1")
	url := "file://" + repo.bare

	authored := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name, repo, ref string
		want            Commit
	}{
		{"branch in bare repo", repo.bare, "main", Commit{SHA: first, Ref: "refs/heads/main", Branch: "main",
			Author: "Ada Lovelace", AuthorEmail: "ada@example.com", Message: "first commit\n\nwith a body", Time: authored}},
		{"branch with slash", repo.bare, "feature/login", Commit{SHA: feature, Ref: "refs/heads/feature/login", Branch: "feature/login",
			Author: "Ada Lovelace", AuthorEmail: "ada@example.com", Message: "add login", Time: authored}},
		{"full ref", repo.bare, "refs/heads/feature/login", Commit{SHA: feature, Ref: "refs/heads/feature/login", Branch: "feature/login",
			Author: "Ada Lovelace", AuthorEmail: "ada@example.com", Message: "add login", Time: authored}},
		{"annotated tag", repo.bare, "refs/tags/v1", Commit{SHA: first, Ref: "refs/tags/v1",
			Author: "Ada Lovelace", AuthorEmail: "ada@example.com", Message: "first commit\n\nwith a body", Time: authored}},
		{"full sha", repo.bare, feature, Commit{SHA: feature,
			Author: "Ada Lovelace", AuthorEmail: "ada@example.com", Message: "add login", Time: authored}},
		{"short sha", repo.bare, first[:10], Commit{SHA: first,
			Author: "Ada Lovelace", AuthorEmail: "ada@example.com", Message: "first commit\n\nwith a body", Time: authored}},
		{"working clone", repo.work, "main", Commit{SHA: first, Ref: "refs/heads/main", Branch: "main",
			Author: "Ada Lovelace", AuthorEmail: "ada@example.com", Message: "first commit\n\nwith a body", Time: authored}},
		{"url branch", url, "feature/login", Commit{SHA: feature, Ref: "refs/heads/feature/login", Branch: "feature/login"}},
		{"url annotated tag peeled", url, "refs/tags/v1", Commit{SHA: first, Ref: "refs/tags/v1"}},
		{"url sha", url, first, Commit{SHA: first}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ResolveCommit(t.Context(), "", tt.repo, tt.ref)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Time.Equal(tt.want.Time) {
				t.Errorf("time %v, want %v", got.Time, tt.want.Time)
			}
			got.Time, tt.want.Time = time.Time{}, time.Time{}
			if got != tt.want {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestResolveCommitErrors(t *testing.T) {
	t.Parallel()
	repo, _ := newRepo(t, map[string]string{"README": "x"})
	url := "file://" + repo.bare
	tests := []struct {
		name, repo, ref string
		notFound        bool
		want            string
	}{
		{"unknown branch", repo.bare, "nope", true, `branch "nope" not found in ` + repo.bare},
		{"unknown full ref", repo.bare, "refs/tags/nope", true, `ref "refs/tags/nope" not found in ` + repo.bare},
		{"unknown sha", repo.bare, strings.Repeat("ab", 20), true, `commit "abab`},
		{"unknown branch by url", url, "nope", true, `branch "nope" not found in ` + url},
		{"option as ref", repo.bare, "--output=/tmp/x", false, `invalid ref "--output=/tmp/x": starts with -`},
		{"revision syntax", repo.bare, "main~1", false, `invalid ref "main~1"`},
		{"reflog syntax", repo.bare, "main@{1}", false, `invalid ref "main@{1}"`},
		{"range", repo.bare, "main..x", false, `invalid ref "main..x"`},
		{"empty ref", repo.bare, "", false, `invalid ref "": empty`},
		{"option as repo", "--upload-pack=touch /tmp/x", "main", false, `repository "--upload-pack=touch /tmp/x" must not start with -`},
		{"missing repo", "/nonexistent/repo.git", "main", false, `resolving "main" in /nonexistent/repo.git: git ls-remote:`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ResolveCommit(t.Context(), "git", tt.repo, tt.ref)
			if err == nil {
				t.Fatal("no error")
			}
			if errors.Is(err, ErrRefNotFound) != tt.notFound {
				t.Errorf("errors.Is(ErrRefNotFound) = %v for %v", !tt.notFound, err)
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("got %q, want prefix %q", err, tt.want)
			}
		})
	}
}
