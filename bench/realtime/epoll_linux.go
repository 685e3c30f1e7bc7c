//go:build linux

package main

import (
	"fmt"
	"runtime"
	"syscall"
	"time"
)

// The epoll client: each loop has its own epoll set, edge-triggered, and
// reads a ready socket with non-blocking read(2) into the loop's buffer. A
// message costs one read system call, a share of an epoll_wait (which
// returns up to epollBatch ready sockets), one clock read and a scan of its
// bytes.

const (
	epollBatch   = 512      // events per epoll_wait
	epollBufSize = 64 << 10 // a loop's read buffer
	// epollET is EPOLLET as the uint32 of EpollEvent.Events (the syscall
	// package declares it negative).
	epollET = 1 << 31
)

type epollLoop struct {
	frameReader
	epfd int
	buf  []byte
	// batchWait, if positive, is slept after an epoll_wait that returned
	// fewer than smallBatch events, so that the next call returns more:
	// fewer sleeps and wake-ups of this thread, which on loopback the
	// server's writes pay for, at the cost of at most batchWait of
	// latency.
	batchWait time.Duration
}

func newEpollLoop(fr frameReader, batchWait time.Duration) (rawLoop, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	return &epollLoop{frameReader: fr, epfd: epfd, buf: make([]byte, epollBufSize), batchWait: batchWait}, nil
}

func (l *epollLoop) add(c sockConn) error {
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | epollET, Fd: int32(len(l.conns))}
	if err := syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	l.conns = append(l.conns, c)
	return nil
}

func (l *epollLoop) reader() *frameReader { return &l.frameReader }

func (l *epollLoop) close() {
	for i := range l.conns {
		if l.conns[i].fd >= 0 {
			_ = syscall.Close(l.conns[i].fd)
			l.conns[i].fd = -1
		}
	}
	_ = syscall.Close(l.epfd)
}

// run keeps its OS thread so that the blocking epoll_wait and the reads
// that follow it run on one thread, as the io_uring loop must.
func (l *epollLoop) run(started chan<- error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	started <- nil
	l.consumePending()
	events := make([]syscall.EpollEvent, epollBatch)
	for !l.stop.Load() {
		n, err := syscall.EpollWait(l.epfd, events, int(loopTimeout/time.Millisecond))
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
		if l.batchWait > 0 && n < smallBatch {
			ts := syscall.NsecToTimespec(int64(l.batchWait))
			_ = syscall.Nanosleep(&ts, nil)
		}
		l.maybeYield()
	}
}

// readConn reads what one ready connection has. The sockets are
// edge-triggered, so that epoll_wait polls each ready socket once instead
// of once more to find it drained: a read that does not fill the buffer
// has emptied the socket's receive queue, and data arriving after it
// raises a new edge.
func (l *epollLoop) readConn(c *sockConn) {
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

// runEpollWorker is runWorker with the epoll client.
func runEpollWorker(cfg workerConfig) error {
	cfg.Client = clientEpoll
	return runRawWorker(cfg, func(fr frameReader) (rawLoop, error) { return newEpollLoop(fr, cfg.BatchWait) })
}
