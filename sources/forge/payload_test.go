package forge

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/buildbridge/buildbridge/sources"
	"github.com/buildbridge/buildbridge/sources/forge/forgetest"
)

func TestParsePayloads(t *testing.T) {
	p := forgetest.Push{Ref: "refs/heads/main", Before: sha("a"), After: sha("b"), Message: "m\n", Author: "Ann", Email: "a@x", Pusher: "ann"}
	gh, e := ParseGitHubPush("application/json", forgetest.GitHubPush(p, "1", "").Body)
	gl, e2 := ParseGitLabPush("push", forgetest.GitLabPush(p, "1", "", "").Body)
	ge, e3 := ParseGiteaPush(forgetest.GiteaPush(p, "1", "").Body)
	if e != nil || e2 != nil || e3 != nil {
		t.Fatal(e, e2, e3)
	}
	for _, push := range []sources.Push{gh, gl, ge} {
		if len(push.Refs) != 1 {
			t.Fatalf("%s: %+v", push.Source, push)
		}
		u := push.Refs[0]
		if u.Ref != p.Ref || u.Old != p.Before || u.New != p.After || u.Commit.SHA != p.After || u.Commit.Author != "Ann" ||
			u.Commit.AuthorEmail != "a@x" || u.Commit.Message != "m" || u.Commit.Time.IsZero() || push.Pusher != "ann" || u.CompareURL == "" {
			t.Errorf("%s: %+v", push.Source, push)
		}
	}
	if gl.Refs[0].CompareURL != "https://gitlab.example.com/acme/app/-/compare/"+p.Before+"..."+p.After {
		t.Errorf("gitlab compare URL %q", gl.Refs[0].CompareURL)
	}
	for _, bad := range []string{``, `[]`, `{"ref":1}`, `{"ref":"main","before":"` + sha("a") + `","after":"` + sha("b") + `"}`,
		`{"ref":"refs/heads/x","before":"` + sha("a") + `","after":"` + sha("b")[:39] + `"}`,
		`{"ref":"refs/heads/a..b","before":"` + sha("a") + `","after":"` + sha("b") + `"}`} {
		if _, e := ParseGiteaPush([]byte(bad)); e == nil || e.Status != 400 {
			t.Errorf("ParseGiteaPush(%q) = %v", bad, e)
		}
	}
}

// FuzzParsePush feeds the three payload parsers any body: they never
// panic, and what they accept has a valid ref and object ids.
func FuzzParsePush(f *testing.F) {
	p := forgetest.Push{Ref: "refs/heads/main", After: sha("b"), Message: "m", Author: "A", Email: "a@x"}
	f.Add(forgetest.GitHubPush(p, "1", "").Body)
	f.Add(forgetest.GitLabPush(p, "1", "", "").Body)
	f.Add(forgetest.GiteaPush(p, "1", "").Body)
	f.Add([]byte(`{"ref":"refs/heads/x","before":"0","after":null,"head_commit":{"id":7}}`))
	f.Add([]byte(`payload=%7B%7D`))
	f.Fuzz(func(t *testing.T, body []byte) {
		check := func(push sources.Push, e *sources.Error) {
			if e != nil {
				if e.Status != 400 || e.Message == "" {
					t.Fatalf("error %+v", e)
				}
				return
			}
			for _, u := range push.Refs {
				if sources.CheckRef(u.Ref) != nil || !sources.ValidSHA(u.Old) || !sources.ValidSHA(u.New) {
					t.Fatalf("accepted %+v", u)
				}
			}
		}
		check(ParseGitHubPush("application/x-www-form-urlencoded", body))
		check(ParseGitLabPush("push", body))
		check(ParseGiteaPush(body))
	})
}

// FuzzDecodeJSONAgrees checks sources.DecodeJSON's fast path (go-json
// after the standard validator) against encoding/json on the three
// payload types: both accept the same bodies and decode them to the same
// values.
func FuzzDecodeJSONAgrees(f *testing.F) {
	p := forgetest.Push{Ref: "refs/heads/main", After: sha("b"), Message: "m é \u2028 \"q\"", Author: "A", Email: "a@x"}
	f.Add(forgetest.GitHubPush(p, "1", "").Body)
	f.Add(forgetest.GitLabPush(p, "1", "", "").Body)
	f.Add(forgetest.GiteaPush(p, "1", "").Body)
	for _, s := range []string{`{"ref":"a","x":tru}`, `{"ref":"a","x":"\q"}`, "{\"ref\":\"a\",\"x\":\"a\x01b\"}", `{"ref":"a","x":01}`,
		`{"ref":"a","x":[1,]}`, `{"ref":"a"} x`, `{"ref":"a","x":"\ud800"}`, "{\"ref\":\"a\xff\"}", `{"ref":"\ud83d\ude00\u00e9\ud800x"}`,
		`{"ref":"a","ref":"b"}`, `{"ref":1}`, `{"REF":"a","Deleted":true}`, `{"deleted":"true"}`, `{"commits":[{"id":"x"},null,{}]}`,
		`{"head_commit":null,"commits":{}}`, `{"pusher":{"name":null}}`, `{"total_commits_count":1e3}`, `{"user_name":"\u0000"}`,
		`{"repository":{"homepage":null}}`, ` {"ref" : "a" } `, `null`, `[]`, `"x"`, `{"commits":[{"author":{"name":"a","email":7}}]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		agree(t, body, func() any { return new(githubPush) })
		agree(t, body, func() any { return new(gitlabPush) })
		agree(t, body, func() any { return new(giteaPush) })
	})
}

func agree(t *testing.T, body []byte, newV func() any) {
	t.Helper()
	fast, std := newV(), newV()
	e := sources.DecodeJSON(body, fast)
	err := json.Unmarshal(body, std)
	if (e == nil) != (err == nil) {
		t.Fatalf("%T of %q: DecodeJSON %v, encoding/json %v", fast, body, e, err)
	}
	if e == nil && !reflect.DeepEqual(fast, std) {
		t.Fatalf("%T of %q:\nDecodeJSON    %+v\nencoding/json %+v", fast, body, fast, std)
	}
}
