//go:build linux

package main

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// The io_uring client: each loop has its own ring, on which every one of
// its sockets has a multishot receive armed once, taking buffers from a
// ring of provided buffers. Completions are reaped from shared memory; a
// loop enters the kernel once per batch (io_uring_enter, which with
// IORING_SETUP_DEFER_TASKRUN also runs the receives that became possible
// since the last one), not once per message as read(2) does: on this
// kind of machine a system call's entry and exit cost as much as the
// receive itself. The raw ABI is used (no dependency): the structures
// below are those of <linux/io_uring.h>.

const (
	sysIOUringSetup    = 425
	sysIOUringEnter    = 426
	sysIOUringRegister = 427

	uringSetupCQSize       = 1 << 3
	uringSetupSubmitAll    = 1 << 7
	uringSetupCoopTaskrun  = 1 << 8
	uringSetupSingleIssuer = 1 << 12
	uringSetupDeferTaskrun = 1 << 13

	uringFeatSingleMmap = 1 << 0
	uringFeatNoDrop     = 1 << 1
	uringFeatExtArg     = 1 << 8
	uringFeatMinTimeout = 1 << 15
	// uringFeatNeeded are the features the loops cannot do without.
	uringFeatNeeded = uringFeatSingleMmap | uringFeatNoDrop | uringFeatExtArg

	uringOffSQRing = 0
	uringOffSQEs   = 0x10000000

	uringEnterGetEvents = 1 << 0
	uringEnterExtArg    = 1 << 3

	uringOpRecv          = 27
	uringSQEBufferSelect = 1 << 5
	uringRecvMultishot   = 1 << 1
	uringCQEFBuffer      = 1 << 0
	uringCQEFMore        = 1 << 1
	uringCQEBufferShift  = 16

	uringRegisterPbufRing = 22

	uringSQEntries = 1024
	uringCQEntries = 16384
	uringBufGroup  = 0
	uringBufCount  = 4096 // provided buffers per loop (a power of two)
	uringBufSize   = 1024 // bytes each: a message is ~100 bytes, and a longer read continues in the next buffer
	uringMinBatch  = 256  // completions an io_uring_enter waits for, at most batchWait
)

type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  struct {
		head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
		resv2                                                           uint64
	}
	cqOff struct {
		head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
		resv2                                                           uint64
	}
}

type uringSQE struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	opFlags     uint32
	userData    uint64
	bufGroup    uint16
	personality uint16
	spliceFdIn  int32
	addr3       uint64
	pad         uint64
}

type uringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

type uringBufReg struct {
	ringAddr    uint64
	ringEntries uint32
	bgid        uint16
	pad         uint16
	resv        [3]uint64
}

type uringGetEventsArg struct {
	sigmask     uint64
	sigmaskSz   uint32
	minWaitUsec uint32 // was pad before Linux 6.12 (IORING_FEAT_MIN_TIMEOUT)
	ts          uint64
}

type uringLoop struct {
	frameReader
	batchWait time.Duration

	fd       int
	ringMem  []byte // SQ and CQ rings (IORING_FEAT_SINGLE_MMAP)
	sqesMem  []byte
	sqHead   *uint32
	sqTail   *uint32
	sqMask   uint32
	sqArray  []uint32
	sqes     []uringSQE
	cqHead   *uint32
	cqTail   *uint32
	cqMask   uint32
	cqes     []uringCQE
	queued   uint32 // SQEs written since the last io_uring_enter
	minWait  bool   // the kernel has IORING_FEAT_MIN_TIMEOUT
	bufRing  []byte // io_uring_buf entries; the tail overlays entry 0's resv
	bufTail  *uint16
	bufs     []byte // uringBufCount buffers of uringBufSize
	bufAdded uint16 // buffers put in bufRing since the tail was published
	rearm    []uint32
}

func newUringLoop(fr frameReader, batchWait time.Duration) (rawLoop, error) {
	return &uringLoop{frameReader: fr, batchWait: batchWait, fd: -1}, nil
}

