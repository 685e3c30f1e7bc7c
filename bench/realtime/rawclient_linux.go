//go:build linux

package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// The raw clients (-client epoll, -client uring) read every connection
// from a few loops, one per GOMAXPROCS by default, each on a locked OS
// thread. The connections are dialed and subscribed with the same code as
// the goroutine client (wsclient.go); then each socket is taken from the
// Go runtime (its descriptor duplicated, the net.Conn closed, which
// removes it from the runtime's netpoller) and handed to a loop. Frames
// are parsed from the bytes as they come (a frame may be split across
// reads, several may come in one): no goroutine per connection, no
// allocation and no atomic operation per message. The client shares the
// machine's cores with the server under test, so every microsecond it
// saves is one the server's fan-out gets.

const (
	maxFrame = 1 << 20 // larger frames are a protocol error, as in wsclient.go
	// loopTimeout bounds a loop's wait. It is under the 10 ms after which
	// the runtime's sysmon takes the P of a thread in a system call (and
	// then polls every 20 µs for a while, which costs more than it saves).
	loopTimeout = 5 * time.Millisecond
	// yieldEvery is how often a loop yields its P. A goroutine that has
	// not been rescheduled for 10 ms is preempted by sysmon, which on a
	// locked thread means handing the P to another thread and back, and
	// sends sysmon into polling every 20 µs; yielding before that costs
	// the same handoff once, and sysmon stays asleep.
	yieldEvery = 8 * time.Millisecond
	// smallBatch: a wait that returned fewer events than this is followed
	// by the batch wait (-client-batch-wait).
	smallBatch = 128
)

// sockConn is one connection of a loop.
type sockConn struct {
	fd       int    // -1 once closed
	pend     []byte // unparsed bytes: the start of a frame split across reads
	frag     []byte // payload so far of a fragmented message
	fragging bool
}

// frameReader is what a loop of either kind records and how it handles
// the bytes of its connections; only the loop's goroutine touches it while
// it runs.
type frameReader struct {
	conns []sockConn
	stop  *atomic.Bool

	hist     localHist
	received int64
	errors   int64
	pongs    int64
	waits    int64 // waits (epoll_wait, io_uring_enter) that returned events
	events   int64 // events they returned

	lastYield int64 // unix nanos
}

// maybeYield yields the P if the loop has not for yieldEvery.
func (l *frameReader) maybeYield() {
	if now := nanotime(); now-l.lastYield >= int64(yieldEvery) {
		runtime.Gosched()
		l.lastYield = now
	}
}

// nanotime is a monotonic clock reading.
func nanotime() int64 { return int64(time.Since(processStart)) }

var processStart = time.Now()

// rawLoop is a reader loop of one kind.
type rawLoop interface {
	// add gives the loop a connection, before run.
	add(c sockConn) error
	// run reads the connections until stop is set; it reports on started
	// once it is ready to, or why it cannot.
	run(started chan<- error)
	// reader is the loop's frame reader, for the summary after run.
	reader() *frameReader
	// close releases the loop's resources and its connections, after run.
	close()
}

// runRawWorker is runWorker with a raw client: newLoop makes one loop.
func runRawWorker(cfg workerConfig, newLoop func(fr frameReader) (rawLoop, error)) error {
	conns := make([]sockConn, cfg.Conns)
	for i := range conns {
		conns[i].fd = -1
	}
	if err := dialAll(cfg, conns); err != nil {
		for _, c := range conns {
			if c.fd >= 0 {
				_ = syscall.Close(c.fd)
			}
		}
		return err
	}

	nl := cfg.Loops
	if nl <= 0 {
		nl = runtime.GOMAXPROCS(0)
	}
	nl = min(nl, cfg.Conns)
	// One P more than loops: a loop blocked in its wait keeps its P in the
	// system call, and with an idle P left the runtime's sysmon does not
	// hand those Ps off to other threads (and back) on every wait.
	runtime.GOMAXPROCS(nl + 1)
	var stop atomic.Bool
	var loops []rawLoop
	closeLoops := func() {
		for _, l := range loops {
			l.close()
		}
	}
	for range nl {
		l, err := newLoop(frameReader{conns: make([]sockConn, 0, cfg.Conns/nl+1), stop: &stop})
		if err != nil {
			closeLoops()
			return err
		}
		loops = append(loops, l)
	}
	for i := range conns {
		if err := loops[i%nl].add(conns[i]); err != nil {
			for _, c := range conns[i:] {
				_ = syscall.Close(c.fd)
			}
			closeLoops()
			return fmt.Errorf("connection %d: %w", i, err)
		}
	}
	conns = nil // each loop owns its connections now

	var wg sync.WaitGroup
	started := make(chan error, nl)
	for _, l := range loops {
		wg.Go(func() { l.run(started) })
	}
	var err error
	for range nl {
		if e := <-started; e != nil && err == nil {
			err = e
		}
	}
	var cpu time.Duration
	if err == nil {
		cpu, err = measureUntilDone(cfg.CPUProfile)
	}
	if err != nil {
		stop.Store(true)
		wg.Wait()
		closeLoops()
		return err
	}
	stop.Store(true)
	wg.Wait()

	var h histogram
	var s summary
	for _, l := range loops {
		r := l.reader()
		r.hist.mergeInto(&h)
		s.Errors += r.errors
		s.Pongs += r.pongs
		s.Waits += r.waits
		s.Events += r.events
	}
	closeLoops()
	s.Client, s.Connected, s.Received, s.CPUNS = cfg.Client, cfg.Conns, h.n.Load(), int64(cpu)
	s.P50NS, s.P99NS, s.MaxNS = int64(h.quantile(0.50)), int64(h.quantile(0.99)), h.max.Load()
	return json.NewEncoder(os.Stdout).Encode(s)
}

