package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// runGroup runs cmd in its own process group with stdout and stderr merged
// into out, and returns once the command has exited and its group is gone.
//
// When ctx is done the whole group gets SIGTERM and, KillGrace later,
// SIGKILL. When the command exits on its own, whatever it left running in
// its group (background jobs, daemons) is ended the same way, so that no
// build leaves processes behind.
//
// The output goes through a pipe the runner owns rather than one os/exec
// creates, so Wait returns as soon as the command itself exits even when a
// grandchild still holds the pipe; the copy is then given KillGrace to drain
// once the group is dead before the pipe is closed under it.
func (r *Runner) runGroup(ctx context.Context, cmd *exec.Cmd, out io.Writer) error {
	pr, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("creating the output pipe: %w", err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var termAt atomic.Int64 // unix nanoseconds of the group's first SIGTERM
	cmd.Cancel = func() error {
		termAt.CompareAndSwap(0, time.Now().UnixNano())
		return signalGroup(cmd.Process.Pid, syscall.SIGTERM)
	}
	// If the leader ignores SIGTERM, os/exec kills it after WaitDelay; the
	// rest of the group is handled by endGroup below.
	cmd.WaitDelay = r.cfg.KillGrace

	if err := cmd.Start(); err != nil {
		pw.Close()
		pr.Close()
		return err
	}
	// Only the child holds the write end now: EOF comes when the group is gone.
	pw.Close()
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		// Copy errors are the log writer's, recorded by it (see CapWriter);
		// the pipe must keep being drained whatever happens.
		_, _ = io.Copy(out, pr)
	}()

	waitErr := cmd.Wait()
	r.endGroup(cmd.Process.Pid, &termAt)

	select {
	case <-copied:
	case <-time.After(r.cfg.KillGrace):
		// A process that left the group (setsid) still holds the pipe.
		r.log.Warn("step output still open after its process group ended; closing it",
			"pgid", cmd.Process.Pid)
	}
	pr.Close() // unblocks the copy if it is still reading
	<-copied
	return waitErr
}

// endGroup ends what is left of process group pgid: SIGTERM (unless it was
// already sent at termAt), then SIGKILL once KillGrace has passed since the
// SIGTERM, and waits a short while for the kernel to finish.
func (r *Runner) endGroup(pgid int, termAt *atomic.Int64) {
	if !groupAlive(pgid) {
		return
	}
	if termAt.CompareAndSwap(0, time.Now().UnixNano()) {
		if err := signalGroup(pgid, syscall.SIGTERM); err != nil {
			r.log.Warn("terminating process group", "pgid", pgid, "err", err)
		}
	}
	deadline := time.Unix(0, termAt.Load()).Add(r.cfg.KillGrace)
	for time.Now().Before(deadline) {
		if !groupAlive(pgid) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := signalGroup(pgid, syscall.SIGKILL); err != nil {
		r.log.Warn("killing process group", "pgid", pgid, "err", err)
	}
	for range 100 {
		if !groupAlive(pgid) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.log.Warn("process group still alive after SIGKILL", "pgid", pgid)
}

// signalGroup sends sig to every process of group pgid. A group that is
// already gone is not an error.
func signalGroup(pgid int, sig syscall.Signal) error {
	if pgid <= 1 {
		// Never signal "every process" (-1) or our own group (0).
		return fmt.Errorf("refusing to signal process group %d", pgid)
	}
	err := syscall.Kill(-pgid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// groupAlive reports whether process group pgid has a member that is not
// a zombie. Zombies count as gone: an orphan's zombie lingers until its new
// parent reaps it, which the runner cannot hurry.
func groupAlive(pgid int) bool {
	if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	live, err := liveGroupMembers(pgid)
	if err != nil {
		return true // no /proc: trust kill(2), which counts zombies
	}
	return len(live) > 0
}

// liveGroupMembers lists the processes of group pgid that are not zombies,
// read from /proc.
func liveGroupMembers(pgid int) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		state, pgrp, ok := procStat(pid)
		if ok && pgrp == pgid && state != "Z" && state != "X" {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// procStat reads the state and process group of pid from /proc/<pid>/stat.
func procStat(pid int) (state string, pgrp int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0, false
	}
	// "pid (comm) state ppid pgrp …"; comm may hold spaces and parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 3 {
		return "", 0, false
	}
	pgrp, err = strconv.Atoi(f[2])
	if err != nil {
		return "", 0, false
	}
	return f[0], pgrp, true
}
