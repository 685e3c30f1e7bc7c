// Package childproc runs the benchmark binary again as a child process
// that answers JSON commands, one per line: the load tools put a hub or
// a load generator in a process of its own so that its CPU, heap and
// scheduler are measured apart.
package childproc

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Child is this binary running with -role: the parent sends it one JSON
// command per line on stdin and reads one JSON answer per line on stdout.
// It exits when its stdin closes, and the kernel kills it if the parent
// dies first.
type Child struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	mu   sync.Mutex
	role string
}

// Start starts this binary with -role role and args, and reads its first
// line, the ready answer, into ready.
func Start(ctx context.Context, role string, ready any, args ...string) (*Child, error) {
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
	c := &Child{cmd: cmd, in: in, out: bufio.NewScanner(out), role: role}
	c.out.Buffer(make([]byte, 64<<10), 16<<20)
	if err := c.read(ready); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

func (c *Child) read(v any) error {
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

// Call sends cmd and decodes the answer into reply (nil: ignored). An
// answer with an "error" field is returned as an error.
func (c *Child) Call(cmd any, reply any) error {
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

// Stop closes the child's stdin, which ends it, and waits for it (10 s
// at most, then kills it).
func (c *Child) Stop() {
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

// Serve is the child's side: it writes ready, then runs handle on every
// command line of stdin ({"op": …, …}), writing its answer (or
// {"error": …}) as one line, until stdin closes.
func Serve(ready any, handle func(op string, raw json.RawMessage) (any, error)) error {
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