// consumePending parses the bytes that were read past each subscription
// result, before the loop's first wait.
func (l *frameReader) consumePending() {
	now := time.Now().UnixNano()
	for i := range l.conns {
		if c := &l.conns[i]; len(c.pend) > 0 {
			p := c.pend
			c.pend = nil
			l.consume(c, p, now, true)
		}
	}
}

// pongFrame is the masked text frame of pusher:pong, built once: the mask
// only has to be unpredictable to intermediaries, and there are none on
// loopback.
var pongFrame = maskedFrame(0x1, pusherPong)

// dialAll dials and subscribes every connection, waits for each
// subscription to succeed and takes its socket from the Go runtime into
// conns[i].
func dialAll(cfg workerConfig, conns []sockConn) error {
	return dialEach(cfg.Conns, func(i int) error {
		fd, pend, err := dialDetached(cfg, i)
		if err != nil {
			return err
		}
		conns[i] = sockConn{fd: fd, pend: pend}
		return nil
	})
}

// dialDetached dials and subscribes connection i, awaits the subscription
// result and returns a non-blocking descriptor of its socket that the Go
// runtime no longer polls, with the bytes already read past that result.
func dialDetached(cfg workerConfig, i int) (int, []byte, error) {
	ws, err := dialAndSubscribe(cfg, i)
	if err != nil {
		return -1, nil, err
	}
	defer ws.Close()
	_ = ws.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	msg, err := ws.readMessage()
	if err != nil {
		return -1, nil, fmt.Errorf("before subscribing: %w", err)
	}
	if !bytes.Contains(msg, subOK) {
		return -1, nil, fmt.Errorf("subscription failed: %s", msg)
	}
	var pend []byte
	if n := ws.br.Buffered(); n > 0 {
		b, _ := ws.br.Peek(n)
		pend = append(pend, b...)
	}
	tc, ok := ws.nc.(syscall.Conn)
	if !ok {
		return -1, nil, fmt.Errorf("%T has no descriptor", ws.nc)
	}
	sc, err := tc.SyscallConn()
	if err != nil {
		return -1, nil, fmt.Errorf("raw connection: %w", err)
	}
	fd := -1
	var dupErr error
	if err := sc.Control(func(s uintptr) { fd, dupErr = dupCloexec(int(s)) }); err != nil {
		return -1, nil, fmt.Errorf("raw connection: %w", err)
	}
	if dupErr != nil {
		return -1, nil, fmt.Errorf("dup: %w", dupErr)
	}
	// O_NONBLOCK belongs to the open file description, which the runtime
	// already made non-blocking; set it anyway rather than rely on that.
	if err := syscall.SetNonblock(fd, true); err != nil {
		_ = syscall.Close(fd)
		return -1, nil, fmt.Errorf("set non-blocking: %w", err)
	}
	// The deferred ws.Close removes the original descriptor from the
	// runtime's netpoller and closes it; the socket lives on in fd.
	return fd, pend, nil
}

func dupCloexec(fd int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 0)
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// consume parses the frames in data, all received at now, and keeps an
// incomplete last frame in c.pend. inPend says that data is c.pend's array.
func (l *frameReader) consume(c *sockConn, data []byte, now int64, inPend bool) {
	k, ok := l.parse(c, data, now)
	if !ok {
		l.closeConn(c)
		return
	}
	rest := data[k:]
	switch {
	case len(rest) == 0:
		c.pend = c.pend[:0]
	case inPend:
		c.pend = data[:copy(data, rest)]
	default:
		c.pend = append(c.pend[:0], rest...)
	}
}

