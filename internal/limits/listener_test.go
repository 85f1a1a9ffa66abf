package limits

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/flood"
)

var (
	ip1 = netip.MustParseAddr("127.0.0.1")
	ip2 = netip.MustParseAddr("127.0.0.2")
)

// get does one request from src and returns the status, the Retry-After header and the body.
func get(t *testing.T, src, addr string) (int, string, []byte) {
	t.Helper()
	resp, err := clientFrom(src).Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET from %s: %v", src, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body from %s: %v", src, err)
	}
	return resp.StatusCode, resp.Header.Get("Retry-After"), body
}

func assertRefused(t *testing.T, status int, retryAfter string, body []byte) {
	t.Helper()
	if status != http.StatusTooManyRequests {
		t.Fatalf("status %d (%s), want 429", status, body)
	}
	if n, err := strconv.Atoi(retryAfter); err != nil || n < 1 {
		t.Fatalf("Retry-After %q, want whole seconds >= 1", retryAfter)
	}
	var e api.Error
	if err := json.Unmarshal(body, &e); err != nil || e.Code != CodeTooManyConnections {
		t.Fatalf("body %q: code %q, err %v; want code %s", body, e.Code, err, CodeTooManyConnections)
	}
}

func TestListenerPerClientCapRefusesOnlyThatClient(t *testing.T) {
	ln := NewListener(listen(t), ListenerConfig{MaxConnsPerClient: 3, MaxConns: 100})
	serve(t, ln, okHandler(), DefaultServerTimeouts())
	addr := ln.Addr().String()

	idle := []net.Conn{dialFrom(t, "127.0.0.1", addr), dialFrom(t, "127.0.0.1", addr), dialFrom(t, "127.0.0.1", addr)}
	waitFor(t, "3 connections admitted", func() bool { return ln.OpenFrom(ip1) == 3 })

	status, ra, body := get(t, "127.0.0.1", addr)
	assertRefused(t, status, ra, body)
	if st := ln.Stats(); st.RejectedPerClient != 1 || st.RejectedGlobal != 0 || st.Open != 3 {
		t.Fatalf("stats %+v, want 1 per-client refusal and 3 open", st)
	}

	if status, _, body := get(t, "127.0.0.2", addr); status != http.StatusOK || string(body) != "ok" {
		t.Fatalf("other client: %d %q, want 200 ok", status, body)
	}

	// A closed connection gives its slot back.
	_ = idle[0].Close()
	waitFor(t, "the closed connection's slot released", func() bool { return ln.OpenFrom(ip1) == 2 })
	if status, _, body := get(t, "127.0.0.1", addr); status != http.StatusOK {
		t.Fatalf("after a close: %d %q, want 200", status, body)
	}
}

func TestListenerGlobalCapRefusesEveryone(t *testing.T) {
	ln := NewListener(listen(t), ListenerConfig{MaxConnsPerClient: 100, MaxConns: 3})
	serve(t, ln, okHandler(), DefaultServerTimeouts())
	addr := ln.Addr().String()

	for _, src := range []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"} {
		dialFrom(t, src, addr)
	}
	waitFor(t, "3 connections admitted", func() bool { return ln.Stats().Open == 3 })

	status, ra, body := get(t, "127.0.0.4", addr)
	assertRefused(t, status, ra, body)
	if st := ln.Stats(); st.RejectedGlobal != 1 || st.RejectedPerClient != 0 {
		t.Fatalf("stats %+v, want one global refusal", st)
	}
}

func TestListenerExemptLoopbackKeepsTheGlobalCap(t *testing.T) {
	ln := NewListener(listen(t), ListenerConfig{MaxConnsPerClient: 1, MaxConns: 3, ExemptLoopback: true})
	serve(t, ln, okHandler(), DefaultServerTimeouts())
	addr := ln.Addr().String()

	for range 3 {
		dialFrom(t, "127.0.0.1", addr)
	}
	waitFor(t, "3 loopback connections admitted past the per-client cap", func() bool { return ln.OpenFrom(ip1) == 3 })

	status, ra, body := get(t, "127.0.0.1", addr)
	assertRefused(t, status, ra, body)
	if st := ln.Stats(); st.RejectedGlobal != 1 || st.RejectedPerClient != 0 {
		t.Fatalf("stats %+v, want one global refusal and no per-client one", st)
	}
}

