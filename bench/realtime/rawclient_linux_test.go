//go:build linux

package main

import (
	"bytes"
	"encoding/binary"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// serverFrame is an unmasked frame as the server sends it.
func serverFrame(fin bool, op byte, p []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	b := []byte{b0}
	switch n := len(p); {
	case n <= 125:
		b = append(b, byte(n))
	case n <= 0xffff:
		b = append(b, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(b, p...)
}

func benchMsg(sent int64) []byte {
	return []byte(`{"event":"bench","channel":"private-bench-0","data":"` + strconv.FormatInt(sent, 10) + `"}`)
}

// newTestReader gives a frame reader one connection whose writes (pongs)
// can be read from the returned descriptor.
func newTestReader(t *testing.T) (*frameReader, int) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	r := &frameReader{conns: []sockConn{{fd: fds[0]}}, stop: new(atomic.Bool)}
	t.Cleanup(func() {
		if r.conns[0].fd >= 0 { // else closeConn closed it
			_ = syscall.Close(fds[0])
		}
		_ = syscall.Close(fds[1])
	})
	return r, fds[1]
}

// TestFrameReaderSplits feeds the same stream cut at every place into
// pieces of every size: a frame split across reads, several in one.
func TestFrameReaderSplits(t *testing.T) {
	const sent = int64(1_700_000_000_000_000_000)
	var stream []byte
	want := 0
	for i := range 5 {
		stream = append(stream, serverFrame(true, 0x1, benchMsg(sent+int64(i)*1000))...)
		want++
	}
	// A fragmented message with a ping between its fragments, a 16-bit
	// length and a message that is not a bench event.
	m := benchMsg(sent)
	stream = append(stream, serverFrame(false, 0x1, m[:10])...)
	stream = append(stream, serverFrame(true, 0x9, []byte("hi"))...)
	stream = append(stream, serverFrame(false, 0x0, m[10:40])...)
	stream = append(stream, serverFrame(true, 0x0, m[40:])...)
	want++
	long := append([]byte(`{"event":"bench","channel":"`+string(bytes.Repeat([]byte("x"), 300))+`","data":"`), strconv.FormatInt(sent, 10)+`"}`...)
	stream = append(stream, serverFrame(true, 0x1, long)...)
	want++
	stream = append(stream, serverFrame(true, 0x1, []byte(`{"event":"pusher_internal:subscription_count","data":"{}"}`))...)

	for size := 1; size <= len(stream); size++ {
		for first := 0; first < size && first < len(stream); first += max(1, size/7) {
			r, _ := newTestReader(t)
			c := &r.conns[0]
			chunks := [][]byte{stream[:first]}
			for rest := stream[first:]; len(rest) > 0; {
				n := min(size, len(rest))
				chunks = append(chunks, rest[:n])
				rest = rest[n:]
			}
			for _, ch := range chunks {
				if len(ch) == 0 {
					continue
				}
				// As the loops do: append to the pending bytes if any.
				if len(c.pend) > 0 {
					c.pend = append(c.pend, ch...)
					r.consume(c, c.pend, sent+5_000_000, true)
				} else {
					r.consume(c, append([]byte(nil), ch...), sent+5_000_000, false)
				}
			}
			if r.received != int64(want) || r.errors != 0 || len(c.pend) != 0 || c.fd < 0 {
				t.Fatalf("size %d first %d: received %d errors %d pending %d fd %d; want %d, 0, 0",
					size, first, r.received, r.errors, len(c.pend), c.fd, want)
			}
			if r.hist.max < int64(time.Millisecond) || r.hist.max > int64(6*time.Millisecond) {
				t.Fatalf("size %d: max latency %v", size, time.Duration(r.hist.max))
			}
		}
	}
}

// TestFrameReaderPings checks that a WebSocket ping is answered with a
// pong frame and a pusher:ping with a pusher:pong, both masked.
func TestFrameReaderPings(t *testing.T) {
	r, peer := newTestReader(t)
	c := &r.conns[0]
	in := append(serverFrame(true, 0x9, []byte("abc")), serverFrame(true, 0x1, []byte(`{"event":"pusher:ping","data":{}}`))...)
	r.consume(c, in, 0, false)
	if r.errors != 0 || r.pongs != 1 {
		t.Fatalf("errors %d pongs %d", r.errors, r.pongs)
	}
	buf := make([]byte, 256)
	n, err := syscall.Read(peer, buf)
	if err != nil {
		t.Fatal(err)
	}
	got := buf[:n]
	for _, w := range []struct {
		op byte
		p  string
	}{{0xA, "abc"}, {0x1, `{"event":"pusher:pong","data":{}}`}} {
		if len(got) < 6 || got[0] != 0x80|w.op || got[1]&0x80 == 0 || int(got[1]&0x7f) != len(w.p) {
			t.Fatalf("frame %x: want op %x, masked, length %d", got, w.op, len(w.p))
		}
		mask, p := got[2:6], append([]byte(nil), got[6:6+len(w.p)]...)
		for i := range p {
			p[i] ^= mask[i&3]
		}
		if string(p) != w.p {
			t.Fatalf("payload %q, want %q", p, w.p)
		}
		got = got[6+len(w.p):]
	}
}

// TestFrameReaderErrors checks that broken input is counted and drops the
// connection.
func TestFrameReaderErrors(t *testing.T) {
	for name, in := range map[string][]byte{
		"masked":       {0x81, 0x81, 1, 2, 3, 4, 'x'},
		"continuation": serverFrame(true, 0x0, []byte("x")),
		"close":        serverFrame(true, 0x8, []byte{0x03, 0xe8}),
		"no data":      serverFrame(true, 0x1, []byte(`{"event":"bench"}`)),
		"bad data":     serverFrame(true, 0x1, []byte(`{"event":"bench","data":"12a"}`)),
	} {
		r, _ := newTestReader(t)
		r.consume(&r.conns[0], in, 0, false)
		if r.errors != 1 || r.received != 0 {
			t.Errorf("%s: errors %d received %d, want 1, 0", name, r.errors, r.received)
		}
	}
}

func TestParseDecimal(t *testing.T) {
	for in, want := range map[string]int64{`0"`: 0, `1700000000123456789"`: 1700000000123456789} {
		if v, ok := parseDecimal([]byte(in)); !ok || v != want {
			t.Errorf("%q: %d %v", in, v, ok)
		}
	}
	for _, in := range []string{`"`, `12`, `1x"`, `-1"`, `12345678901234567890"`} {
		if _, ok := parseDecimal([]byte(in)); ok {
			t.Errorf("%q: accepted", in)
		}
	}
}
