package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// child is this binary running with -role: the parent sends it one JSON
// command per line on stdin and reads one JSON answer per line on stdout.
// It exits when its stdin closes, and the kernel kills it if the parent
// dies first.
type child struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	mu   sync.Mutex
	role string
}

// startChild starts a child and reads its first line, the ready answer,
// into ready.
func startChild(ctx context.Context, role string, ready any, args ...string) (*child, error) {
	cmd := exec.CommandContext(ctx, os.Args[0], append([]string{"-role", role}, args...)...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", role, err)
	}
	c := &child{cmd: cmd, in: in, out: bufio.NewScanner(out), role: role}
	c.out.Buffer(make([]byte, 64<<10), 16<<20)
	if err := c.read(ready); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

func (c *child) read(v any) error {
	if !c.out.Scan() {
		err := c.out.Err()
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("%s child: %w", c.role, err)
	}
	if err := json.Unmarshal(c.out.Bytes(), v); err != nil {
		return fmt.Errorf("%s child answered %q: %w", c.role, c.out.Text(), err)
	}
	return nil
}

// call sends cmd and decodes the answer into reply. An answer with an
// "error" field is returned as an error.
func (c *child) call(cmd any, reply any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, err := json.Marshal(cmd)
	if err != nil {
		return err
	}
	if _, err := c.in.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("%s child: %w", c.role, err)
	}
	var raw json.RawMessage
	if err := c.read(&raw); err != nil {
		return err
	}
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(raw, &e) == nil && e.Error != "" {
		return fmt.Errorf("%s child: %s", c.role, e.Error)
	}
	if reply == nil {
		return nil
	}
	return json.Unmarshal(raw, reply)
}

// stop closes the child's stdin, which ends it, and waits for it.
func (c *child) stop() {
	c.in.Close()
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}

// serveCommands runs handle on every command line of stdin, writing its
// answer (or {"error":…}) as one line, until stdin closes.
func serveCommands(ready any, handle func(op string, raw json.RawMessage) (any, error)) error {
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(ready); err != nil {
		return err
	}
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var head struct {
			Op string `json:"op"`
		}
		line := append(json.RawMessage(nil), sc.Bytes()...)
		if err := json.Unmarshal(line, &head); err != nil {
			enc.Encode(map[string]string{"error": err.Error()})
			continue
		}
		ans, err := handle(head.Op, line)
		if err != nil {
			enc.Encode(map[string]string{"error": err.Error()})
			continue
		}
		if err := enc.Encode(ans); err != nil {
			return err
		}
	}
	return sc.Err()
}

func runChild(role string) error {
	switch role {
	case "node":
		return runNode()
	case "publish":
		return runPublisher()
	case "runners":
		return runRunnerSim()
	}
	return fmt.Errorf("unknown role %q", role)
}

// selfCPU is the CPU time (user + system) this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// userHZ is the unit of the CPU times in /proc/<pid>/stat on Linux.
const userHZ = 100

// procCPU is the CPU time of another process, from /proc/<pid>/stat, in
// 10 ms ticks.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces: fields count from after its ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("unexpected /proc stat format")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, errors.New("unexpected /proc stat format")
	}
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / userHZ, nil
}

// findProcess returns the pid of the one process whose command name is
// name, or 0 when there is none or several.
func findProcess(name string) int {
	matches, _ := filepath.Glob("/proc/[0-9]*/comm")
	pid := 0
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err != nil || strings.TrimSpace(string(b)) != name {
			continue
		}
		if pid != 0 {
			return 0
		}
		pid, _ = strconv.Atoi(filepath.Base(filepath.Dir(m)))
	}
	return pid
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// raiseNoFile lifts the open-file limit to its hard limit: the
// subscribers and runners each hold a connection.
func raiseNoFile() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// heapAfterGC is the live heap and goroutine stacks after a few GCs.
func heapAfterGC() uint64 {
	var m runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return m.HeapAlloc + m.StackInuse
}

// procRSS is the resident set of process pid, from /proc/<pid>/status.
func procRSS(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				n, _ := strconv.ParseUint(f[0], 10, 64)
				return n << 10
			}
		}
	}
	return 0
}

// percentile returns the p-th percentile (0..1) of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p * float64(len(sorted)-1))
	return sorted[i]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