func TestListenerNoHTTPReplyJustCloses(t *testing.T) {
	ln := NewListener(listen(t), ListenerConfig{MaxConnsPerClient: 1, MaxConns: 10, NoHTTPReply: true})
	serve(t, ln, okHandler(), DefaultServerTimeouts())
	addr := ln.Addr().String()

	dialFrom(t, "127.0.0.1", addr)
	waitFor(t, "first connection admitted", func() bool { return ln.OpenFrom(ip1) == 1 })
	c := dialFrom(t, "127.0.0.1", addr)
	_ = c.SetReadDeadline(time.Now().Add(generous))
	got, err := io.ReadAll(c)
	if err != nil || len(got) != 0 {
		t.Fatalf("refused connection read %q, %v; want a bare close", got, err)
	}
}

// The shape of the API flood: addresses that each hold many idle connections fill the listener up
// to its reserve and no further, so a client that opens its first connection is still served, and
// the reserve is not a second global cap for it: it fills too, and then everyone is refused.
func TestListenerReserveKeepsTheLastSlotsForLightClients(t *testing.T) {
	ln := NewListener(listen(t), ListenerConfig{MaxConnsPerClient: 100, MaxConns: 10, Reserve: 3, LightClientConns: 2})
	serve(t, ln, okHandler(), DefaultServerTimeouts())
	addr := ln.Addr().String()

	for range 7 {
		dialFrom(t, "127.0.0.1", addr)
	}
	waitFor(t, "7 connections from the heavy client admitted", func() bool { return ln.OpenFrom(ip1) == 7 })

	// The heavy client is at the reserve: its next connection is refused though it is far below
	// its per-client cap and the listener below its global one.
	status, ra, body := get(t, "127.0.0.1", addr)
	assertRefused(t, status, ra, body)
	if st := ln.Stats(); st.RejectedReserve != 1 || st.RejectedGlobal != 0 || st.RejectedPerClient != 0 || st.Open != 7 {
		t.Fatalf("stats %+v, want one reserve refusal and 7 open", st)
	}

	// A light client gets in on new connections, again and again...
	for i := range 5 {
		if status, _, body := get(t, "127.0.0.2", addr); status != http.StatusOK || string(body) != "ok" {
			t.Fatalf("light client, request %d: %d %q, want 200 ok", i, status, body)
		}
	}
	// ...until it holds LightClientConns itself. (The server closes the requests' connections
	// just after answering them; they must be gone first, or they would count.)
	waitFor(t, "the light client's requests closed", func() bool { return ln.OpenFrom(ip2) == 0 })
	dialFrom(t, "127.0.0.2", addr)
	dialFrom(t, "127.0.0.2", addr)
	waitFor(t, "2 connections from the light client admitted", func() bool { return ln.OpenFrom(ip2) == 2 })
	status, ra, body = get(t, "127.0.0.2", addr)
	assertRefused(t, status, ra, body)

	// The last slot goes to a third client; then the listener is full for everyone.
	c := dialFrom(t, "127.0.0.3", addr)
	waitFor(t, "the listener full", func() bool { return ln.Stats().Open == 10 })
	status, ra, body = get(t, "127.0.0.4", addr)
	assertRefused(t, status, ra, body)
	if st := ln.Stats(); st.RejectedGlobal != 1 {
		t.Fatalf("stats %+v, want one global refusal once all 10 slots are held", st)
	}
	_ = c.Close()
	waitFor(t, "the third client's slot released", func() bool { return ln.Stats().Open == 9 })
	if status, _, body := get(t, "127.0.0.4", addr); status != http.StatusOK {
		t.Fatalf("after a close: %d %q, want 200", status, body)
	}
}

func TestListenerReserveDefaults(t *testing.T) {
	for _, tc := range []struct {
		cfg         ListenerConfig
		reserve     int
		lightClient int
	}{
		{ListenerConfig{MaxConns: 15000}, 1500, DefaultLightClientConns},
		{ListenerConfig{MaxConns: 3}, 0, DefaultLightClientConns}, // too small to keep a tenth
		{ListenerConfig{MaxConns: 100, Reserve: -1}, 0, DefaultLightClientConns},
		{ListenerConfig{MaxConns: 100, Reserve: 500, LightClientConns: 9}, 100, 9},
		{ListenerConfig{MaxConns: -1}, 0, DefaultLightClientConns}, // no global cap, nothing to reserve
	} {
		l := NewListener(nil, tc.cfg)
		if l.reserve != tc.reserve || l.light != tc.lightClient {
			t.Errorf("%+v: reserve %d, light %d; want %d, %d", tc.cfg, l.reserve, l.light, tc.reserve, tc.lightClient)
		}
	}
}

