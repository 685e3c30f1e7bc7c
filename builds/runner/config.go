package runner

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"
)

// Defaults of Config.
const (
	DefaultMaxLogBytes      = 4 << 20
	DefaultMaxArtifactBytes = 100 << 20
	DefaultTimeout          = 30 * time.Minute
	DefaultKillGrace        = 5 * time.Second
	DefaultGitPath          = "git"
)

// standardPath is the PATH of a step when neither Config.Path nor the
// server's own PATH says otherwise.
const standardPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Config configures a Runner. The zero value of every optional field means
// its default.
type Config struct {
	// WorkDir is where a fresh workspace is made for every build. Required.
	WorkDir string
	// ArtifactsDir is where kept artifacts are copied, under
	// ArtifactsDir/<build id>/. Required.
	ArtifactsDir string
	// MaxLogBytes caps the log of one build: the first half passes through
	// live, the last half is kept and written at the end (default 4 MiB).
	MaxLogBytes int64
	// MaxArtifactBytes caps the artifacts kept per build (default 100 MiB).
	MaxArtifactBytes int64
	// DefaultTimeout bounds a build whose project and .buildbridge.yml name
	// no timeout (default 30 minutes).
	DefaultTimeout time.Duration
	// KillGrace is how long a step's process group has between SIGTERM and
	// SIGKILL when it is canceled or times out (default 5 s).
	KillGrace time.Duration
	// GitPath is the git executable (default "git", looked up in PATH).
	GitPath string
	// Path is the PATH steps see (default: the server's PATH, or a
	// standard one when that is empty). Nothing else of the server's
	// environment reaches a step.
	Path string
	// KeepFailedWorkspaces keeps the workspace of a build that did not pass,
	// for debugging; it is logged and never removed by the runner.
	KeepFailedWorkspaces bool
	// Logger receives the runner's own logs (default slog.Default()).
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.MaxLogBytes == 0 {
		c.MaxLogBytes = DefaultMaxLogBytes
	}
	if c.MaxArtifactBytes == 0 {
		c.MaxArtifactBytes = DefaultMaxArtifactBytes
	}
	if c.DefaultTimeout == 0 {
		c.DefaultTimeout = DefaultTimeout
	}
	if c.KillGrace == 0 {
		c.KillGrace = DefaultKillGrace
	}
	if c.GitPath == "" {
		c.GitPath = DefaultGitPath
	}
	if c.Path == "" {
		c.Path = os.Getenv("PATH")
	}
	if c.Path == "" {
		c.Path = standardPath
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports every field of c that is not usable, each error naming
// its field.
func (c *Config) Validate() error {
	var errs []error
	if c.WorkDir == "" {
		errs = append(errs, errors.New("runner: WorkDir is required"))
	}
	if c.ArtifactsDir == "" {
		errs = append(errs, errors.New("runner: ArtifactsDir is required"))
	}
	if c.MaxLogBytes < 0 {
		errs = append(errs, fmt.Errorf("runner: MaxLogBytes must not be negative, got %d", c.MaxLogBytes))
	}
	if c.MaxArtifactBytes < 0 {
		errs = append(errs, fmt.Errorf("runner: MaxArtifactBytes must not be negative, got %d", c.MaxArtifactBytes))
	}
	if c.DefaultTimeout < 0 {
		errs = append(errs, fmt.Errorf("runner: DefaultTimeout must not be negative, got %s", c.DefaultTimeout))
	}
	if c.KillGrace < 0 {
		errs = append(errs, fmt.Errorf("runner: KillGrace must not be negative, got %s", c.KillGrace))
	}
	return errors.Join(errs...)
}
