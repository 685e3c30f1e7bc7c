package runner

import (
	"fmt"
	"io"
	"sync"
)

// CapWriter caps what reaches an underlying writer: the first half of the
// cap passes through at once, and of everything after it only the last half
// of the cap is kept, in a ring buffer, to be written by Close after a line
// saying how much was left out. A build log keeps its beginning live and its
// end, where failures usually are, whatever the build prints.
//
// CapWriter is safe for concurrent use. Write fails only after Close: an
// error of the underlying writer is kept, reported by Err and Close, and
// later bytes are counted but dropped, so that a step writing into it is
// never blocked by a broken log store.
type CapWriter struct {
	mu      sync.Mutex
	w       io.Writer
	head    int64  // bytes that pass through at once
	ring    []byte // grows up to size as the tail comes: most logs never reach the cap
	size    int    // the most bytes ring keeps
	start   int    // index of the oldest byte in ring once it is full
	full    bool   // ring has wrapped
	total   int64  // bytes given to Write
	written int64  // bytes written to w
	lastNL  bool   // the last byte written to w was a newline
	err     error
	closed  bool
}

// NewCapWriter returns a CapWriter that lets at most about max bytes of
// what is written to it reach w. A max of zero or less means no cap.
func NewCapWriter(w io.Writer, max int64) *CapWriter {
	c := &CapWriter{w: w, head: -1, lastNL: true}
	if max > 0 {
		c.head = max / 2
		c.size = int(max - c.head)
	}
	return c
}

// Write passes p through while under the head half of the cap and keeps
// the rest in the tail ring. Until Close it always reports len(p) written.
func (c *CapWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(p)
	if c.closed {
		return 0, io.ErrClosedPipe
	}
	passed := c.total
	c.total += int64(n)
	if c.head < 0 {
		c.pass(p)
		return n, nil
	}
	if passed < c.head {
		k := min(int64(len(p)), c.head-passed)
		c.pass(p[:k])
		p = p[k:]
	}
	c.keep(p)
	return n, nil
}

// pass writes p to w unless w has failed before.
func (c *CapWriter) pass(p []byte) {
	if len(p) == 0 || c.err != nil {
		return
	}
	k, err := c.w.Write(p)
	c.written += int64(k)
	if k > 0 {
		c.lastNL = p[k-1] == '\n'
	}
	if err == nil && k < len(p) {
		err = io.ErrShortWrite
	}
	c.err = err
}

// keep appends p to the tail ring, dropping its oldest bytes when full.
func (c *CapWriter) keep(p []byte) {
	size := c.size
	if size == 0 || len(p) == 0 {
		return
	}
	if len(p) >= size {
		c.ring = append(c.ring[:0], p[len(p)-size:]...)
		c.start, c.full = 0, true
		return
	}
	if !c.full {
		room := size - len(c.ring)
		if len(p) <= room {
			c.ring = append(c.ring, p...)
			return
		}
		c.ring = append(c.ring, p[:room]...)
		p = p[room:]
		c.full = true
		c.start = 0
	}
	for len(p) > 0 {
		k := copy(c.ring[c.start:], p)
		p = p[k:]
		c.start = (c.start + k) % size
	}
}

// Close writes the kept tail to w, after a line `[… N bytes omitted …]`
// when bytes were left out, and returns the first error of w if any.
// Later writes fail; Close itself may be called more than once.
func (c *CapWriter) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return c.err
	}
	c.closed = true
	tail := c.tail()
	if omitted := c.total - c.head - int64(len(tail)); c.head >= 0 && omitted > 0 {
		marker := fmt.Sprintf("[… %d bytes omitted …]\n", omitted)
		if !c.lastNL {
			marker = "\n" + marker
		}
		c.pass([]byte(marker))
	}
	c.pass(tail)
	c.ring = nil
	return c.err
}

// tail returns the kept bytes in order.
func (c *CapWriter) tail() []byte {
	if !c.full {
		return c.ring
	}
	out := make([]byte, 0, len(c.ring))
	out = append(out, c.ring[c.start:]...)
	return append(out, c.ring[:c.start]...)
}

// Err returns the first error of the underlying writer, if any.
func (c *CapWriter) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Total returns how many bytes were given to Write.
func (c *CapWriter) Total() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// Written returns how many bytes reached the underlying writer so far.
func (c *CapWriter) Written() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.written
}
