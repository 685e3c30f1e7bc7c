package githook

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/buildbridge/buildbridge/sources"
)

// Files the installer keeps inside the git directory.
const (
	stateDirName = "buildbridge"
	settingsName = "hook.json"
	tokenName    = "token"
	spoolName    = "spool"
)

// Settings are what the installer records for the hook in
// <git-dir>/buildbridge/hook.json. The token is kept apart, in a file only
// the repository's owner can read.
type Settings struct {
	URL     string `json:"url"`
	Project string `json:"project"`
}

// StateDir is where the hook keeps its settings, token and spool.
func StateDir(gitDir string) string { return filepath.Join(gitDir, stateDirName) }

// SpoolDir is the hook's spool directory.
func SpoolDir(gitDir string) string { return filepath.Join(StateDir(gitDir), spoolName) }

// LoadSettings reads the hook's settings and token from a git directory.
func LoadSettings(gitDir string) (Settings, string, error) {
	var s Settings
	raw, err := os.ReadFile(filepath.Join(StateDir(gitDir), settingsName))
	if errors.Is(err, os.ErrNotExist) {
		return s, "", fmt.Errorf("no %s in %s: run `buildbridge hook install`", settingsName, StateDir(gitDir))
	}
	if err != nil {
		return s, "", err
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return s, "", fmt.Errorf("%s: %w", filepath.Join(StateDir(gitDir), settingsName), err)
	}
	tok, err := os.ReadFile(filepath.Join(StateDir(gitDir), tokenName))
	if err != nil {
		return s, "", fmt.Errorf("hook token: %w", err)
	}
	return s, strings.TrimSpace(string(tok)), nil
}

// RunConfig configures one run of the hook.
type RunConfig struct {
	// GitDir is the repository's git directory.
	GitDir string
	// Input is what git wrote on the hook's stdin.
	Input []byte
	// Stderr gets the lines meant for the pusher (git shows them as
	// "remote: …").
	Stderr io.Writer
	// Git is the git binary (default "git"). It runs in the hook's own
	// environment, which points it at the repository being pushed to.
	Git string
	// Budget bounds the whole run (default 3s).
	Budget time.Duration
	// Pusher names who pushed (optional).
	Pusher string
	// HTTP is the client used to reach the hub (default: a new one).
	HTTP *http.Client
}

// refsPerRequest splits a push of very many refs into several requests so
// each stays well under the hub's body limit.
const refsPerRequest = 256

// Run is the post-receive hook. It never fails: whatever goes wrong is one
// line on Stderr and a request left in the spool.
func Run(ctx context.Context, cfg RunConfig) {
	if cfg.Git == "" {
		cfg.Git = "git"
	}
	if cfg.Budget <= 0 {
		cfg.Budget = 3 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Budget)
	defer cancel()
	say := func(format string, args ...any) { fmt.Fprintf(cfg.Stderr, "buildbridge: "+format+"\n", args...) }

	settings, token, err := LoadSettings(cfg.GitDir)
	if err != nil {
		say("hook not configured, no build requested: %v", err)
		return
	}
	updates, perr := ParseUpdates(bytes.NewReader(cfg.Input))
	if perr != nil {
		say("ignoring bad hook input: %v", firstLine(perr))
	}
	var live []Update
	for _, u := range updates {
		if !sources.IsZeroSHA(u.New) { // a deletion never builds
			live = append(live, u)
		}
	}
	var bodies [][]byte
	var ids []string
	if len(live) > 0 {
		mctx, mcancel := context.WithTimeout(ctx, cfg.Budget/3)
		commits := ReadCommits(mctx, cfg.Git, cfg.GitDir, live)
		mcancel()
		for start := 0; start < len(live); start += refsPerRequest {
			req := Request{Project: settings.Project, Pusher: cfg.Pusher}
			for _, u := range live[start:min(start+refsPerRequest, len(live))] {
				ref := Ref{Old: u.Old, New: u.New, Ref: u.Ref}
				if c, ok := commits[u.New]; ok {
					ref.Commit, ref.Author, ref.AuthorEmail, ref.Message = c.SHA, c.Author, c.AuthorEmail, c.Message
					if ref.Commit == u.New {
						ref.Commit = ""
					}
					if !c.Time.IsZero() {
						ref.Timestamp = c.Time.Format(time.RFC3339)
					}
				}
				req.Refs = append(req.Refs, ref)
			}
			if req.ID, err = NewID(); err != nil {
				say("%v; no build requested", err)
				return
			}
			body, err := json.Marshal(req)
			if err != nil {
				say("encoding the build request: %v", err)
				return
			}
			bodies, ids = append(bodies, body), append(ids, req.ID)
		}
	}

	client := &Client{URL: settings.URL, Token: token, HTTP: cfg.HTTP}
	sp, err := OpenSpool(SpoolDir(cfg.GitDir))
	if err != nil {
		// Without a spool (an unwritable git directory) the requests are
		// sent directly, and lost if the hub does not take them: say so.
		say("cannot use the spool (%v); sending without it", err)
		for _, body := range bodies {
			res, serr := client.Send(ctx, body)
			if serr != nil {
				say("%v; this build request is lost, trigger the build through the API", serr)
				return
			}
			reportResult(cfg.Stderr, settings.Project, res)
		}
		return
	}
	// The lock keeps concurrent pushes' requests in order; waiting for it
	// may take half the budget, the other half is for sending.
	lctx, lcancel := context.WithTimeout(ctx, cfg.Budget/2)
	unlock, lerr := sp.Lock(lctx)
	lcancel()
	for i, body := range bodies {
		// Written whole even without the lock: a request is never lost,
		// only, at worst, sent after one made a moment later.
		if _, err := sp.Add(ids[i], body); err != nil {
			say("cannot spool the build request (%v); sending it directly", err)
			if res, serr := client.Send(ctx, body); serr != nil {
				say("%v; this build request is lost, trigger the build through the API", serr)
			} else {
				reportResult(cfg.Stderr, settings.Project, res)
			}
		}
	}
	if lerr != nil {
		if len(bodies) > 0 {
			say("another push is sending the spooled requests; %d build request(s) kept in %s, sent with the next push or by `buildbridge hook flush`",
				len(bodies), sp.Dir())
		}
		return
	}
	defer unlock()
	report(cfg.Stderr, settings.Project, Flush(ctx, sp, client), sp.Dir(), "with the next push or by `buildbridge hook flush`")
}

