package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// ErrRefNotFound is wrapped by ResolveCommit when the ref or commit is not
// in the repository.
var ErrRefNotFound = errors.New("ref not found")

// Commit is a commit a build can be made of.
type Commit struct {
	SHA string
	// Ref is the full ref it was resolved from ("refs/heads/main"), empty
	// when it was given as a commit id.
	Ref string
	// Branch is the branch name when Ref is a branch.
	Branch      string
	Author      string
	AuthorEmail string
	Message     string
	// Time is the author date.
	Time time.Time
}

// ResolveCommit turns a branch name ("main"), a full ref
// ("refs/heads/main", "refs/tags/v1") or a commit id into a Commit.
//
// A repository that is a directory on this machine (bare or not) is read
// with rev-parse and log, so every field is set. Any other repository is a
// URL, asked with ls-remote, and only SHA, Ref and Branch are set; a commit
// id is then taken as given (ls-remote cannot check one). A branch or ref
// that is not there gives an error wrapping ErrRefNotFound.
func ResolveCommit(ctx context.Context, gitPath, repo, ref string) (Commit, error) {
	if gitPath == "" {
		gitPath = DefaultGitPath
	}
	if err := checkRepo(repo); err != nil {
		return Commit{}, err
	}
	if err := checkRef(ref); err != nil {
		return Commit{}, err
	}
	if fi, err := os.Stat(repo); err == nil && fi.IsDir() {
		return resolveLocal(ctx, gitPath, repo, ref)
	}
	return resolveRemote(ctx, gitPath, repo, ref)
}

// fullRef is the ref git should look for when given ref: a full ref as is,
// anything else as a branch.
func fullRef(ref string) string {
	if strings.HasPrefix(ref, "refs/") {
		return ref
	}
	return "refs/heads/" + ref
}

// branchOf returns the branch name of a full ref, or "".
func branchOf(ref string) string {
	b, _ := strings.CutPrefix(ref, "refs/heads/")
	if b == ref {
		return ""
	}
	return b
}

func notFound(ref, repo string) error {
	if strings.HasPrefix(ref, "refs/") && branchOf(ref) == "" {
		return fmt.Errorf("ref %q not found in %s: %w", ref, repo, ErrRefNotFound)
	}
	return fmt.Errorf("branch %q not found in %s: %w", strings.TrimPrefix(ref, "refs/heads/"), repo, ErrRefNotFound)
}

func resolveLocal(ctx context.Context, gitPath, repo, ref string) (Commit, error) {
	c := Commit{}
	full := fullRef(ref)
	// --verify with --end-of-options: one name, never read as an option.
	sha, err := git(ctx, gitPath, repo, "rev-parse", "--verify", "--quiet", "--end-of-options", full+"^{commit}")
	switch {
	case err == nil:
		c.Ref, c.Branch = full, branchOf(full)
	case ctx.Err() != nil:
		return Commit{}, err
	case isHex(ref) && len(ref) >= 4:
		sha, err = git(ctx, gitPath, repo, "rev-parse", "--verify", "--quiet", "--end-of-options", ref+"^{commit}")
		if err != nil {
			if ctx.Err() != nil {
				return Commit{}, err
			}
			return Commit{}, fmt.Errorf("commit %q not found in %s: %w", ref, repo, ErrRefNotFound)
		}
	default:
		return Commit{}, notFound(full, repo)
	}
	c.SHA = strings.TrimSpace(sha)
	if !IsSHA(c.SHA) {
		return Commit{}, fmt.Errorf("resolving %q in %s: git gave %q, not a commit id", ref, repo, c.SHA)
	}
	out, err := git(ctx, gitPath, repo, "log", "-1", "--no-show-signature",
		"--format=%an%x00%ae%x00%aI%x00%B", c.SHA, "--")
	if err != nil {
		return Commit{}, fmt.Errorf("reading commit %s in %s: %w", shortSHA(c.SHA), repo, err)
	}
	f := strings.SplitN(out, "\x00", 4)
	if len(f) != 4 {
		return Commit{}, fmt.Errorf("reading commit %s in %s: unexpected git log output", shortSHA(c.SHA), repo)
	}
	c.Author, c.AuthorEmail = f[0], f[1]
	if c.Time, err = time.Parse(time.RFC3339, f[2]); err != nil {
		return Commit{}, fmt.Errorf("reading commit %s in %s: author date: %w", shortSHA(c.SHA), repo, err)
	}
	c.Message = strings.TrimRight(f[3], "\n")
	return c, nil
}

func resolveRemote(ctx context.Context, gitPath, repo, ref string) (Commit, error) {
	if IsSHA(ref) {
		return Commit{SHA: ref}, nil
	}
	full := fullRef(ref)
	// ls-remote patterns match ref tails; only an exact name counts. The
	// peeled form (^{}) of an annotated tag names the commit itself.
	out, err := git(ctx, gitPath, "", "ls-remote", "--", repo, full, full+"^{}")
	if err != nil {
		return Commit{}, fmt.Errorf("resolving %q in %s: %w", ref, repo, err)
	}
	var sha, peeled string
	for line := range strings.Lines(out) {
		id, name, ok := strings.Cut(strings.TrimRight(line, "\n"), "\t")
		if !ok {
			continue
		}
		switch name {
		case full:
			sha = id
		case full + "^{}":
			peeled = id
		}
	}
	if peeled != "" {
		sha = peeled
	}
	if sha == "" {
		return Commit{}, notFound(full, repo)
	}
	if !IsSHA(sha) {
		return Commit{}, fmt.Errorf("resolving %q in %s: git gave %q, not a commit id", ref, repo, sha)
	}
	return Commit{SHA: sha, Ref: full, Branch: branchOf(full)}, nil
}

// checkRef refuses what is not a ref name git would accept (see
// git-check-ref-format), so that no revision syntax (main~1, @{-1}) and no
// option reaches git.
func checkRef(ref string) error {
	bad := func(why string) error { return fmt.Errorf("invalid ref %q: %s", ref, why) }
	switch {
	case ref == "":
		return bad("empty")
	case len(ref) > 1024:
		return bad("too long")
	case strings.HasPrefix(ref, "-"):
		return bad("starts with -")
	case strings.ContainsFunc(ref, func(r rune) bool { return isControl(r) || strings.ContainsRune(" ~^:?*[\\", r) }):
		return bad("contains a space, a control character or one of ~ ^ : ? * [ \\")
	case strings.Contains(ref, "..") || strings.Contains(ref, "@{") || ref == "@":
		return bad(`contains ".." or "@{"`)
	case strings.HasPrefix(ref, "/") || strings.HasSuffix(ref, "/") || strings.Contains(ref, "//"):
		return bad("has an empty path component")
	case strings.HasSuffix(ref, ".") || strings.HasSuffix(ref, ".lock"):
		return bad(`ends with "." or ".lock"`)
	case strings.Contains(ref, "/.") || strings.HasPrefix(ref, "."):
		return bad(`has a component starting with "."`)
	}
	return nil
}

// isHex reports whether s is made of lowercase hexadecimal digits only.
func isHex(s string) bool {
	for i := range len(s) {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return s != ""
}