func TestPeerMaxConnsForFollowsTheDescriptorLimit(t *testing.T) {
	for _, tc := range []struct {
		limit uint64
		want  int
	}{
		{limit: 256, want: 32},     // tiny limit: still room for a few peers
		{limit: 1024, want: 64},    // the common default: a sixteenth
		{limit: 20000, want: 1024}, // the ceiling
		{limit: 1 << 40, want: 1024},
	} {
		if got := peerMaxConnsFor(tc.limit); got != tc.want {
			t.Errorf("peerMaxConnsFor(%d) = %d, want %d", tc.limit, got, tc.want)
		}
	}
	// Both peer ports and the API, all full, still leave descriptors at the common limit.
	if used := maxConnsFor(1024) + 2*peerMaxConnsFor(1024); used > 1024-128 {
		t.Errorf("API and peer caps take %d of 1024 descriptors, want at most %d", used, 1024-128)
	}
	for _, cfg := range []ListenerConfig{PeerListenerConfig(), GossipListenerConfig()} {
		if !cfg.NoHTTPReply || cfg.ExemptLoopback || cfg.MaxConnsPerClient > cfg.MaxConns {
			t.Errorf("peer listener config %+v, want silent refusals, no loopback exemption, per-client <= total", cfg)
		}
	}
}

// A wrapped TCP connection still half-closes: servers above the listener rely on it to answer a
// refused client before closing.
func TestLimitedConnCloseWrite(t *testing.T) {
	ln := NewListener(listen(t), ListenerConfig{})
	addr := ln.Addr().String()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	client := dialFrom(t, "127.0.0.1", addr)
	srv, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	defer srv.Close()
	cw, ok := srv.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("%T has no CloseWrite", srv)
	}
	if _, err := io.WriteString(srv, "bye"); err != nil {
		t.Fatal(err)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	_ = client.SetReadDeadline(time.Now().Add(generous))
	got, err := io.ReadAll(client)
	if err != nil || string(got) != "bye" {
		t.Fatalf("client read %q, %v; want \"bye\" then EOF", got, err)
	}
}

func TestMaxConnsForLeavesHeadroom(t *testing.T) {
	for _, tc := range []struct {
		limit uint64
		want  int
	}{
		{limit: 256, want: 64},   // tiny limit: still serves someone
		{limit: 1024, want: 768}, // the common default: a quarter kept back
		{limit: 800, want: 544},  // minimum headroom of 256
		{limit: 20000, want: 15000},
		{limit: 1 << 40, want: 1 << 16}, // "unlimited": a sane ceiling
	} {
		if got := maxConnsFor(tc.limit); got != tc.want {
			t.Errorf("maxConnsFor(%d) = %d, want %d", tc.limit, got, tc.want)
		}
	}
	if got := DefaultMaxConns(); got < minMaxConns || got > maxMaxConns {
		t.Errorf("DefaultMaxConns() = %d, outside [%d, %d]", got, minMaxConns, maxMaxConns)
	}
}

const (
	floodAddrEnv  = "LIMITS_TEST_FLOOD_ADDR"
	floodCountEnv = "LIMITS_TEST_FLOOD_COUNT"
	floodTotal    = 20_000
	floodPerIP    = 200
)

