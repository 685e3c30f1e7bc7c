//go:build unix

package realtime

import (
	"errors"
	"syscall"
)

// tryWrite writes b to the socket without blocking: it returns how much
// the kernel took at once (possibly all or nothing). Publishers use it to
// hand a frame to an idle connection without starting a goroutine.
func tryWrite(rc syscall.RawConn, b []byte) (int, error) {
	var n int
	var werr error
	err := rc.Write(func(fd uintptr) bool {
		for len(b) > 0 {
			m, err := syscall.Write(int(fd), b)
			if m > 0 {
				n += m
				b = b[m:]
			}
			switch {
			case errors.Is(err, syscall.EINTR):
				continue
			case errors.Is(err, syscall.EAGAIN):
				return true
			case err != nil:
				werr = err
				return true
			case m <= 0:
				return true
			}
		}
		return true // done: never wait for the socket here
	})
	if err != nil {
		return n, err
	}
	return n, werr
}

const canTryWrite = true