func (l *uringLoop) add(c sockConn) error {
	// io_uring arms its own poll when a socket has no data; a blocking
	// descriptor is its usual case (the pong writes are a few bytes to
	// an empty send buffer).
	if err := syscall.SetNonblock(c.fd, false); err != nil {
		return fmt.Errorf("set blocking: %w", err)
	}
	l.conns = append(l.conns, c)
	return nil
}

func (l *uringLoop) reader() *frameReader { return &l.frameReader }

// close closes the ring first: that cancels the receives, which hold
// references to the sockets. The receive buffers stay mapped: the ring is
// torn down asynchronously, and the worker exits right after.
func (l *uringLoop) close() {
	if l.fd >= 0 {
		_ = syscall.Close(l.fd)
		l.fd = -1
	}
	for _, m := range [][]byte{l.ringMem, l.sqesMem} {
		if m != nil {
			_ = syscall.Munmap(m)
		}
	}
	l.ringMem, l.sqesMem = nil, nil
	for i := range l.conns {
		if l.conns[i].fd >= 0 {
			_ = syscall.Close(l.conns[i].fd)
			l.conns[i].fd = -1
		}
	}
}

// setup creates the ring on the calling thread: with
// IORING_SETUP_SINGLE_ISSUER and DEFER_TASKRUN only that thread may
// submit and reap.
func (l *uringLoop) setup() error {
	p := uringParams{cqEntries: uringCQEntries, flags: uringSetupCQSize | uringSetupSubmitAll |
		uringSetupCoopTaskrun | uringSetupSingleIssuer | uringSetupDeferTaskrun}
	fd, _, e := syscall.RawSyscall(sysIOUringSetup, uringSQEntries, uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return fmt.Errorf("io_uring_setup: %w", e)
	}
	l.fd = int(fd)
	if p.features&uringFeatNeeded != uringFeatNeeded {
		return fmt.Errorf("io_uring: kernel lacks features (have %#x, need %#x)", p.features, uringFeatNeeded)
	}
	l.minWait = p.features&uringFeatMinTimeout != 0
	ringSize := max(int(p.sqOff.array)+int(p.sqEntries)*4, int(p.cqOff.cqes)+int(p.cqEntries)*int(unsafe.Sizeof(uringCQE{})))
	var err error
	if l.ringMem, err = syscall.Mmap(l.fd, uringOffSQRing, ringSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED|syscall.MAP_POPULATE); err != nil {
		return fmt.Errorf("io_uring: mmap rings: %w", err)
	}
	sqeSize := int(unsafe.Sizeof(uringSQE{}))
	if l.sqesMem, err = syscall.Mmap(l.fd, uringOffSQEs, int(p.sqEntries)*sqeSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED|syscall.MAP_POPULATE); err != nil {
		return fmt.Errorf("io_uring: mmap SQEs: %w", err)
	}
	r := l.ringMem
	u32 := func(off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&r[off])) }
	l.sqHead, l.sqTail, l.sqMask = u32(p.sqOff.head), u32(p.sqOff.tail), *u32(p.sqOff.ringMask)
	l.sqArray = unsafe.Slice(u32(p.sqOff.array), p.sqEntries)
	l.sqes = unsafe.Slice((*uringSQE)(unsafe.Pointer(&l.sqesMem[0])), p.sqEntries)
	l.cqHead, l.cqTail, l.cqMask = u32(p.cqOff.head), u32(p.cqOff.tail), *u32(p.cqOff.ringMask)
	l.cqes = unsafe.Slice((*uringCQE)(unsafe.Pointer(&r[p.cqOff.cqes])), p.cqEntries)

	// The provided buffers: a ring of io_uring_buf entries (page aligned,
	// hence mmap) and the buffers themselves, outside the Go heap.
	if l.bufRing, err = syscall.Mmap(-1, 0, uringBufCount*16, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE|syscall.MAP_POPULATE); err != nil {
		return fmt.Errorf("io_uring: mmap buffer ring: %w", err)
	}
	if l.bufs, err = syscall.Mmap(-1, 0, uringBufCount*uringBufSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE|syscall.MAP_POPULATE); err != nil {
		return fmt.Errorf("io_uring: mmap buffers: %w", err)
	}
	l.bufTail = (*uint16)(unsafe.Pointer(&l.bufRing[14]))
	reg := uringBufReg{ringAddr: uint64(uintptr(unsafe.Pointer(&l.bufRing[0]))), ringEntries: uringBufCount, bgid: uringBufGroup}
	if _, _, e := syscall.RawSyscall6(sysIOUringRegister, uintptr(l.fd), uringRegisterPbufRing, uintptr(unsafe.Pointer(&reg)), 1, 0, 0); e != 0 {
		return fmt.Errorf("io_uring: register buffer ring: %w", e)
	}
	for bid := range uringBufCount {
		l.provide(uint16(bid))
	}
	l.publishBufs()

	for i := range l.conns {
		if err := l.armRecv(uint32(i)); err != nil {
			return err
		}
	}
	if _, err := l.enter(0, 0); err != nil {
		return err
	}
	return nil
}

