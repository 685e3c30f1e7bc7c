//go:build !unix

package realtime

import "syscall"

// tryWrite is not available here: every frame goes through the queue.
func tryWrite(syscall.RawConn, []byte) (int, error) { return 0, nil }

const canTryWrite = false
