// Package githook is the git post-receive hook source: the installer that
// puts a hook into a repository (keeping and chaining the hook that was
// there), the hook itself, which reads the pushed refs, spools one request
// inside the repository and sends it to the hub with a short time budget,
// and the hub's side, POST /hooks/git.
//
// The hook never fails or blocks a push. A request is written to the spool
// (<git-dir>/buildbridge/spool/) before it is sent, and removed once the
// hub answered; when the hub is down or refuses, it stays and is sent, in
// order, with the next push or by `buildbridge hook flush`. Each request
// carries a random id the hub de-duplicates, so a request whose answer was
// lost is not built twice.
package githook

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/buildbridge/buildbridge/sources"
)

// Update is one line git gives a post-receive hook: a ref moved from Old
// to New. Old is all zeros for a created ref, New for a deleted one.
type Update struct {
	Old, New, Ref string
}

// String is the line git wrote.
func (u Update) String() string { return u.Old + " " + u.New + " " + u.Ref }

// Limits of the post-receive input the hook accepts.
const (
	MaxLineBytes = 4096
	MaxUpdates   = 100_000
)

// ParseLine reads one "<old-sha> <new-sha> <ref>" line (without its
// newline).
func ParseLine(line string) (Update, error) {
	if len(line) > MaxLineBytes {
		return Update{}, fmt.Errorf("post-receive line longer than %d bytes", MaxLineBytes)
	}
	old, rest, ok1 := strings.Cut(line, " ")
	nw, ref, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 {
		return Update{}, fmt.Errorf("post-receive line %q is not \"<old-sha> <new-sha> <ref>\"", clip(line))
	}
	switch {
	case !sources.ValidSHA(old):
		return Update{}, fmt.Errorf("post-receive line %q: old value is not a full lowercase object id", clip(line))
	case !sources.ValidSHA(nw):
		return Update{}, fmt.Errorf("post-receive line %q: new value is not a full lowercase object id", clip(line))
	case len(old) != len(nw):
		return Update{}, fmt.Errorf("post-receive line %q: old and new object ids differ in length", clip(line))
	case sources.IsZeroSHA(old) && sources.IsZeroSHA(nw):
		return Update{}, fmt.Errorf("post-receive line %q: both object ids are zero", clip(line))
	}
	if err := sources.CheckRef(ref); err != nil {
		return Update{}, fmt.Errorf("post-receive line: %w", err)
	}
	return Update{Old: old, New: nw, Ref: ref}, nil
}

// ParseUpdates reads every line of a post-receive hook's input. Empty
// lines are skipped; a bad line is reported with its number, after the
// good ones, so the caller can still use those.
func ParseUpdates(r io.Reader) ([]Update, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1024), MaxLineBytes+1)
	var (
		out  []Update
		errs []error
		n    int
	)
	for sc.Scan() {
		n++
		line := strings.TrimSuffix(sc.Text(), "\r")
		if line == "" {
			continue
		}
		if len(out) >= MaxUpdates {
			errs = append(errs, fmt.Errorf("more than %d updated refs; the rest is ignored", MaxUpdates))
			break
		}
		u, err := ParseLine(line)
		if err != nil {
			errs = append(errs, fmt.Errorf("line %d: %w", n, err))
			continue
		}
		out = append(out, u)
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("line %d: %w", n+1, err))
	}
	return out, errors.Join(errs...)
}

func clip(s string) string {
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}

// Commit is what a commit object says of itself.
type Commit struct {
	Author, AuthorEmail, Message string
	Time                         time.Time
}

// ParseCommitObject reads a raw commit object (as `git cat-file commit`
// prints it): the author line and the message. Signatures and other
// headers are skipped; invalid UTF-8 is replaced.
func ParseCommitObject(raw []byte) (Commit, error) {
	var c Commit
	head, msg, ok := bytes.Cut(raw, []byte("\n\n"))
	if !ok {
		head = bytes.TrimSuffix(raw, []byte("\n"))
	}
	found := false
	for line := range bytes.SplitSeq(head, []byte("\n")) {
		rest, isAuthor := bytes.CutPrefix(line, []byte("author "))
		if !isAuthor {
			continue
		}
		found = true
		lt, gt := bytes.LastIndexByte(rest, '<'), bytes.LastIndexByte(rest, '>')
		if lt < 0 || gt < lt {
			return c, fmt.Errorf("commit author line %q has no <email>", clip(string(line)))
		}
		c.Author = strings.TrimSpace(valid(rest[:lt]))
		c.AuthorEmail = valid(rest[lt+1 : gt])
		if f := strings.Fields(string(rest[gt+1:])); len(f) == 2 {
			c.Time = parseGitTime(f[0], f[1])
		}
		break
	}
	if !found {
		return c, errors.New("commit object has no author line")
	}
	c.Message = strings.TrimRight(valid(msg), "\n")
	return c, nil
}

func valid(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

// parseGitTime reads git's "<unix seconds> <+hhmm>" author date; a bad
// one is the zero time.
func parseGitTime(secs, zone string) time.Time {
	s, err := strconv.ParseInt(secs, 10, 64)
	if err != nil || len(zone) != 5 || (zone[0] != '+' && zone[0] != '-') {
		return time.Time{}
	}
	hh, err1 := strconv.Atoi(zone[1:3])
	mm, err2 := strconv.Atoi(zone[3:5])
	if err1 != nil || err2 != nil || hh > 23 || mm > 59 {
		return time.Time{}
	}
	off := hh*3600 + mm*60
	if zone[0] == '-' {
		off = -off
	}
	return time.Unix(s, 0).In(time.FixedZone(zone, off))
}