// provide puts buffer bid back in the buffer ring; publishBufs makes the
// buffers so put visible to the kernel.
func (l *uringLoop) provide(bid uint16) {
	i := int((*l.bufTail+l.bufAdded)&(uringBufCount-1)) * 16
	e := l.bufRing[i : i+16]
	*(*uint64)(unsafe.Pointer(&e[0])) = uint64(uintptr(unsafe.Pointer(&l.bufs[int(bid)*uringBufSize])))
	*(*uint32)(unsafe.Pointer(&e[8])) = uringBufSize
	*(*uint16)(unsafe.Pointer(&e[12])) = bid
	l.bufAdded++
}

func (l *uringLoop) publishBufs() {
	if l.bufAdded == 0 {
		return
	}
	// The tail is the upper half of a 32-bit word whose lower half is
	// entry 0's bid; Go has no 16-bit atomic store, and the atomic store
	// of the word orders the entries' writes before it (the kernel reads
	// the entries after it sees the tail).
	w := (*uint32)(unsafe.Pointer(&l.bufRing[12]))
	v := atomic.LoadUint32(w)
	atomic.StoreUint32(w, v&0xffff|uint32(uint16(v>>16)+l.bufAdded)<<16)
	l.bufAdded = 0
}

// armRecv queues a multishot receive on connection i, submitting the
// queue first if it is full.
func (l *uringLoop) armRecv(i uint32) error {
	if l.queued == uint32(len(l.sqes)) {
		if _, err := l.enter(0, 0); err != nil {
			return err
		}
	}
	tail := *l.sqTail
	idx := tail & l.sqMask
	l.sqes[idx] = uringSQE{opcode: uringOpRecv, flags: uringSQEBufferSelect, ioprio: uringRecvMultishot,
		fd: int32(l.conns[i].fd), userData: uint64(i), bufGroup: uringBufGroup}
	l.sqArray[idx] = idx
	atomic.StoreUint32(l.sqTail, tail+1) // after the entry, as for the buffer ring
	l.queued++
	return nil
}

// enter submits the queued SQEs and, with wait, waits for completions: up
// to uringMinBatch of them for at most batchWait (IORING_FEAT_MIN_TIMEOUT),
// then for one until loopTimeout.
func (l *uringLoop) enter(minComplete uint32, wait time.Duration) (int, error) {
	var flags, argp, argsz uintptr
	var arg uringGetEventsArg
	ts := syscall.NsecToTimespec(int64(wait))
	if wait > 0 {
		flags = uringEnterGetEvents | uringEnterExtArg
		argp, argsz = uintptr(unsafe.Pointer(&arg)), unsafe.Sizeof(arg)
		arg.ts = uint64(uintptr(unsafe.Pointer(&ts)))
		if l.minWait && l.batchWait > 0 {
			arg.minWaitUsec = uint32(l.batchWait / time.Microsecond)
		} else {
			minComplete = 1
		}
	}
	for {
		// The kernel returns the number submitted, or an error if none was.
		n, _, e := syscall.Syscall6(sysIOUringEnter, uintptr(l.fd), uintptr(l.queued), uintptr(minComplete), flags, argp, argsz)
		runtime.KeepAlive(&ts)
		runtime.KeepAlive(&arg)
		switch e {
		case 0:
			if uint32(n) != l.queued {
				return 0, fmt.Errorf("io_uring_enter: %d of %d submissions consumed", n, l.queued)
			}
			l.queued = 0
			return int(n), nil
		case syscall.EINTR:
			continue
		case syscall.ETIME, syscall.EBUSY, syscall.EAGAIN:
			// Timed out, or the completion queue is full: reap first.
			if l.queued > 0 && wait == 0 {
				return 0, fmt.Errorf("io_uring_enter: %w", e)
			}
			return 0, nil
		default:
			return 0, fmt.Errorf("io_uring_enter: %w", e)
		}
	}
}

