package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// runNodeConns starts one `buildbridge serve` node on PostgreSQL (a
// private schema) and the local NATS, and counts what a node holds: its
// PostgreSQL and NATS connections at idle and under concurrent requests,
// and what it costs while idle (its CPU, its PostgreSQL backends' CPU,
// its memory). 100 nodes hold 100 times as much.
func runNodeConns(ctx context.Context, o options) error {
	if _, err := os.Stat(o.bin); err != nil {
		return fmt.Errorf("-bin %s: %w (build it: go build -o bin/buildbridge ./cmd/buildbridge)", o.bin, err)
	}
	fmt.Printf("\n== node: one `%s serve` on PostgreSQL and NATS: connections and idle cost\n", o.bin)
	var raw [4]byte
	rand.Read(raw[:])
	tag := hex.EncodeToString(raw[:])
	sc, err := privateSchema(ctx, o.pgDSN, "bbscale_node_", "bbscale-node-"+tag)
	if err != nil {
		return err
	}
	defer sc.drop()
	dir, err := os.MkdirTemp("", "bench-scale-node-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	ln.Close()
	logf, err := os.Create(filepath.Join(dir, "serve.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(o.bin, "serve", "--addr", addr, "--data", dir, "--log-level", "warn")
	cmd.Env = append(os.Environ(), "BUILDBRIDGE_CONFIG=", "BUILDBRIDGE_POSTGRES="+sc.dsn, "BUILDBRIDGE_NATS_URL="+o.natsURL,
		"BUILDBRIDGE_NATS_NAMESPACE=bbscale"+tag)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	pid := cmd.Process.Pid
	base := "http://" + addr
	ready := false
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(100 * time.Millisecond) {
		if r, err := http.Get(base + "/readyz"); err == nil {
			r.Body.Close()
			if ready = r.StatusCode == 200; ready {
				break
			}
		}
	}
	if !ready {
		return fmt.Errorf("the node was not ready within 60s; its log: %s", tail(logf.Name()))
	}
	time.Sleep(3 * time.Second) // start-up work done
	count := func() (pg, nats, other int, pgPorts map[int]bool) {
		pgPorts = map[int]bool{}
		for _, c := range tcpConns(pid) {
			switch c.remote {
			case 5432:
				pg++
				pgPorts[c.local] = true
			case 4222:
				nats++
			default:
				other++
			}
		}
		return
	}
	backendCPU := func(ports map[int]bool) time.Duration {
		rows, err := sc.admin.QueryContext(ctx, `SELECT pid, client_port FROM pg_stat_activity WHERE client_port IS NOT NULL`)
		if err != nil {
			return 0
		}
		defer rows.Close()
		var total time.Duration
		for rows.Next() {
			var p, port int
			if rows.Scan(&p, &port) == nil && ports[port] {
				if c, err := procCPU(p); err == nil {
					total += c
				}
			}
		}
		return total
	}
	pg0, nats0, _, ports := count()
	cpu0, _ := procCPU(pid)
	bcpu0 := backendCPU(ports)
	idle := 20 * time.Second
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(idle):
	}
	cpu1, _ := procCPU(pid)
	_, _, _, ports1 := count()
	for p := range ports {
		if !ports1[p] {
			delete(ports, p)
		}
	}
	bcpu1 := backendCPU(ports)
	rss := procRSS(pid)
	fmt.Printf("idle node: %d PostgreSQL connections, %d NATS connections; over %v it used %.2f%% of a core, its PostgreSQL backends %.2f%%; RSS %.0f MiB\n",
		pg0, nats0, idle, 100*(cpu1-cpu0).Seconds()/idle.Seconds(), 100*(bcpu1-bcpu0).Seconds()/idle.Seconds(), mib(rss))
	// Concurrent requests that each use the store: the pool grows to its
	// bound.
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for range 20 {
				if r, err := http.Get(base + "/readyz"); err == nil {
					r.Body.Close()
				}
			}
		})
	}
	wg.Wait()
	pg1, nats1, _, _ := count()
	fmt.Printf("after 1,280 /readyz from 64 clients at once (each pings the store): %d PostgreSQL connections, %d NATS connections\n", pg1, nats1)
	return nil
}

type tcpConn struct{ local, remote int }

// tcpConns lists the established TCP connections of pid, from /proc.
func tcpConns(pid int) []tcpConn {
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var out []tcpConn
	for _, f := range []string{"tcp", "tcp6"} {
		file, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(file)
		for sc.Scan() {
			fl := strings.Fields(sc.Text())
			if len(fl) < 10 || fl[3] != "01" || !inodes[fl[9]] {
				continue
			}
			out = append(out, tcpConn{local: hexPort(fl[1]), remote: hexPort(fl[2])})
		}
		file.Close()
	}
	return out
}

func hexPort(addr string) int {
	i := strings.LastIndexByte(addr, ':')
	n, _ := strconv.ParseUint(addr[i+1:], 16, 32)
	return int(n)
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