// FlushReport is what Flush did.
type FlushReport struct {
	Sent      int
	Remaining int
	Rejected  []string
	Results   []sources.ResultJSON
	// Err is why sending stopped with requests left, nil when none are.
	Err error
	// RejectErrs are the hub's reasons for the rejected requests.
	RejectErrs []error
}

// Flush sends the spooled requests in order, stopping at the first one the
// hub does not take; one it refuses for good (malformed) is moved to
// rejected/ and the next is sent. Call it with the lock held.
func Flush(ctx context.Context, sp *Spool, c *Client) FlushReport {
	var r FlushReport
	names, err := sp.List()
	if err != nil {
		r.Err = err
		return r
	}
	for i, name := range names {
		body, err := sp.Read(name)
		if err != nil {
			r.Err, r.Remaining = err, len(names)-i
			return r
		}
		res, err := c.Send(ctx, body)
		var se *SendError
		switch {
		case err == nil:
			r.Sent++
			r.Results = append(r.Results, res)
			if err := sp.Remove(name); err != nil {
				// Sent again later, the hub sees a duplicate: no harm.
				r.Err, r.Remaining = err, len(names)-i-1
				return r
			}
		case errors.As(err, &se) && se.Permanent:
			to, merr := sp.Reject(name)
			if merr != nil {
				r.Err, r.Remaining = merr, len(names)-i
				return r
			}
			r.Rejected = append(r.Rejected, to)
			r.RejectErrs = append(r.RejectErrs, err)
		default:
			r.Err, r.Remaining = err, len(names)-i
			return r
		}
	}
	return r
}

// report writes what a flush did, one line per queued build and one line
// for a failure.
func report(w io.Writer, project string, r FlushReport, spoolDir, when string) {
	for _, res := range r.Results {
		reportResult(w, project, res)
	}
	for i, path := range r.Rejected {
		fmt.Fprintf(w, "buildbridge: %v; the request was moved to %s\n", r.RejectErrs[i], path)
	}
	if r.Err != nil {
		fmt.Fprintf(w, "buildbridge: %v; %d build request(s) kept in %s, sent %s\n", r.Err, r.Remaining, spoolDir, when)
	}
}

// ReportFlush writes what a flush did the way the hook does.
func ReportFlush(w io.Writer, project string, r FlushReport, spoolDir string) {
	report(w, project, r, spoolDir, "at the next push or flush")
}

func reportResult(w io.Writer, project string, res sources.ResultJSON) {
	for _, b := range res.Builds {
		name := b.Branch
		if name == "" {
			name = b.Ref
		}
		fmt.Fprintf(w, "buildbridge: build #%d of %s queued for %s at %s\n", b.Number, project, name, short(b.SHA))
	}
	for _, s := range res.Skipped {
		fmt.Fprintf(w, "buildbridge: %s not built: %s\n", s.Ref, s.Message)
	}
}

func short(sha string) string {
	if len(sha) > 10 {
		return sha[:10]
	}
	return sha
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// CommitInfo is the metadata ReadCommits found for an object id.
type CommitInfo struct {
	// SHA is the commit (an annotated tag peeled to it).
	SHA string
	Commit
}

// ReadCommits reads the commits the updates point at with one
// `git cat-file --batch` in gitDir, in the current environment (inside a
// hook, git's own, with whatever object directories it names). Ids it
// cannot read are left out: a build request without metadata still
// builds.
func ReadCommits(ctx context.Context, git, gitDir string, updates []Update) map[string]CommitInfo {
	out := map[string]CommitInfo{}
	var in bytes.Buffer
	var order []string
	for _, u := range updates {
		if _, dup := out[u.New]; dup {
			continue
		}
		out[u.New] = CommitInfo{}
		order = append(order, u.New)
		in.WriteString(u.New + "^{commit}\n")
	}
	clear(out)
	cmd := exec.CommandContext(ctx, git, "--git-dir="+gitDir, "cat-file", "--batch")
	cmd.Stdin = &in
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil && stdout.Len() == 0 {
		return out
	}
	rd := bufio.NewReader(&stdout)
	for _, id := range order {
		header, err := rd.ReadString('\n')
		if err != nil {
			break
		}
		f := strings.Fields(header)
		if len(f) != 3 || f[1] != "commit" {
			continue // "<name> missing" or an object of another type
		}
		var size int
		if _, err := fmt.Sscan(f[2], &size); err != nil || size < 0 || size > 64<<20 {
			break
		}
		raw := make([]byte, size+1) // the object and its newline
		if _, err := io.ReadFull(rd, raw); err != nil {
			break
		}
		c, err := ParseCommitObject(raw[:size])
		if err != nil || !sources.ValidSHA(f[0]) {
			continue
		}
		out[id] = CommitInfo{SHA: f[0], Commit: c}
	}
	return out
}