func (l *uringLoop) run(started chan<- error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := l.setup(); err != nil {
		started <- err
		return
	}
	started <- nil
	l.consumePending()
	for !l.stop.Load() {
		if _, err := l.enter(uringMinBatch, loopTimeout); err != nil {
			l.errors++
			return
		}
		n := l.reap()
		if n > 0 {
			l.waits++
			l.events += int64(n)
		}
		if !l.minWait && l.batchWait > 0 && n < smallBatch {
			ts := syscall.NsecToTimespec(int64(l.batchWait))
			_ = syscall.Nanosleep(&ts, nil)
		}
		l.maybeYield()
	}
}

// reap handles the completions in the queue and returns how many.
func (l *uringLoop) reap() int {
	head, tail := *l.cqHead, atomic.LoadUint32(l.cqTail)
	if head == tail {
		return 0
	}
	now := time.Now().UnixNano()
	l.rearm = l.rearm[:0]
	for h := head; h != tail; h++ {
		cqe := l.cqes[h&l.cqMask]
		i := uint32(cqe.userData)
		c := &l.conns[i]
		if cqe.flags&uringCQEFBuffer != 0 {
			bid := uint16(cqe.flags >> uringCQEBufferShift)
			if cqe.res > 0 && c.fd >= 0 {
				data := l.bufs[int(bid)*uringBufSize:][:cqe.res]
				if len(c.pend) > 0 {
					c.pend = append(c.pend, data...)
					l.consume(c, c.pend, now, true)
				} else {
					l.consume(c, data, now, false)
				}
			}
			l.provide(bid)
		}
		switch {
		case c.fd < 0: // closed by us; this is its last completion or a late one
		case cqe.res == 0: // end of stream
			l.closeConn(c)
		case cqe.res == -int32(syscall.ENOBUFS): // buffers ran out: the receive stopped
			l.rearm = append(l.rearm, i)
		case cqe.res < 0:
			l.closeConn(c)
		case cqe.flags&uringCQEFMore == 0: // the receive ended; arm it again
			l.rearm = append(l.rearm, i)
		}
	}
	atomic.StoreUint32(l.cqHead, tail)
	l.publishBufs()
	for _, i := range l.rearm {
		if l.conns[i].fd >= 0 && l.armRecv(i) != nil {
			l.errors++
		}
	}
	return int(tail - head)
}

// runUringWorker is runWorker with the io_uring client, or with the epoll
// client if this kernel's io_uring lacks what it needs (Linux 6.1) or is
// disabled (kernel.io_uring_disabled, seccomp).
func runUringWorker(cfg workerConfig) error {
	if err := probeUring(); err != nil {
		fmt.Fprintf(os.Stderr, "worker: io_uring unavailable (%v); using the epoll client\n", err)
		cfg.Client = clientEpoll
		return runEpollWorker(cfg)
	}
	return runRawWorker(cfg, func(fr frameReader) (rawLoop, error) { return newUringLoop(fr, cfg.BatchWait) })
}

// probeUring creates and closes a small ring with the loops' flags.
func probeUring() error {
	p := uringParams{flags: uringSetupSingleIssuer | uringSetupDeferTaskrun}
	fd, _, e := syscall.RawSyscall(sysIOUringSetup, 8, uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return fmt.Errorf("io_uring_setup: %w", e)
	}
	_ = syscall.Close(int(fd))
	if p.features&uringFeatNeeded != uringFeatNeeded {
		return fmt.Errorf("io_uring features %#x, need %#x", p.features, uringFeatNeeded)
	}
	return nil
}
