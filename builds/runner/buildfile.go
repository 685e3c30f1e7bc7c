package runner

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/buildbridge/buildbridge/builds"
)

// BuildFile is the file at the root of a repository that, when present in
// the commit being built, sets the build's steps, timeout, artifacts and
// environment.
const BuildFile = ".buildbridge.yml"

// maxBuildFileBytes bounds what the runner reads of a BuildFile.
const maxBuildFileBytes = 1 << 20

// BuildConfig is what a BuildFile sets. A zero field leaves the project's
// setting in place.
type BuildConfig struct {
	Steps     []builds.Step
	Timeout   time.Duration
	Artifacts []string
	Env       map[string]string
}

// buildFile is the YAML shape of a BuildFile.
type buildFile struct {
	Steps     []builds.Step     `yaml:"steps"`
	Timeout   string            `yaml:"timeout"`
	Artifacts []string          `yaml:"artifacts"`
	Env       map[string]string `yaml:"env"`
}

// readBuildFile reads the BuildFile at the root of dir. It returns nil and
// no error when there is none. Every error names the file and, where it can,
// the line.
func readBuildFile(dir string) (*BuildConfig, error) {
	name := filepath.Join(dir, BuildFile)
	fi, err := os.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", BuildFile, err)
	}
	// A symlink could make the runner read (and quote in errors) a file of
	// the server.
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: must be a regular file, not %s", BuildFile, fileKind(fi.Mode()))
	}
	if fi.Size() > maxBuildFileBytes {
		return nil, fmt.Errorf("%s: %d bytes is more than the limit of %d", BuildFile, fi.Size(), maxBuildFileBytes)
	}
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", BuildFile, err)
	}
	return ParseBuildFile(data)
}

// ParseBuildFile parses and checks the contents of a BuildFile. Unknown
// keys are errors. Errors read "<file>:<line>: <what>".
func ParseBuildFile(data []byte) (*BuildConfig, error) {
	var bf buildFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&bf); err != nil && !errors.Is(err, io.EOF) {
		return nil, yamlError(err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, fmt.Errorf("%s:%d: only one YAML document is allowed", BuildFile, extra.Line)
	} else if !errors.Is(err, io.EOF) {
		return nil, yamlError(err)
	}
	// The document as nodes, to name the line of a value that fails a check.
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, yamlError(err)
	}
	lines := nodeLines{root: &doc}

	cfg := &BuildConfig{Artifacts: bf.Artifacts, Env: bf.Env}
	steps, err := checkSteps(bf.Steps)
	if err != nil {
		var se *stepError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("%s:%d: %s", BuildFile, lines.item("steps", se.index), se.msg)
		}
		return nil, err
	}
	cfg.Steps = steps
	if bf.Timeout != "" {
		d, err := time.ParseDuration(bf.Timeout)
		if err == nil && d <= 0 {
			err = errors.New("must be positive")
		}
		if err != nil {
			return nil, fmt.Errorf("%s:%d: timeout %q is not a duration like 10m or 90s: %v",
				BuildFile, lines.value("timeout"), bf.Timeout, err)
		}
		cfg.Timeout = d
	}
	for i, g := range bf.Artifacts {
		if err := checkGlob(g); err != nil {
			return nil, fmt.Errorf("%s:%d: artifacts: %v", BuildFile, lines.item("artifacts", i), err)
		}
	}
	for k, v := range bf.Env {
		if err := checkEnvVar(k, v); err != nil {
			return nil, fmt.Errorf("%s:%d: env: %v", BuildFile, lines.key("env", k), err)
		}
		if strings.HasPrefix(strings.ToUpper(k), "BUILDBRIDGE") {
			return nil, fmt.Errorf("%s:%d: env: %s is reserved for the variables buildbridge sets",
				BuildFile, lines.key("env", k), k)
		}
	}
	return cfg, nil
}

// stepError is a step that fails checkSteps, by index.
type stepError struct {
	index int
	msg   string
}

func (e *stepError) Error() string { return e.msg }

