package runner

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// maxSkippedNames bounds how many skipped artifacts the log names one by one.
const maxSkippedNames = 20

// collectArtifacts copies the regular files of src that globs match to
// ArtifactsDir/<build id>/, in lexical order, until MaxArtifactBytes. What
// it refuses or skips is said in the build log. The error is for the
// artifacts directory failing; a bad file in the workspace is only skipped.
func (b *build) collectArtifacts(ctx context.Context, src string, globs []string) ([]Artifact, error) {
	cfg := b.r.cfg
	b.logf("==> artifacts %s\n", strings.Join(globs, " "))
	matches, err := matchFiles(src, globs, func(rel string, err error) {
		b.logf("artifacts: cannot read %s: %v\n", rel, err)
	})
	if err != nil {
		return nil, fmt.Errorf("runner: build %d: artifacts: %w", b.spec.BuildID, err)
	}
	if len(matches) == 0 {
		b.logf("artifacts: no file matches\n")
		return nil, nil
	}
	realSrc, err := filepath.EvalSymlinks(src)
	if err != nil {
		return nil, fmt.Errorf("runner: build %d: artifacts: %w", b.spec.BuildID, err)
	}
	srcRoot, err := os.OpenRoot(realSrc)
	if err != nil {
		return nil, fmt.Errorf("runner: build %d: artifacts: %w", b.spec.BuildID, err)
	}
	defer srcRoot.Close()

	// A build re-run after a crash starts its artifacts afresh.
	dstDir := filepath.Join(cfg.ArtifactsDir, strconv.FormatInt(b.spec.BuildID, 10))
	if err := removeAll(dstDir); err != nil {
		return nil, fmt.Errorf("runner: build %d: artifacts: %w", b.spec.BuildID, err)
	}
	if err := os.MkdirAll(dstDir, 0o750); err != nil {
		return nil, fmt.Errorf("runner: build %d: artifacts: %w", b.spec.BuildID, err)
	}
	dstRoot, err := os.OpenRoot(dstDir)
	if err != nil {
		return nil, fmt.Errorf("runner: build %d: artifacts: %w", b.spec.BuildID, err)
	}
	defer dstRoot.Close()

	var (
		arts    []Artifact
		total   int64
		skipped []string
	)
	for _, rel := range matches {
		if ctx.Err() != nil {
			b.logf("artifacts: canceled\n")
			break
		}
		if skipped != nil {
			skipped = append(skipped, rel)
			continue
		}
		f, size, why := openArtifact(srcRoot, realSrc, filepath.Join(src, filepath.FromSlash(rel)))
		if why != "" {
			b.logf("artifacts: %s refused: %s\n", rel, why)
			continue
		}
		if total+size > cfg.MaxArtifactBytes {
			f.Close()
			skipped = append(skipped, fmt.Sprintf("%s (%d bytes)", rel, size))
			continue
		}
		a, err := copyArtifact(dstRoot, rel, f, size)
		f.Close()
		if err != nil {
			return arts, fmt.Errorf("runner: build %d: artifact %s: %w", b.spec.BuildID, rel, err)
		}
		total += a.Size
		arts = append(arts, a)
	}
	if len(skipped) > 0 {
		names := strings.Join(skipped[:min(len(skipped), maxSkippedNames)], ", ")
		if len(skipped) > maxSkippedNames {
			names += fmt.Sprintf(" and %d more", len(skipped)-maxSkippedNames)
		}
		b.logf("artifacts: limit of %d bytes reached, skipped: %s\n", cfg.MaxArtifactBytes, names)
	}
	b.logf("artifacts: kept %d files, %d bytes\n", len(arts), total)
	return arts, nil
}

// openArtifact opens the file at name for copying if, with every symlink
// resolved, it is a regular file inside the workspace realSrc. Otherwise it
// says why not. Opening goes through root, which refuses any escape even if
// the tree changed after the check.
func openArtifact(root *os.Root, realSrc, name string) (f *os.File, size int64, why string) {
	real, err := filepath.EvalSymlinks(name)
	if err != nil {
		return nil, 0, err.Error()
	}
	rel, err := filepath.Rel(realSrc, real)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || filepath.IsAbs(rel) {
		return nil, 0, "it points outside the workspace"
	}
	fi, err := root.Lstat(rel)
	if err != nil {
		return nil, 0, err.Error()
	}
	if !fi.Mode().IsRegular() {
		return nil, 0, "not a regular file"
	}
	// O_NONBLOCK: should it have become a FIFO since, opening must not hang.
	f, err = root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, 0, err.Error()
	}
	fi, err = f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = errors.New("not a regular file")
	}
	if err != nil {
		f.Close()
		return nil, 0, err.Error()
	}
	return f, fi.Size(), ""
}

// copyArtifact copies at most size bytes of f to rel under dst.
func copyArtifact(dst *os.Root, rel string, f *os.File, size int64) (Artifact, error) {
	if dir := path.Dir(rel); dir != "." {
		if err := dst.MkdirAll(filepath.FromSlash(dir), 0o750); err != nil {
			return Artifact{}, err
		}
	}
	out, err := dst.OpenFile(filepath.FromSlash(rel), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return Artifact{}, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), io.LimitReader(f, size))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Artifact{}, err
	}
	return Artifact{Path: rel, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// matchFiles walks dir (not following symlinks, skipping the top .git) and
// returns, slash-separated and in lexical order, every entry that is not a
// directory and that a glob matches, itself or through a directory it is
// in. onErr hears about parts of the tree it cannot read.
func matchFiles(dir string, globs []string, onErr func(rel string, err error)) ([]string, error) {
	pats := make([][]string, len(globs))
	for i, g := range globs {
		if err := checkGlob(g); err != nil {
			return nil, err
		}
		pats[i] = strings.Split(path.Clean(g), "/")
	}
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		rel, rerr := filepath.Rel(dir, p)
		if rerr != nil {
			return rerr
		}
		rel = filepath.ToSlash(rel)
		if err != nil {
			if p == dir {
				return err
			}
			onErr(rel, err)
			return nil
		}
		if d.IsDir() {
			if rel == ".git" {
				return filepath.SkipDir
			}
			return nil
		}
		segs := strings.Split(rel, "/")
		for _, pat := range pats {
			for n := 1; n <= len(segs); n++ {
				if matchSegments(pat, segs[:n]) {
					out = append(out, rel)
					return nil
				}
			}
		}
		return nil
	})
	return out, err
}

// matchSegments matches a path against a pattern, both split on "/": "**"
// matches any number of segments (none included), every other pattern
// segment one segment as path.Match does.
func matchSegments(pat, segs []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			for len(pat) > 0 && pat[0] == "**" {
				pat = pat[1:]
			}
			if len(pat) == 0 {
				return true
			}
			for i := range len(segs) + 1 {
				if matchSegments(pat, segs[i:]) {
					return true
				}
			}
			return false
		}
		if len(segs) == 0 {
			return false
		}
		if ok, _ := path.Match(pat[0], segs[0]); !ok {
			return false
		}
		pat, segs = pat[1:], segs[1:]
	}
	return len(segs) == 0
}
