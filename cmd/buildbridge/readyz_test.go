package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/buildbridge/buildbridge/store/storetest"
)

const natsServerBin = "/usr/sbin/nats-server"

// natsProc is a nats-server with JetStream that the test starts, kills
// and starts again on the same port and store directory.
type natsProc struct {
	addr, dir string
	cmd       *exec.Cmd
	done      chan struct{}
}

func startNATS(t *testing.T, addr, dir string) *natsProc {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	p := &natsProc{addr: addr, dir: dir, done: make(chan struct{})}
	p.cmd = exec.Command(natsServerBin, "-a", host, "-p", port, "-js", "-sd", dir)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(p.kill)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server on %s not up: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *natsProc) kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// tcpProxy forwards a loopback port to a target; Close drops the listener
// and every forwarded connection, as a network cut would, and Reopen
// listens on the same port again.
type tcpProxy struct {
	addr, target string
	mu           sync.Mutex
	ln           net.Listener
	conns        map[net.Conn]struct{}
	wg           sync.WaitGroup
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	p := &tcpProxy{target: target, conns: map[net.Conn]struct{}{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(func() { p.Close(); p.wg.Wait() })
	return p
}

func (p *tcpProxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			if !p.track(c, up) {
				return
			}
			p.wg.Add(2)
			go func() { defer p.wg.Done(); io.Copy(up, c); up.Close() }()
			go func() { defer p.wg.Done(); io.Copy(c, up); c.Close() }()
		}
	}()
}

func (p *tcpProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln == nil {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

// Close stops accepting and cuts every forwarded connection.
func (p *tcpProxy) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// Reopen listens on the same address again.
func (p *tcpProxy) Reopen(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		t.Fatalf("reopen proxy on %s: %v", p.addr, err)
	}
	p.serve(ln)
}

type readiness struct {
	code int
	body string
}

func readyz(addr string) readiness {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/readyz")
	if err != nil {
		return readiness{body: err.Error()}
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return readiness{code: resp.StatusCode, body: string(raw)}
}

// waitReady polls /readyz until cond holds and returns how long it took.
func waitReady(t *testing.T, srv *serverProc, what string, within time.Duration, cond func(readiness) bool) time.Duration {
	t.Helper()
	start := time.Now()
	var last readiness
	for time.Since(start) < within {
		select {
		case <-srv.done:
			t.Fatalf("%s: the hub exited:\n%s", what, srv.log())
		default:
		}
		last = readyz(srv.addr)
		if cond(last) {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s; last /readyz: %d %s", what, within, last.code, last.body)
	return 0
}

func unavailable(name string) func(readiness) bool {
	return func(r readiness) bool {
		if r.code != http.StatusServiceUnavailable {
			return false
		}
		var body struct{ Status, Failed string }
		return json.Unmarshal([]byte(r.body), &body) == nil && body.Status == "unavailable" && strings.Contains(body.Failed, name)
	}
}

func ready(r readiness) bool { return r.code == http.StatusOK }

// A hub on PostgreSQL and an external NATS reports not ready, naming
// what it lost, when NATS dies or PostgreSQL becomes unreachable, and is
// ready again by itself when they are back; it is never restarted.
func TestReadyzFollowsPostgresAndNATS(t *testing.T) {
	if _, err := os.Stat(natsServerBin); err != nil {
		t.Skipf("%s is absent: %v", natsServerBin, err)
	}
	dsn := storetest.PostgresDSN(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	pg := newTCPProxy(t, u.Host)
	u.Host = pg.addr
	natsAddr := freeAddr(t)
	nats := startNATS(t, natsAddr, t.TempDir())
	var raw [4]byte
	rand.Read(raw[:])
	ns := "readyz" + hex.EncodeToString(raw[:])

	data := t.TempDir()
	token := strings.TrimSpace(runCLI(t, "user", "add", "ann", "--data", data, "--postgres", dsn))
	logs := newEventLog()
	srv := startServer(t, data, freeAddr(t), logs,
		"--postgres", u.String(), "--nats-url", "nats://"+natsAddr, "--nats-namespace", ns)
	if r := readyz(srv.addr); r.code != http.StatusOK {
		t.Fatalf("/readyz at start: %d %s", r.code, r.body)
	}

	// NATS dies, then comes back on the same port with its store.
	nats.kill()
	took := waitReady(t, srv, "not ready without NATS", 5*time.Second, unavailable("nats"))
	t.Logf("nats-server killed: /readyz 503 after %s: %s", took, readyz(srv.addr).body)
	nats = startNATS(t, natsAddr, nats.dir)
	took = waitReady(t, srv, "ready again with NATS", 10*time.Second, ready)
	t.Logf("nats-server restarted: /readyz 200 after %s", took)

	// PostgreSQL becomes unreachable (every connection cut), then comes back.
	pg.Close()
	took = waitReady(t, srv, "not ready without PostgreSQL", 5*time.Second, unavailable("postgres"))
	t.Logf("PostgreSQL cut: /readyz 503 after %s: %s", took, readyz(srv.addr).body)
	pg.Reopen(t)
	took = waitReady(t, srv, "ready again with PostgreSQL", 10*time.Second, ready)
	t.Logf("PostgreSQL back: /readyz 200 after %s", took)

	// The same process, never restarted, still runs builds end to end:
	// store, relay (its outbox lock taken again), bus and router.
	c := client{base: "http://" + srv.addr, token: token}
	repo := newTestRepo(t)
	repo.commit(t, "main", "c1", map[string]string{".buildbridge.yml": "steps:\n  - name: ok\n    run: echo ok\n"})
	c.mustCall(t, 201, "POST", "/api/v1/projects", map[string]any{"name": "app", "repo": repo.bare})
	b := c.mustCall(t, 201, "POST", "/api/v1/projects/app/builds", nil)
	assertStates(t, logs.waitFinished(t, int64(b["id"].(float64)), 30*time.Second), "passed", "passed")
	srv.stop(t)
}
