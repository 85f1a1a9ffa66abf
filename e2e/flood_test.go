package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/flood"
	"github.com/taskworker/taskworker/internal/limits"
	"github.com/taskworker/taskworker/internal/localcluster"
)

// The connection flood of issue 9, against a real agent process: 20,000 idle keep-alive
// connections from one address used to take every file descriptor of the node, after which it
// answered nobody. The flood comes from child processes (this test binary again, see TestMain and
// floodChild), as it would from another machine, so no process of the test needs 20,000
// descriptors but the node must face all of them.

const (
	floodAddrEnv  = "E2E_FLOOD_ADDR"  // set: this process is a flood child aimed at this address
	floodCountEnv = "E2E_FLOOD_COUNT" // the connections the child opens
	floodTotal    = 20_000
	floodSrc      = "127.0.0.1" // the flooding client's address
	normalSrc     = "127.0.0.2" // a normal client's address (all of 127.0.0.0/8 is loopback on Linux)
	floodWait     = 2 * time.Minute
)

// floodRequest is what every flood connection sends once: a complete keep-alive request to an
// endpoint the rate limiter spares, so that an admitted connection is then an idle keep-alive one,
// which the server keeps for its IdleTimeout (60 s), as in the outage. A connection that never
// sends a byte would be closed after ReadHeaderTimeout (10 s) instead, freeing the flooding
// address's slots before the test could see them full.
const floodRequest = "GET /v1/health HTTP/1.1\r\nHost: flood\r\n\r\n"

func TestOverloadIdleConnectionFloodLeavesNodeServing(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 20,000 connections to a node process; skipped in -short mode")
	}
	children := floodChildren(t)
	pc := startProcCluster(t, 1)
	node := pc.procs[0]
	_, port, err := net.SplitHostPort(node.HTTP)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort(floodSrc, port)

	fdsBefore, err := node.OpenFDs()
	if err != nil {
		t.Skipf("cannot count the node's descriptors: %v", err)
	}
	// The flood may cost the node its per-client cap of admitted connections plus the refusals
	// being answered at once, and a margin for its own work (the normal client, a task run); not
	// one descriptor per flood connection.
	fdBound := fdsBefore + limits.DefaultMaxConnsPerClient + limits.DefaultRefuseConcurrency + 200
	peak := sampleFDs(t, node)

	start := time.Now()
	openFlood(t, addr, children)
	t.Logf("%d connections from %s open after %s, from %d processes", floodTotal, floodSrc, time.Since(start).Round(time.Millisecond), children)

	// The flood reached the node: the flooding address holds its cap's worth of descriptors.
	poll(t, "the flood's admitted connections held by the node", floodWait, func() bool {
		n, err := node.OpenFDs()
		return err == nil && n >= fdsBefore+limits.DefaultMaxConnsPerClient
	})

	// While the flood holds its 20,000 connections, a normal client from another address is
	// served at once...
	normal := httpClientFrom(normalSrc)
	if status, body := do(t, normal, http.MethodGet, "http://"+addr+"/v1/health", nil); status != http.StatusOK {
		t.Fatalf("GET /v1/health from %s during the flood: %d %s, want 200", normalSrc, status, body)
	}
	in := json.RawMessage(`{"hello":"flood"}`)
	req, _ := json.Marshal(api.SubmitRequest{Type: "echo", Input: in, Timeout: "30s"})
	status, body := do(t, normal, http.MethodPost, "http://"+addr+"/v1/tasks?wait=10s", req)
	var task api.Task
	if status != http.StatusCreated || json.Unmarshal(body, &task) != nil {
		t.Fatalf("POST /v1/tasks?wait=10s from %s during the flood: %d %s, want 201 and a task", normalSrc, status, body)
	}
	if task.State != api.StateSucceeded || !jsonEqual(task.Result, in) {
		t.Fatalf("echo task during the flood: state %s result %s, want succeeded with %s", task.State, task.Result, in)
	}

	// ...and the flooding address is answered with 429, not silence, once the flood's own refusals
	// (answered a few at a time, each within a second; the rest closed at once) are done.
	flooder := httpClientFrom(floodSrc)
	var last string
	if err := localcluster.Until(floodWait, 100*time.Millisecond, func() bool {
		var ok bool
		ok, last = refused(flooder, "http://"+addr+"/v1/health")
		return ok
	}); err != nil {
		t.Fatalf("a new request from %s during the flood: last answer %q after %s, want 429 %s", floodSrc, last, floodWait, limits.CodeTooManyConnections)
	}
	t.Logf("flooding address answered: %s", last)

	// Through all of it the node's descriptors stayed near its caps, far below the flood.
	now, err := node.OpenFDs()
	if err != nil {
		t.Fatal(err)
	}
	if top := peak(); top > fdBound || now > fdBound {
		t.Fatalf("node holds %d descriptors (peak %d, %d before the flood), want at most %d", now, top, fdsBefore, fdBound)
	}
	t.Logf("node descriptors: %d before the flood, peak %d, now %d (bound %d)", fdsBefore, peak(), now, fdBound)
}