// checkSteps checks steps and names the unnamed ones "step <n>". It returns
// a copy.
func checkSteps(steps []builds.Step) ([]builds.Step, error) {
	out := make([]builds.Step, len(steps))
	seen := make(map[string]bool, len(steps))
	for i, s := range steps {
		if s.Name == "" {
			s.Name = "step " + strconv.Itoa(i+1)
		}
		switch {
		case strings.TrimSpace(s.Run) == "":
			return nil, &stepError{i, fmt.Sprintf("step %q has no run command", s.Name)}
		case strings.IndexByte(s.Run, 0) >= 0:
			return nil, &stepError{i, fmt.Sprintf("step %q: run command contains a NUL byte", s.Name)}
		case strings.ContainsFunc(s.Name, isControl):
			return nil, &stepError{i, fmt.Sprintf("step name %q contains control characters", s.Name)}
		case seen[s.Name]:
			return nil, &stepError{i, fmt.Sprintf("step name %q is used twice", s.Name)}
		}
		seen[s.Name] = true
		out[i] = s
	}
	return out, nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// checkEnvVar checks one environment variable set for steps.
func checkEnvVar(k, v string) error {
	if !envName.MatchString(k) {
		return fmt.Errorf("%q is not a valid variable name", k)
	}
	if strings.IndexByte(v, 0) >= 0 {
		return fmt.Errorf("value of %s contains a NUL byte", k)
	}
	return nil
}

// checkGlob checks an artifact pattern: relative to the workspace, slash
// separated, never leaving it, each segment a valid path.Match pattern or
// "**".
func checkGlob(g string) error {
	if g == "" {
		return errors.New("empty pattern")
	}
	if strings.HasPrefix(g, "/") || filepath.IsAbs(g) {
		return fmt.Errorf("pattern %q must be relative to the workspace", g)
	}
	for seg := range strings.SplitSeq(g, "/") {
		if seg == ".." {
			return fmt.Errorf("pattern %q must not contain ..", g)
		}
		if seg == "**" {
			continue
		}
		if _, err := path.Match(seg, ""); err != nil {
			return fmt.Errorf("pattern %q: %v", g, err)
		}
	}
	return nil
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
var unknownField = regexp.MustCompile(`^field (\S+) not found in type \S+$`)

// yamlError rewrites an error of yaml.v3 as "<file>:<line>: <what>".
func yamlError(err error) error {
	var te *yaml.TypeError
	msgs := []string{err.Error()}
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	out := make([]string, 0, len(msgs))
	for _, m := range msgs {
		line := ""
		if sm := yamlLine.FindStringSubmatch(m); sm != nil {
			line, m = sm[1], sm[2]
		}
		if sm := unknownField.FindStringSubmatch(m); sm != nil {
			m = fmt.Sprintf("unknown key %q", sm[1])
		}
		m = strings.TrimPrefix(m, "yaml: ")
		if line != "" {
			out = append(out, fmt.Sprintf("%s:%s: %s", BuildFile, line, m))
		} else {
			out = append(out, fmt.Sprintf("%s: %s", BuildFile, m))
		}
	}
	return errors.New(strings.Join(out, "; "))
}

// nodeLines finds the lines of values in a parsed document, for error
// messages. Every lookup falls back to line 1.
type nodeLines struct{ root *yaml.Node }

// value returns the line of the value of top-level key k.
func (l nodeLines) value(k string) int {
	if _, v := l.lookup(k); v != nil {
		return v.Line
	}
	return 1
}

// item returns the line of item i of the sequence at top-level key k.
func (l nodeLines) item(k string, i int) int {
	if _, v := l.lookup(k); v != nil {
		if v.Kind == yaml.SequenceNode && i < len(v.Content) {
			return v.Content[i].Line
		}
		return v.Line
	}
	return 1
}

// key returns the line of key sub in the mapping at top-level key k.
func (l nodeLines) key(k, sub string) int {
	_, v := l.lookup(k)
	if v == nil {
		return 1
	}
	if v.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(v.Content); i += 2 {
			if v.Content[i].Value == sub {
				return v.Content[i].Line
			}
		}
	}
	return v.Line
}

func (l nodeLines) lookup(k string) (key, value *yaml.Node) {
	n := l.root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	if n.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == k {
			return n.Content[i], n.Content[i+1]
		}
	}
	return nil, nil
}

// fileKind names the kind of a file that is not regular.
func fileKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	case m.IsDir():
		return "a directory"
	}
	return "a special file"
}
