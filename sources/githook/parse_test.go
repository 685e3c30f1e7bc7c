package githook

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/buildbridge/buildbridge/sources"
)

const (
	zero = "0000000000000000000000000000000000000000"
	shaA = "1111111111111111111111111111111111111111"
	shaB = "2222222222222222222222222222222222222222"
)

func TestParseUpdates(t *testing.T) {
	in := shaA + " " + shaB + " refs/heads/main\n" +
		"\n" +
		zero + " " + shaB + " refs/heads/new\r\n" +
		shaA + " " + zero + " refs/heads/gone\n" +
		"garbage\n" +
		shaA + " " + shaB + " refs/heads/a b\n" +
		strings.Repeat("3", 64) + " " + strings.Repeat("4", 64) + " refs/tags/v1"
	got, err := ParseUpdates(strings.NewReader(in))
	if len(got) != 4 || got[0].Ref != "refs/heads/main" || got[1].Old != zero || got[2].New != zero || got[3].Ref != "refs/tags/v1" {
		t.Fatalf("updates %+v", got)
	}
	if err == nil || !strings.Contains(err.Error(), "line 5") || !strings.Contains(err.Error(), "line 6") {
		t.Fatalf("error %v", err)
	}
	for _, bad := range []string{
		"", shaA + " " + shaB, shaA + "  " + shaB + " refs/heads/x", strings.Repeat("A", 40) + " " + shaB + " refs/heads/x",
		shaA + " " + strings.Repeat("4", 64) + " refs/heads/x", zero + " " + zero + " refs/heads/x", shaA + " " + shaB + " main",
		shaA + " " + shaB + " refs/heads/x\x00", shaA + " " + shaB + " " + strings.Repeat("r", MaxLineBytes),
	} {
		if _, err := ParseLine(bad); err == nil {
			t.Errorf("ParseLine(%q) accepted", bad)
		}
	}
	if _, err := ParseUpdates(strings.NewReader(strings.Repeat("x", MaxLineBytes+10) + "\n" + shaA + " " + shaB + " refs/heads/x\n")); err == nil {
		t.Error("overlong line accepted")
	}
}

// FuzzParseLine checks the post-receive line parser: no panic on any
// input, and an accepted line is exactly old, new and a valid ref joined
// by single spaces.
func FuzzParseLine(f *testing.F) {
	f.Add(shaA + " " + shaB + " refs/heads/main")
	f.Add(zero + " " + shaB + " refs/tags/v1.0")
	f.Add(shaA + " " + zero + " refs/heads/feature/x")
	f.Add(strings.Repeat("a", 64) + " " + strings.Repeat("b", 64) + " refs/heads/sha256")
	f.Add("x y z")
	f.Add(shaA + " " + shaB + " refs/heads/..")
	f.Add("")
	f.Fuzz(func(t *testing.T, line string) {
		u, err := ParseLine(line)
		if err != nil {
			if u != (Update{}) {
				t.Fatalf("%q: %+v with error %v", line, u, err)
			}
			return
		}
		if u.String() != line {
			t.Fatalf("%q parsed as %+v", line, u)
		}
		if !sources.ValidSHA(u.Old) || !sources.ValidSHA(u.New) || len(u.Old) != len(u.New) || sources.CheckRef(u.Ref) != nil {
			t.Fatalf("%q: invalid update accepted: %+v", line, u)
		}
	})
}

func TestParseCommitObject(t *testing.T) {
	raw := "tree " + shaA + "\nparent " + shaB + "\n" +
		"author Ann Author <ann@example.com> 1700000000 +0130\n" +
		"committer C <c@x> 1700000001 +0000\n" +
		"gpgsig -----BEGIN PGP SIGNATURE-----\n \n iQEz\n -----END PGP SIGNATURE-----\n" +
		"\nSubject line\n\nBody [skip ci]\n"
	c, err := ParseCommitObject([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if c.Author != "Ann Author" || c.AuthorEmail != "ann@example.com" || c.Message != "Subject line\n\nBody [skip ci]" ||
		!c.Time.Equal(time.Unix(1700000000, 0)) {
		t.Fatalf("%+v", c)
	}
	if _, off := c.Time.Zone(); off != 5400 {
		t.Fatalf("zone offset %d", off)
	}
	c, err = ParseCommitObject([]byte("tree x\nauthor \xffname <e> 1 +0000\n\n\xfe msg"))
	if err != nil || !utf8.ValidString(c.Author) || !utf8.ValidString(c.Message) {
		t.Fatalf("invalid UTF-8: %+v %v", c, err)
	}
	for _, bad := range []string{"", "tree x\n\nmsg", "author no email 1 +0000\n\n"} {
		if _, err := ParseCommitObject([]byte(bad)); err == nil {
			t.Errorf("ParseCommitObject(%q) accepted", bad)
		}
	}
}

// FuzzParseCommitObject checks the commit object reader never panics and
// returns valid UTF-8.
func FuzzParseCommitObject(f *testing.F) {
	f.Add([]byte("tree " + shaA + "\nauthor A <a@x> 1700000000 -0700\ncommitter A <a@x> 1 +0000\n\nmsg\n"))
	f.Add([]byte("author <> x y\n\n"))
	f.Add([]byte("author a > b < c\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := ParseCommitObject(raw)
		if err != nil {
			return
		}
		if !utf8.ValidString(c.Author) || !utf8.ValidString(c.AuthorEmail) || !utf8.ValidString(c.Message) {
			t.Fatalf("invalid UTF-8 from %q: %+v", raw, c)
		}
	})
}

func TestRequestValidate(t *testing.T) {
	good := func() Request {
		return Request{Project: "app", ID: "0123456789abcdef", Refs: []Ref{{Old: zero, New: shaB, Ref: "refs/heads/main",
			Timestamp: "2024-01-02T03:04:05+01:00"}}}
	}
	r := good()
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	p := r.Push(9)
	if p.Source != sources.SourceGit || p.DeliveryID != r.ID || p.TriggeredBy != 9 || p.Refs[0].Commit.Time.IsZero() {
		t.Fatalf("push %+v", p)
	}
	for name, mod := range map[string]func(*Request){
		"project":   func(r *Request) { r.Project = "" },
		"id":        func(r *Request) { r.ID = "short" },
		"id chars":  func(r *Request) { r.ID = "0123456789/abcdef" },
		"refs":      func(r *Request) { r.Refs = nil },
		"ref":       func(r *Request) { r.Refs[0].Ref = "main" },
		"old":       func(r *Request) { r.Refs[0].Old = "x" },
		"new":       func(r *Request) { r.Refs[0].New = strings.Repeat("a", 64) },
		"commit":    func(r *Request) { r.Refs[0].Commit = "abc" },
		"timestamp": func(r *Request) { r.Refs[0].Timestamp = "yesterday" },
		"author":    func(r *Request) { r.Refs[0].Author = strings.Repeat("a", 300) },
		"too many":  func(r *Request) { r.Refs = make([]Ref, MaxRefsPerRequest+1) },
	} {
		r := good()
		mod(&r)
		if err := r.Validate(); err == nil {
			t.Errorf("%s: accepted %+v", name, r)
		}
	}
}