// TestIdleFloodLeavesOthersServed is today's outage: 20,000 idle connections from one client. They
// come from child processes, as they would from another machine, so this process's descriptors are
// the server's alone; the listener must keep the flood to its per-client cap, keep this process's
// descriptor count near that cap, and still serve a client from another address.
func TestIdleFloodLeavesOthersServed(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 20,000 connections")
	}
	limit, err := raiseNofile()
	if err != nil {
		t.Skipf("cannot raise RLIMIT_NOFILE: %v", err)
	}
	// Each child holds its share of the flood plus the runtime's own descriptors.
	perChild := int(limit) - 256
	if perChild < floodTotal/4 {
		t.Skipf("RLIMIT_NOFILE hard limit %d is too low: 4 flood processes of %d connections each would not fit; raise it (ulimit -Hn) to run this test", limit, floodTotal/4)
	}
	children := (floodTotal + perChild - 1) / perChild
	children = max(children, 2) // two attackers on one address: the cap is per address, not per process

	ln := NewListener(listen(t), ListenerConfig{MaxConnsPerClient: floodPerIP, MaxConns: 1000})
	timeouts := DefaultServerTimeouts()
	timeouts.ReadHeaderTimeout = time.Hour // keep the admitted idle connections for the whole test
	serve(t, ln, okHandler(), timeouts)
	addr := ln.Addr().String()
	fdsBefore := openFDs(t)

	type child struct {
		cmd   *exec.Cmd
		stdin io.Closer
		out   *bufio.Reader
	}
	var kids []child
	t.Cleanup(func() {
		for _, k := range kids {
			_ = k.stdin.Close() // the child closes its connections and exits on EOF
			_ = k.cmd.Wait()
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
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		kids = append(kids, child{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)})
	}
	opened := 0
	for _, k := range kids {
		line, err := k.out.ReadString('\n')
		if err != nil {
			t.Fatalf("flood child: %v (output %q)", err, line)
		}
		var n, failed int
		if _, err := fmt.Sscanf(line, "opened %d failed %d", &n, &failed); err != nil || failed != 0 {
			t.Fatalf("flood child reported %q", line)
		}
		opened += n
	}
	if opened != floodTotal {
		t.Fatalf("flood opened %d connections, want %d", opened, floodTotal)
	}
	// Every flood connection has passed the listener: admitted up to the cap, the rest refused.
	waitFor(t, "every flood connection admitted or refused", func() bool {
		st := ln.Stats()
		return st.Accepted+st.RejectedPerClient == floodTotal
	})
	if st := ln.Stats(); st.Accepted != floodPerIP || st.Open != floodPerIP || st.RejectedGlobal != 0 {
		t.Fatalf("stats %+v, want %d admitted and open, the rest refused per client", st, floodPerIP)
	}
	// The flood costs this process its per-client cap in descriptors, not 20,000.
	if fds := openFDs(t); fds > fdsBefore+floodPerIP+50 {
		t.Fatalf("%d descriptors open (%d before the flood), want at most %d more", fds, fdsBefore, floodPerIP+50)
	}
	// While the flood holds all 20,000 open, a normal client from another address is served...
	if status, _, body := get(t, "127.0.0.2", addr); status != http.StatusOK || string(body) != "ok" {
		t.Fatalf("normal client during the flood: %d %q, want 200 ok", status, body)
	}
	// ...and, once the flood's last refusals are done, the flooding address is answered with 429,
	// not silence. (During a flood, refusals past RefuseConcurrency are closed without a word.)
	waitFor(t, "the flood's refusals answered or timed out", func() bool { return ln.Stats().Answering == 0 })
	status, ra, body := get(t, "127.0.0.1", addr)
	assertRefused(t, status, ra, body)
	if ln.OpenFrom(ip2) != 0 {
		t.Fatalf("normal client's connection still counted after it closed")
	}
}

// floodChild opens $LIMITS_TEST_FLOOD_COUNT idle connections to addr, reports how many on stdout,
// holds them until stdin closes, and returns the exit code.
func floodChild(addr string) int {
	n, err := strconv.Atoi(os.Getenv(floodCountEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "flood child:", err)
		return 2
	}
	if _, err := raiseNofile(); err != nil {
		fmt.Fprintln(os.Stderr, "flood child:", err)
		return 2
	}
	return flood.Hold(flood.Options{Addr: addr, Count: n, Timeout: generous})
}

func TestRemoteIPUnmapsAndHandlesOddAddrs(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("10.0.0.1"), Port: 1}, "10.0.0.1"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:10.0.0.1"), Port: 1}, "10.0.0.1"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 1}, "2001:db8::1"},
		{&net.UnixAddr{Name: "/tmp/x.sock", Net: "unix"}, "invalid IP"},
		{nil, "invalid IP"},
	} {
		if got := remoteIP(tc.addr).String(); got != tc.want {
			t.Errorf("remoteIP(%v) = %s, want %s", tc.addr, got, tc.want)
		}
	}
	if strings.Contains(string(refusePerClient), "\n\n") {
		t.Errorf("refusal has a bare LF blank line: %q", refusePerClient)
	}
}
