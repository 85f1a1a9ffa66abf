package limits

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the test binary double as the flood client of TestIdleFloodLeavesOthersServed: a
// process of its own, as an attacker would be, so the server's descriptor count is its own.
func TestMain(m *testing.M) {
	if addr := os.Getenv(floodAddrEnv); addr != "" {
		os.Exit(floodChild(addr))
	}
	os.Exit(m.Run())
}

// generous bounds every wait in these tests: CI machines are slow and shared.
const generous = 60 * time.Second

// waitFor polls cond until it holds or the generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(generous)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fakeClock is a clock that moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// serve runs an http.Server on l with h until the test ends.
func serve(t *testing.T, l net.Listener, h http.Handler, timeouts ServerTimeouts) *http.Server {
	t.Helper()
	srv := &http.Server{Handler: h}
	timeouts.Apply(srv)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l) // returns http.ErrServerClosed at cleanup
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return srv
}

func okHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// dialer connects from a chosen loopback source address (all of 127.0.0.0/8 is loopback on Linux),
// so one test process can be several clients.
func dialer(src string) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: generous}
}

func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	c, err := dialer(src).Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// clientFrom is an HTTP client whose connections come from src and are not reused, so each
// request is a new connection that meets the listener's caps.
func clientFrom(src string) *http.Client {
	d := dialer(src)
	return &http.Client{
		Timeout: generous,
		Transport: &http.Transport{
			DialContext:       func(ctx context.Context, n, a string) (net.Conn, error) { return d.DialContext(ctx, n, a) },
			DisableKeepAlives: true,
		},
	}
}

// raiseNofile raises this process's soft RLIMIT_NOFILE to its hard limit and returns the new limit.
func raiseNofile() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return 0, err
		}
	}
	return rl.Cur, nil
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count descriptors: %v", err)
	}
	return len(ents)
}
