package runner

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
)

func TestCapWriter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		max    int64
		writes []string
		want   string
	}{
		{"under the cap", 20, []string{"hello ", "world\n"}, "hello world\n"},
		{"exactly the cap", 10, []string{"01234", "56789"}, "0123456789"},
		{"over the cap", 10, []string{"0123456789", "abcdefghij"}, "01234\n[… 10 bytes omitted …]\nfghij"},
		{"head ends a line", 8, []string{"abc\n", "1234567890", "wxyz"}, "abc\n[… 10 bytes omitted …]\nwxyz"},
		{"many small writes wrap the ring", 10, strings.Split("abcdefghijklmnopqrstuvwxyz", ""), "abcde\n[… 16 bytes omitted …]\nvwxyz"},
		{"one write larger than the ring", 6, []string{"ab", "cdefghijklmnop"}, "abc\n[… 10 bytes omitted …]\nnop"},
		{"odd cap", 7, []string{"0123456789"}, "012\n[… 3 bytes omitted …]\n6789"},
		{"no cap", 0, []string{"0123456789", "abc"}, "0123456789abc"},
		{"nothing written", 10, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			c := NewCapWriter(&b, tt.max)
			total := 0
			for _, w := range tt.writes {
				n, err := c.Write([]byte(w))
				if n != len(w) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", w, n, err)
				}
				total += n
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if b.String() != tt.want {
				t.Errorf("got %q, want %q", b.String(), tt.want)
			}
			if c.Total() != int64(total) || c.Written() != int64(b.Len()) {
				t.Errorf("Total %d Written %d, want %d %d", c.Total(), c.Written(), total, b.Len())
			}
			if _, err := c.Write([]byte("late")); err == nil {
				t.Error("Write after Close succeeded")
			}
		})
	}
}

// The head passes through at once, before Close.
func TestCapWriterHeadIsLive(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	c := NewCapWriter(&b, 10)
	c.Write([]byte("abc"))
	if b.String() != "abc" {
		t.Fatalf("after 3 bytes: %q", b.String())
	}
	c.Write([]byte("defgh"))
	if b.String() != "abcde" {
		t.Fatalf("after 8 bytes: %q", b.String())
	}
}

func TestCapWriterConcurrent(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	const max = 4096
	c := NewCapWriter(&b, max)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				fmt.Fprintf(c, "goroutine %d line %d\n", g, i)
			}
		})
	}
	wg.Wait()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	head, tail, ok := strings.Cut(out, "[… ")
	if !ok {
		t.Fatalf("no marker in %d bytes", len(out))
	}
	_, tail, _ = strings.Cut(tail, " …]\n")
	// The marker gets a newline of its own unless the head ended a line.
	if (len(head) != max/2 && len(head) != max/2+1) || len(tail) != max/2 {
		t.Errorf("head %d bytes, tail %d bytes", len(head), len(tail))
	}
	// Writes are not torn: every full line in the tail is one Fprintf.
	lines := strings.Split(strings.TrimSuffix(tail, "\n"), "\n")
	for _, l := range lines[1:] {
		var g, i int
		if _, err := fmt.Sscanf(l, "goroutine %d line %d", &g, &i); err != nil {
			t.Fatalf("torn line %q", l)
		}
	}
}

type failingWriter struct{ n int }

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("store is down")
	}
	f.n--
	return len(p), nil
}

// A failing log writer never blocks or fails the writer side; its error is
// reported by Close.
func TestCapWriterUnderlyingError(t *testing.T) {
	t.Parallel()
	c := NewCapWriter(&failingWriter{n: 1}, 100)
	for range 10 {
		if n, err := c.Write([]byte("0123456789")); n != 10 || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if c.Err() == nil {
		t.Error("Err is nil after a failed write")
	}
	if err := c.Close(); err == nil || !strings.Contains(err.Error(), "store is down") {
		t.Errorf("Close = %v", err)
	}
}

// BenchmarkCapWriterSmallLog is a typical build: a few KiB of log under
// the default 4 MiB cap. The tail ring is only allocated as bytes reach
// it, so such a build allocates nothing for it.
func BenchmarkCapWriterSmallLog(b *testing.B) {
	line := []byte("ok  \tgithub.com/example/project/pkg\t0.123s\n")
	b.ReportAllocs()
	for b.Loop() {
		c := NewCapWriter(io.Discard, 4<<20)
		for range 100 {
			c.Write(line)
		}
		c.Close()
	}
}
