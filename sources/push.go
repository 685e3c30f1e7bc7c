package sources

import (
	"fmt"
	"path"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/buildbridge/buildbridge/builds"
	"github.com/buildbridge/buildbridge/store"
)

// Source names, as stored with each delivery and used as metric labels.
const (
	SourceGit    = "git"
	SourceGitHub = "github"
	SourceGitLab = "gitlab"
	SourceGitea  = "gitea"
)

// Push is one push as a source saw it: every ref it updated.
type Push struct {
	// Source is one of the Source* names.
	Source string
	// DeliveryID de-duplicates: a push whose id was ingested before for the
	// same project and source builds nothing. Empty: not de-duplicated.
	DeliveryID string
	// Pusher names who pushed, as the source knows them.
	Pusher string
	// TriggeredBy is the user the builds are recorded as triggered by.
	TriggeredBy int64
	Refs        []RefUpdate
}

// RefUpdate is one ref a push moved from Old to New.
type RefUpdate struct {
	// Ref is the full ref name: refs/heads/main, refs/tags/v1.
	Ref      string
	Old, New string
	// Commit is the commit New points at, when the source knows it.
	Commit Commit
	// CompareURL shows the pushed changes on the forge, when there is one.
	CompareURL string
}

// Commit is the metadata of the commit a ref points at after a push.
type Commit struct {
	// SHA is the commit to build when it differs from the ref's new value
	// (an annotated tag points at a tag object, not at the commit).
	SHA         string
	Author      string
	AuthorEmail string
	Message     string
	Time        time.Time
}

// Skip reasons: why a ref of a push starts no build.
const (
	SkipDeleted      = "deleted"
	SkipTag          = "tags_disabled"
	SkipOtherRef     = "not_a_branch"
	SkipBranchFilter = "branch_filter"
	SkipCI           = "skip_ci"
)

// Skip is a ref a push updated that starts no build, and why.
type Skip struct {
	Ref     string `json:"ref"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// MaxMessageBytes bounds the commit message kept with a build; the rest is
// cut (after [skip ci] was looked for in the whole message).
const MaxMessageBytes = 16 << 10

// Plan applies a project's settings to a push: one build per updated
// branch (creation included), none for a deletion, tags only when the
// project builds tags, none for a branch the filters leave out or whose
// commit message asks to skip CI. Refs that are neither branches nor tags
// (notes, pull requests) never build.
func Plan(p builds.Project, push Push) ([]store.PushBuild, []Skip) {
	var (
		out   []store.PushBuild
		skips []Skip
	)
	skip := func(ref, reason, format string, args ...any) {
		skips = append(skips, Skip{Ref: ref, Reason: reason, Message: fmt.Sprintf(format, args...)})
	}
	for _, u := range push.Refs {
		branch, isBranch := strings.CutPrefix(u.Ref, "refs/heads/")
		tag, isTag := strings.CutPrefix(u.Ref, "refs/tags/")
		if !isBranch {
			branch = "" // CutPrefix returns the whole ref when it is not a branch
		}
		switch {
		case IsZeroSHA(u.New):
			skip(u.Ref, SkipDeleted, "%s was deleted", u.Ref)
			continue
		case isTag && !p.Settings.BuildTags:
			skip(u.Ref, SkipTag, "tag %s: the project does not build tags (settings.build_tags)", tag)
			continue
		case !isBranch && !isTag:
			skip(u.Ref, SkipOtherRef, "%s is neither a branch nor a tag", u.Ref)
			continue
		case isBranch && !MatchBranch(p.Settings.Branches, branch):
			skip(u.Ref, SkipBranchFilter, "branch %s is left out by the project's branch filters", branch)
			continue
		case SkipsCI(u.Commit.Message):
			skip(u.Ref, SkipCI, "the commit message asks to skip CI")
			continue
		}
		sha := u.New
		if u.Commit.SHA != "" {
			sha = u.Commit.SHA
		}
		nb := store.PushBuild{
			NewBuild: store.NewBuild{
				ProjectID: p.ID, Ref: u.Ref, Branch: branch, SHA: sha,
				Author: u.Commit.Author, AuthorEmail: u.Commit.AuthorEmail,
				Message: truncate(u.Commit.Message, MaxMessageBytes), TriggeredBy: push.TriggeredBy,
			},
			CompareURL: u.CompareURL, Pusher: push.Pusher,
		}
		out = append(out, nb)
	}
	return out, skips
}

// MatchBranch reports whether a branch passes a project's filters: it
// matches an Include glob (or there is none) and no Exclude glob. Globs
// use path.Match syntax, so "release/*" matches "release/1.2" but not
// "release/1/2".
func MatchBranch(f builds.BranchFilter, branch string) bool {
	match := func(globs []string) bool {
		for _, g := range globs {
			if ok, _ := path.Match(g, branch); ok {
				return true
			}
		}
		return false
	}
	if len(f.Include) > 0 && !match(f.Include) {
		return false
	}
	return !match(f.Exclude)
}

// SkipsCI reports whether a commit message holds [skip ci] or [ci skip],
// in any letter case.
func SkipsCI(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "[skip ci]") || strings.Contains(m, "[ci skip]")
}

// IsZeroSHA reports whether s is git's all-zero object id, which stands
// for "no object": the old value of a created ref, the new value of a
// deleted one.
func IsZeroSHA(s string) bool {
	return s != "" && strings.Trim(s, "0") == ""
}

// ValidSHA reports whether s is a full SHA-1 or SHA-256 object id in
// lowercase hexadecimal.
func ValidSHA(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	for i := range len(s) {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// CheckRef reports why ref is not a full ref name git accepts (see
// git-check-ref-format), or nil: it starts with "refs/" and holds no
// revision syntax, control character or option-like part.
func CheckRef(ref string) error {
	bad := func(why string) error { return fmt.Errorf("invalid ref %q: %s", ref, why) }
	switch {
	case !strings.HasPrefix(ref, "refs/") || len(ref) <= len("refs/"):
		return bad(`must be a full ref name starting with "refs/"`)
	case len(ref) > 1024:
		return bad("longer than 1024 bytes")
	case !utf8.ValidString(ref):
		return bad("not valid UTF-8")
	case strings.ContainsFunc(ref, func(r rune) bool { return r < 0x20 || r == 0x7f || strings.ContainsRune(" ~^:?*[\\", r) }):
		return bad("contains a space, a control character or one of ~ ^ : ? * [ \\")
	case strings.Contains(ref, "..") || strings.Contains(ref, "@{"):
		return bad(`contains ".." or "@{"`)
	case strings.HasSuffix(ref, "/") || strings.Contains(ref, "//"):
		return bad("has an empty path component")
	case strings.HasSuffix(ref, ".") || strings.HasSuffix(ref, ".lock") || strings.Contains(ref, ".lock/"):
		return bad(`ends a component with "." or ".lock"`)
	case strings.Contains(ref, "/."):
		return bad(`has a component starting with "."`)
	}
	return nil
}

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