// frameLen is the length of the frame starting p, header included, or 0
// while its header is incomplete.
func frameLen(p []byte) int {
	if len(p) < 2 {
		return 0
	}
	switch n := int(p[1] & 0x7f); n {
	case 126:
		if len(p) < 4 {
			return 0
		}
		return 4 + int(binary.BigEndian.Uint16(p[2:]))
	case 127:
		if len(p) < 10 {
			return 0
		}
		return 10 + int(min(binary.BigEndian.Uint64(p[2:]), maxFrame+1))
	default:
		return 2 + n
	}
}

// parse handles the complete frames at the start of data and returns how
// many bytes they took; ok is false when the connection must be dropped
// (protocol error or close frame; closeConn counts it).
func (l *frameReader) parse(c *sockConn, data []byte, now int64) (int, bool) {
	i := 0
	for {
		p := data[i:]
		fl := frameLen(p)
		if fl == 0 {
			return i, true
		}
		if p[1]&0x80 != 0 || fl > maxFrame+10 {
			return i, false // masked or oversized frame from the server
		}
		if len(p) < fl {
			return i, true
		}
		hl := 2
		switch p[1] & 0x7f {
		case 126:
			hl = 4
		case 127:
			hl = 10
		}
		fin, op, payload := p[0]&0x80 != 0, p[0]&0x0f, p[hl:fl]
		i += fl
		switch op {
		case 0x1, 0x2: // text, binary
			if c.fragging {
				return i, false
			}
			if fin {
				l.message(c, payload, now)
			} else {
				c.frag, c.fragging = append(c.frag[:0], payload...), true
			}
		case 0x0: // continuation
			if !c.fragging {
				return i, false
			}
			c.frag = append(c.frag, payload...)
			if fin {
				c.fragging = false
				l.message(c, c.frag, now)
			}
		case 0x8: // close: answer it; the server ended the connection
			_ = writeAll(c.fd, maskedFrame(0x8, payload))
			return i, false
		case 0x9: // ping
			if writeAll(c.fd, maskedFrame(0xA, payload)) != nil {
				return i, false
			}
		case 0xA: // pong
		default:
			return i, false
		}
	}
}

// message handles one data message: a bench event's latency is recorded,
// a pusher:ping answered. The checks are readEvents's.
func (l *frameReader) message(c *sockConn, msg []byte, now int64) {
	if !bytes.Contains(msg, benchEvent) {
		if bytes.Contains(msg, pusherPing) {
			if writeAll(c.fd, pongFrame) != nil {
				l.errors++
			} else {
				l.pongs++
			}
		}
		return
	}
	i := bytes.Index(msg, dataKey)
	if i < 0 {
		l.errors++
		return
	}
	sent, ok := parseDecimal(msg[i+len(dataKey):])
	if !ok {
		l.errors++
		return
	}
	l.received++
	l.hist.record(time.Duration(now - sent))
}

// parseDecimal parses the non-negative decimal integer that p starts with,
// up to the closing quote of the JSON string.
func parseDecimal(p []byte) (int64, bool) {
	var v int64
	for i, b := range p {
		switch {
		case b >= '0' && b <= '9' && i < 19:
			v = v*10 + int64(b-'0')
		case b == '"' && i > 0:
			return v, true
		default:
			return 0, false
		}
	}
	return 0, false
}

// closeConn drops a connection; outside the end of the run that is an
// error (the server closed it or the stream broke).
func (l *frameReader) closeConn(c *sockConn) {
	// shutdown ends a pending io_uring receive, which holds its own
	// reference to the socket; closing the descriptor removes it from
	// an epoll set.
	_ = syscall.Shutdown(c.fd, syscall.SHUT_RDWR)
	_ = syscall.Close(c.fd)
	c.fd = -1
	if !l.stop.Load() {
		l.errors++
	}
}

// rawRead is read(2) on a non-blocking descriptor. RawSyscall skips the
// scheduler's entersyscall/exitsyscall, which a call that never blocks
// does not need.
func rawRead(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, errors.New("empty read buffer")
	}
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// writeAll writes a small frame on a non-blocking descriptor. The frames
// are control answers of a few bytes to an otherwise silent client, so a
// full send buffer (EAGAIN) is reported rather than waited for.
func writeAll(fd int, p []byte) error {
	for len(p) > 0 {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return e
		}
		p = p[n:]
	}
	return nil
}