// floodChildren returns how many flood processes share the 20,000 connections, or skips the test
// when the machine cannot hold the flood: a hard RLIMIT_NOFILE that would need more than 4
// processes, or too few ephemeral ports for 20,000 connections from one address.
func floodChildren(t *testing.T) int {
	t.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Skipf("cannot read RLIMIT_NOFILE: %v", err)
	}
	// Each child raises its soft limit to the hard one (the Go runtime does) and holds its share
	// plus the runtime's own descriptors.
	perChild := int(min(rl.Max, 1<<20)) - 256
	if perChild < floodTotal/4 {
		t.Skipf("RLIMIT_NOFILE hard limit %d is too low: 4 flood processes of %d connections each would not fit; raise it (ulimit -Hn) to run this test", rl.Max, floodTotal/4)
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var lo, hi int
		if _, err := fmt.Sscan(string(b), &lo, &hi); err == nil && hi-lo+1 < floodTotal+1000 {
			t.Skipf("ephemeral port range %d-%d is too small for %d connections from one address", lo, hi, floodTotal)
		}
	}
	return max((floodTotal+perChild-1)/perChild, 2) // two processes on one address: the cap is per address
}

// openFlood starts the flood processes against addr, waits until all 20,000 connections are open
// and leaves them held until the test ends, when the children are told to close them and exit
// (and killed if they do not).
func openFlood(t *testing.T, addr string, children int) {
	t.Helper()
	type child struct {
		cmd   *exec.Cmd
		stdin io.Closer
		line  chan string // the child's report, or "" when it ended without one
	}
	var kids []*child
	t.Cleanup(func() {
		for _, k := range kids {
			_ = k.stdin.Close() // the child closes its connections and exits on EOF
		}
		for _, k := range kids {
			done := make(chan struct{})
			go func() {
				_ = k.cmd.Wait()
				close(done)
			}()
			select {
			case <-done:
			case <-time.After(floodWait):
				t.Errorf("flood child %d did not exit after its stdin closed; killing it", k.cmd.Process.Pid)
				_ = k.cmd.Process.Kill()
				<-done
			}
		}
	})
	for i := range children {
		share := floodTotal / children
		if i == children-1 {
			share = floodTotal - share*(children-1)
		}
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), floodAddrEnv+"="+addr, floodCountEnv+"="+strconv.Itoa(share))
		cmd.Stderr = os.Stderr
		// Killed with the test process if it dies first, so no flood outlives the test.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start flood child: %v", err)
		}
		k := &child{cmd: cmd, stdin: stdin, line: make(chan string, 1)}
		kids = append(kids, k)
		go func() {
			line, _ := bufio.NewReader(stdout).ReadString('\n')
			k.line <- line
			_, _ = io.Copy(io.Discard, stdout) // cmd.Wait waits for stdout to be drained
		}()
	}
	opened := 0
	for _, k := range kids {
		var line string
		select {
		case line = <-k.line:
		case <-time.After(floodWait):
			t.Fatalf("flood child %d has not reported after %s", k.cmd.Process.Pid, floodWait)
		}
		var n, failed int
		if _, err := fmt.Sscanf(line, "opened %d failed %d", &n, &failed); err != nil || failed != 0 {
			t.Fatalf("flood child %d reported %q, want every connection opened", k.cmd.Process.Pid, line)
		}
		opened += n
	}
	if opened != floodTotal {
		t.Fatalf("flood opened %d connections, want %d", opened, floodTotal)
	}
}

// floodChild is the main of a flood process (see TestMain): it opens $E2E_FLOOD_COUNT connections
// from floodSrc to addr, sends floodRequest on each and never reads, reports "opened N failed F"
// on stdout, holds the connections until stdin closes, and returns the exit code. A refused
// connection stays open on this side too, as an attacker's would.
func floodChild(addr string) int {
	n, err := strconv.Atoi(os.Getenv(floodCountEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "flood child:", err)
		return 2
	}
	return flood.Hold(flood.Options{Addr: addr, Count: n, Source: floodSrc, Timeout: floodWait, Send: floodRequest})
}

// sampleFDs counts node's descriptors every few milliseconds until the test ends and returns a
// function that reports the highest count seen so far.
func sampleFDs(t *testing.T, node *proc) func() int {
	t.Helper()
	var peak atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			if n, err := node.OpenFDs(); err == nil && int64(n) > peak.Load() {
				peak.Store(int64(n))
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return func() int { return int(peak.Load()) }
}

// httpClientFrom is an HTTP client whose connections come from src and are not reused, so every
// request meets the listener's caps on a new connection.
func httpClientFrom(src string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 30 * time.Second}
	return &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true},
	}
}

// do sends one request and returns the status and body; a transport error fails the test.
func do(t *testing.T, c *http.Client, method, url string, body []byte) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return resp.StatusCode, b
}

// refused does one GET and reports whether it was the listener's refusal: 429 with Retry-After
// and the too_many_connections code. The second result describes what came back.
func refused(c *http.Client, url string) (bool, string) {
	resp, err := c.Get(url)
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return false, fmt.Sprintf("%s, body: %v", resp.Status, err)
	}
	got := fmt.Sprintf("%s Retry-After %q %s", resp.Status, resp.Header.Get("Retry-After"), strings.TrimSpace(string(b)))
	var e api.Error
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" ||
		json.Unmarshal(b, &e) != nil || e.Code != limits.CodeTooManyConnections {
		return false, got
	}
	return true, got
}

func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xb, errX := json.Marshal(x)
	yb, errY := json.Marshal(y)
	return errors.Join(errX, errY) == nil && bytes.Equal(xb, yb)
}
