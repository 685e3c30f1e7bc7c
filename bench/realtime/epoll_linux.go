//go:build linux

package main

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// The epoll client reads every connection from a few loops, one per
// GOMAXPROCS by default, each on a locked OS thread with its own epoll
// set (level-triggered). The connections are dialed and subscribed with
// the same code as the goroutine client (wsclient.go); then each socket is
// taken from the Go runtime (its descriptor duplicated, the net.Conn
// closed, which removes it from the runtime's netpoller) and read with
// non-blocking read(2) into the loop's buffer. A message costs one read
// system call (epoll_wait returns up to epollBatch ready sockets per
// call), one clock read and a scan of its bytes: no goroutine switch, no
// allocation, no atomic operation. The client shares the machine's cores
// with the server under test, so every microsecond it saves is one the
// server's fan-out gets.

const (
	epollBatch   = 512      // events per epoll_wait
	epollBufSize = 64 << 10 // a loop's read buffer
	maxFrame     = 1 << 20  // larger frames are a protocol error, as in wsclient.go
	epollTimeout = 100      // ms; how often an idle loop checks for the end of the run
	// epollET is EPOLLET as the uint32 of EpollEvent.Events (the syscall
	// package declares it negative).
	epollET = 1 << 31
)

// epollConn is one connection of an epoll loop.
type epollConn struct {
	fd       int    // -1 once closed
	pend     []byte // unparsed bytes: the start of a frame split across reads
	frag     []byte // payload so far of a fragmented message
	fragging bool
}

// epollLoop owns a share of the connections; its fields are only touched
// by its goroutine while it runs.
type epollLoop struct {
	epfd  int
	conns []epollConn
	buf   []byte
	stop  *atomic.Bool
	// batchWait, if positive, is slept after an epoll_wait that returned
	// fewer than epollBatch/4 events, so that the next call returns more:
	// fewer sleeps and wake-ups of this thread, which on loopback the
	// server's writes pay for, at the cost of at most batchWait of
	// latency.
	batchWait time.Duration

	hist     localHist
	received int64
	errors   int64
	pongs    int64
	waits    int64 // epoll_wait calls that returned events
	events   int64 // events they returned
}

// pongFrame is the masked text frame of pusher:pong, built once: the mask
// only has to be unpredictable to intermediaries, and there are none on
// loopback.
var pongFrame = maskedFrame(0x1, pusherPong)

func maskedFrame(op byte, p []byte) []byte {
	b := make([]byte, 0, len(p)+14)
	b = append(b, 0x80|op)
	switch n := len(p); {
	case n <= 125:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	b = append(b, mask[:]...)
	for i, x := range p {
		b = append(b, x^mask[i&3])
	}
	return b
}

// runEpollWorker is runWorker with the epoll client.
func runEpollWorker(cfg workerConfig) error {
	conns := make([]epollConn, cfg.Conns)
	for i := range conns {
		conns[i].fd = -1
	}
	closeAll := func() {
		for i := range conns {
			if conns[i].fd >= 0 {
				_ = syscall.Close(conns[i].fd)
				conns[i].fd = -1
			}
		}
	}
	if err := dialAll(cfg, conns); err != nil {
		closeAll()
		return err
	}

	nl := cfg.Loops
	if nl <= 0 {
		nl = runtime.GOMAXPROCS(0)
	}
	nl = min(nl, cfg.Conns)
	// One P more than loops: a loop blocked in epoll_wait or nanosleep
	// keeps its P in the syscall state, and with an idle P left the
	// runtime's sysmon does not hand those Ps off to other threads (and
	// back) on every wait, which costs more than the reads themselves.
	runtime.GOMAXPROCS(nl + 1)
	var stop atomic.Bool
	loops := make([]*epollLoop, nl)
	closeLoops := func() {
		for _, l := range loops {
			if l != nil {
				_ = syscall.Close(l.epfd)
			}
		}
	}
	for k := range loops {
		epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			closeLoops()
			closeAll()
			return fmt.Errorf("epoll_create1: %w", err)
		}
		loops[k] = &epollLoop{epfd: epfd, conns: make([]epollConn, 0, cfg.Conns/nl+1),
			buf: make([]byte, epollBufSize), stop: &stop, batchWait: cfg.BatchWait}
	}
	for i := range conns {
		l := loops[i%nl]
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | epollET, Fd: int32(len(l.conns))}
		if err := syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, conns[i].fd, &ev); err != nil {
			closeLoops()
			closeAll()
			return fmt.Errorf("epoll_ctl: connection %d: %w", i, err)
		}
		l.conns = append(l.conns, conns[i])
	}
	conns = nil // each loop owns its connections now

	stopProf, err := startCPUProfile(cfg.CPUProfile)
	if err != nil {
		closeLoops()
		for _, l := range loops {
			for i := range l.conns {
				_ = syscall.Close(l.conns[i].fd)
			}
		}
		return err
	}
	var wg sync.WaitGroup
	for _, l := range loops {
		wg.Go(l.run)
	}
	fmt.Println("READY")
	cpu0 := cpuTime()
	_, _ = io.Copy(io.Discard, os.Stdin) // the parent closes stdin when done
	cpu := cpuTime() - cpu0
	stopProf()
	stop.Store(true)
	wg.Wait()

	var h histogram
	var s summary
	for _, l := range loops {
		for i := range l.conns {
			if l.conns[i].fd >= 0 {
				_ = syscall.Close(l.conns[i].fd)
			}
		}
		_ = syscall.Close(l.epfd)
		l.hist.mergeInto(&h)
		s.Errors += l.errors
		s.Pongs += l.pongs
		s.Waits += l.waits
		s.Events += l.events
	}
	s.Connected, s.Received, s.CPUNS = cfg.Conns, h.n.Load(), int64(cpu)
	s.P50NS, s.P99NS, s.MaxNS = int64(h.quantile(0.50)), int64(h.quantile(0.99)), h.max.Load()
	return json.NewEncoder(os.Stdout).Encode(s)
}

