package githook

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Spool is a directory of requests waiting to be sent, one JSON file each,
// named so that sorting the names gives the order they were made in:
// "<20-digit sequence>-<id>.json". Files are written whole (a temporary
// file renamed into place), so a reader never sees half a request.
// Requests the hub refused for good are moved to rejected/.
type Spool struct {
	dir string
}

// OpenSpool opens (creating it, mode 0700) the spool directory.
func OpenSpool(dir string) (*Spool, error) {
	if err := os.MkdirAll(filepath.Join(dir, "rejected"), 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	return &Spool{dir: dir}, nil
}

// Dir is the spool's directory.
func (s *Spool) Dir() string { return s.dir }

// Lock takes the spool's lock (an exclusive flock on <dir>/.lock), waiting
// until ctx ends. Concurrent pushes run concurrent hooks; the lock keeps
// their requests in order. The returned function releases it.
func (s *Spool) Lock(ctx context.Context) (func(), error) {
	f, err := os.OpenFile(filepath.Join(s.dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spool lock: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("spool lock: %w", err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("spool lock: another hook holds it: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Add writes a request to the spool, after every request already there,
// and returns its file name. Call it with the lock held.
func (s *Spool) Add(id string, body []byte) (string, error) {
	if !idChars(id) || id == "" {
		return "", fmt.Errorf("spool: invalid request id %q", id)
	}
	names, err := s.List()
	if err != nil {
		return "", err
	}
	// The clock orders names; the last name keeps the order should the
	// clock step back.
	seq := time.Now().UnixNano()
	if n := len(names); n > 0 {
		if last, ok := seqOf(names[n-1]); ok && last >= seq {
			seq = last + 1
		}
	}
	name := fmt.Sprintf("%020d-%s.json", seq, id)
	tmp, err := os.CreateTemp(s.dir, ".tmp-*")
	if err != nil {
		return "", fmt.Errorf("spool: %w", err)
	}
	_, werr := tmp.Write(body)
	if werr == nil {
		werr = tmp.Sync()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), filepath.Join(s.dir, name))
	}
	if werr != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("spool: write request: %w", werr)
	}
	syncDir(s.dir)
	return name, nil
}

func seqOf(name string) (int64, bool) {
	head, _, ok := strings.Cut(name, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(head, 10, 64)
	return n, err == nil
}

// List returns the spooled requests' file names, oldest first.
func (s *Spool) List() ([]string, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	var names []string
	for _, e := range entries {
		if n := e.Name(); e.Type().IsRegular() && strings.HasSuffix(n, ".json") && !strings.HasPrefix(n, ".") {
			if _, ok := seqOf(n); ok {
				names = append(names, n)
			}
		}
	}
	slices.Sort(names)
	return names, nil
}

// Read returns a spooled request's body.
func (s *Spool) Read(name string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, filepath.Base(name)))
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	return b, nil
}

// Remove deletes a request the hub has taken.
func (s *Spool) Remove(name string) error {
	if err := os.Remove(filepath.Join(s.dir, filepath.Base(name))); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("spool: %w", err)
	}
	syncDir(s.dir)
	return nil
}

// Reject moves a request the hub refused for good to rejected/, where it
// is kept for a person to look at, and returns its new path.
func (s *Spool) Reject(name string) (string, error) {
	to := filepath.Join(s.dir, "rejected", filepath.Base(name))
	if err := os.Rename(filepath.Join(s.dir, filepath.Base(name)), to); err != nil {
		return "", fmt.Errorf("spool: %w", err)
	}
	syncDir(s.dir)
	return to, nil
}

// syncDir makes a rename or removal in dir durable; failure only weakens
// durability after a power cut, so it is not reported.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
