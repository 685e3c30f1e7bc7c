package runner

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/builds"
)

func TestParseBuildFile(t *testing.T) {
	t.Parallel()
	cfg, err := ParseBuildFile([]byte(`# a comment
steps:
  - name: build
    run: go build ./...
  - run: go test ./...
timeout: 10m
artifacts:
  - bin/*
  - "**/*.xml"
env:
  GOFLAGS: -mod=readonly
`))
	if err != nil {
		t.Fatal(err)
	}
	want := &BuildConfig{
		Steps:     []builds.Step{{Name: "build", Run: "go build ./..."}, {Name: "step 2", Run: "go test ./..."}},
		Timeout:   10 * time.Minute,
		Artifacts: []string{"bin/*", "**/*.xml"},
		Env:       map[string]string{"GOFLAGS": "-mod=readonly"},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got %+v\nwant %+v", cfg, want)
	}
}

func TestParseBuildFileErrors(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, yml, want string }{
		{"unknown key in step", "steps:\n  - name: a\n    run: x\n    image: alpine\n", `.buildbridge.yml:4: unknown key "image"`},
		{"wrong type", "steps: hello\n", ".buildbridge.yml:1: cannot unmarshal"},
		{"timeout without unit", "timeout: 600\n", `.buildbridge.yml:1: timeout "600" is not a duration`},
		{"negative timeout", "\n\ntimeout: -5m\n", `.buildbridge.yml:3: timeout "-5m"`},
		{"step without run", "steps:\n  - run: a\n  - name: b\n", `.buildbridge.yml:3: step "b" has no run command`},
		{"duplicate step names", "steps:\n  - {name: a, run: x}\n  - {name: a, run: y}\n", `.buildbridge.yml:3: step name "a" is used twice`},
		{"absolute glob", "artifacts:\n  - /etc/*\n", `.buildbridge.yml:2: artifacts: pattern "/etc/*" must be relative`},
		{"bad glob", "artifacts:\n  - ok\n  - 'a/[x'\n", `.buildbridge.yml:3: artifacts: pattern "a/[x": syntax error in pattern`},
		{"bad env name", "env:\n  A: b\n  1X: y\n", `.buildbridge.yml:3: env: "1X" is not a valid variable name`},
		{"two documents", "steps: []\n---\nsteps: []\n", ".buildbridge.yml:2: only one YAML document"},
		{"syntax", "steps:\n\t- run: x\n", ".buildbridge.yml:2: found character that cannot start any token"},
		{"duplicate key", "timeout: 1m\ntimeout: 2m\n", `.buildbridge.yml:2: mapping key "timeout" already defined at line 1`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseBuildFile([]byte(tt.yml))
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("got %v, want prefix %q", err, tt.want)
			}
		})
	}
}

func TestParseBuildFileEmpty(t *testing.T) {
	t.Parallel()
	for _, yml := range []string{"", "# only a comment\n", "---\n"} {
		cfg, err := ParseBuildFile([]byte(yml))
		if err != nil || len(cfg.Steps) != 0 || cfg.Timeout != 0 {
			t.Errorf("ParseBuildFile(%q) = %+v, %v", yml, cfg, err)
		}
	}
}

func TestMatchSegments(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pat, path string
		want      bool
	}{
		{"*.txt", "a.txt", true},
		{"*.txt", "d/a.txt", false},
		{"d/*.txt", "d/a.txt", true},
		{"**/*.txt", "a.txt", true},
		{"**/*.txt", "d/e/f/a.txt", true},
		{"**/*.txt", "d/e/f/a.log", false},
		{"d/**", "d/e/f", true},
		{"d/**/f", "d/f", true},
		{"d/**/f", "d/x/y/f", true},
		{"d/**/f", "e/x/f", false},
		{"**/x/**/y", "a/x/b/c/y", true},
		{"a/?/c", "a/b/c", true},
		{"a/[bc]/d", "a/c/d", true},
		{"a/b", "a/b/c", false},
	}
	for _, tt := range tests {
		if got := matchSegments(strings.Split(tt.pat, "/"), strings.Split(tt.path, "/")); got != tt.want {
			t.Errorf("match(%q, %q) = %v, want %v", tt.pat, tt.path, got, tt.want)
		}
	}
}