// dialAll dials and subscribes every connection (32 at a time), waits for
// each subscription to succeed and takes its socket from the Go runtime
// into conns[i].
func dialAll(cfg workerConfig, conns []epollConn) error {
	idx := make(chan int)
	var dialErr atomic.Pointer[error]
	var dialers sync.WaitGroup
	for range 32 {
		dialers.Go(func() {
			for i := range idx {
				fd, pend, err := dialDetached(cfg, i)
				if err != nil {
					err = fmt.Errorf("connection %d: %w", i, err)
					dialErr.CompareAndSwap(nil, &err)
					continue
				}
				conns[i] = epollConn{fd: fd, pend: pend}
			}
		})
	}
	for i := range cfg.Conns {
		if dialErr.Load() != nil {
			break
		}
		idx <- i
	}
	close(idx)
	dialers.Wait()
	if p := dialErr.Load(); p != nil {
		return *p
	}
	return nil
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

// run reads the loop's connections until stop is set. It keeps its OS
// thread so that the blocking epoll_wait and the reads that follow it run
// on one thread, without handing the connection's work between threads.
func (l *epollLoop) run() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	now := time.Now().UnixNano()
	for i := range l.conns { // bytes read past the subscription result
		if c := &l.conns[i]; len(c.pend) > 0 {
			p := c.pend
			c.pend = nil
			l.consume(c, p, now, true)
		}
	}
	events := make([]syscall.EpollEvent, epollBatch)
	for !l.stop.Load() {
		n, err := syscall.EpollWait(l.epfd, events, epollTimeout)
		if err != nil {
			if err == syscall.EINTR {
				continue
			}
			l.errors++
			return
		}
		if n > 0 {
			l.waits++
			l.events += int64(n)
		}
		for _, ev := range events[:n] {
			l.readConn(&l.conns[ev.Fd])
		}
		if l.batchWait > 0 && n < epollBatch/4 {
			ts := syscall.NsecToTimespec(int64(l.batchWait))
			_ = syscall.Nanosleep(&ts, nil)
		}
	}
}

// readConn reads what one ready connection has. The sockets are
// edge-triggered, so that epoll_wait polls each ready socket once instead
// of once more to find it drained: a read that does not fill the buffer
// has emptied the socket's receive queue, and data arriving after it
// raises a new edge.
func (l *epollLoop) readConn(c *epollConn) {
	for c.fd >= 0 {
		buf, off := l.buf, 0
		if len(c.pend) > 0 { // continue the split frame in its own buffer
			off = len(c.pend)
			need := max(off+4096, frameLen(c.pend))
			if cap(c.pend) < need {
				c.pend = append(make([]byte, 0, need), c.pend...)
			}
			buf = c.pend[:cap(c.pend)]
		}
		n, err := rawRead(c.fd, buf[off:])
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return
		case err != nil || n == 0: // error or end of stream
			l.closeConn(c)
			return
		}
		l.consume(c, buf[:off+n], time.Now().UnixNano(), off > 0)
		if n < len(buf)-off {
			return
		}
	}
}

// consume parses the frames in data, all received at now, and keeps an
// incomplete last frame in c.pend. inPend says that data is c.pend's array.
func (l *epollLoop) consume(c *epollConn, data []byte, now int64, inPend bool) {
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
// (protocol error or close frame, counted).
func (l *epollLoop) parse(c *epollConn, data []byte, now int64) (int, bool) {
	i := 0
	for {
		p := data[i:]
		fl := frameLen(p)
		if fl == 0 {
			return i, true
		}
		if p[1]&0x80 != 0 || fl > maxFrame+10 {
			l.errors++ // masked or oversized frame from the server
			return i, false
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
				l.errors++
				return i, false
			}
			if fin {
				l.message(c, payload, now)
			} else {
				c.frag, c.fragging = append(c.frag[:0], payload...), true
			}
		case 0x0: // continuation
			if !c.fragging {
				l.errors++
				return i, false
			}
			c.frag = append(c.frag, payload...)
			if fin {
				c.fragging = false
				l.message(c, c.frag, now)
			}
		case 0x8: // close: answer it; the server ended the connection
			_ = writeAll(c.fd, maskedFrame(0x8, payload))
			l.errors++
			return i, false
		case 0x9: // ping
			if writeAll(c.fd, maskedFrame(0xA, payload)) != nil {
				l.errors++
				return i, false
			}
		case 0xA: // pong
		default:
			l.errors++
			return i, false
		}
	}
}

// message handles one data message: a bench event's latency is recorded,
// a pusher:ping answered. The checks are readEvents's.
func (l *epollLoop) message(c *epollConn, msg []byte, now int64) {
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
func (l *epollLoop) closeConn(c *epollConn) {
	_ = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, c.fd, nil)
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
