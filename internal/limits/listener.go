package limits

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/taskworker/taskworker/api"
)

// DefaultMaxConnsPerClient is Consul's default for http_max_conns_per_client: enough for a busy
// client's connection pool plus its long polls, far below what one host can use up.
const DefaultMaxConnsPerClient = 200

// DefaultRefuseTimeout bounds the whole exchange with a refused connection: waiting for its
// request, writing the 429, and waiting for the client to close.
const DefaultRefuseTimeout = time.Second

// DefaultRefuseConcurrency bounds the refused connections being answered at once, and so the
// descriptors refusals can hold. Past it, a refused connection is closed without a reply.
const DefaultRefuseConcurrency = 32

// CodeTooManyConnections is the code in the body of a connection refused by the Listener.
const CodeTooManyConnections = api.CodeTooManyConnections

// httpRefusal is the whole answer to a connection over a cap: a complete, tiny HTTP response that
// a normal client reports as 429 and retries later. No request is read or parsed for it.
func httpRefusal(msg string) []byte {
	body, _ := json.Marshal(api.Error{Message: msg, Code: CodeTooManyConnections})
	body = append(body, '\n')
	return fmt.Appendf(nil, "HTTP/1.1 429 Too Many Requests\r\n"+
		"Content-Type: application/json\r\n"+
		"Retry-After: 1\r\n"+
		"Connection: close\r\n"+
		"Content-Length: %d\r\n"+
		"\r\n%s", len(body), body)
}

var (
	refusePerClient = httpRefusal("too many open connections from this address")
	refuseGlobal    = httpRefusal("the server is at its connection limit")
)

// ListenerConfig sets the caps of a Listener. The zero value is the recommended configuration.
type ListenerConfig struct {
	// MaxConnsPerClient caps the open connections from one client IP. 0 means
	// DefaultMaxConnsPerClient; negative means no per-client cap.
	MaxConnsPerClient int
	// MaxConns caps all open connections of this listener, so the process keeps file descriptors for
	// raft, gossip and its data files whatever clients do. 0 means DefaultMaxConns(); negative means
	// no global cap.
	MaxConns int
	// ExemptLoopback lifts the per-client cap for loopback clients (a local sidecar or CLI). The
	// global cap still applies to them: it is what protects the file descriptors.
	ExemptLoopback bool
	// NoHTTPReply closes a refused connection without a word, for a listener that does not speak
	// HTTP. By default a refused connection gets a minimal HTTP 429 with Retry-After and
	// Connection: close.
	NoHTTPReply bool
	// RefuseTimeout bounds the exchange with one refused connection. 0 means DefaultRefuseTimeout.
	RefuseTimeout time.Duration
	// RefuseConcurrency bounds the refused connections answered at once. 0 means
	// DefaultRefuseConcurrency.
	RefuseConcurrency int
}

// ListenerStats is a snapshot of a Listener's counters.
type ListenerStats struct {
	Open              int    // connections admitted and not yet closed
	Accepted          uint64 // connections admitted since start
	RejectedPerClient uint64 // refused because their client IP was at its cap
	RejectedGlobal    uint64 // refused because the listener was at MaxConns
	Answering         int    // refused connections being answered now (at most RefuseConcurrency)
}

// Listener wraps a net.Listener and admits a new connection only while its client IP is under
// MaxConnsPerClient and the listener under MaxConns. A connection over a cap is still accepted (so
// the kernel's backlog keeps draining and the refusal is visible to the client), answered with a
// minimal HTTP 429 and closed; the wrapped server never sees it, and refusals hold at most
// RefuseConcurrency descriptors for at most RefuseTimeout each (see refuse).
//
// Use it under http.Server.Serve (and under tls.NewListener, so refusals cost no handshake).
type Listener struct {
	net.Listener
	perClient    int
	max          int
	exemptLoop   bool
	noReply      bool
	refuseWithin time.Duration
	refusing     chan struct{} // a slot per refusal being answered

	mu     sync.Mutex
	open   int
	byAddr map[netip.Addr]int // only clients with open connections: bounded by open

	accepted, rejClient, rejGlobal atomic.Uint64
}

// NewListener wraps inner with the caps in cfg.
func NewListener(inner net.Listener, cfg ListenerConfig) *Listener {
	l := &Listener{
		Listener:     inner,
		perClient:    cfg.MaxConnsPerClient,
		max:          cfg.MaxConns,
		exemptLoop:   cfg.ExemptLoopback,
		noReply:      cfg.NoHTTPReply,
		refuseWithin: cfg.RefuseTimeout,
		byAddr:       make(map[netip.Addr]int),
	}
	if l.perClient == 0 {
		l.perClient = DefaultMaxConnsPerClient
	}
	if l.max == 0 {
		l.max = DefaultMaxConns()
	}
	if l.refuseWithin <= 0 {
		l.refuseWithin = DefaultRefuseTimeout
	}
	slots := cfg.RefuseConcurrency
	if slots <= 0 {
		slots = DefaultRefuseConcurrency
	}
	l.refusing = make(chan struct{}, slots)
	return l
}

var (
	errPerClient = errors.New("client at its connection cap")
	errGlobal    = errors.New("listener at its connection cap")
)

// Accept returns the next connection that is within the caps, refusing the others on the way.
// Errors are the wrapped listener's, unchanged, so http.Server's back-off on temporary errors
// (such as EMFILE) still works.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteIP(c.RemoteAddr())
		if err := l.admit(ip); err != nil {
			l.refuse(c, err)
			continue
		}
		l.accepted.Add(1)
		return &limitedConn{Conn: c, l: l, ip: ip}, nil
	}
}

func (l *Listener) admit(ip netip.Addr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.max > 0 && l.open >= l.max {
		return errGlobal
	}
	if l.perClient > 0 && !(l.exemptLoop && ip.IsLoopback()) && l.byAddr[ip] >= l.perClient {
		return errPerClient
	}
	l.open++
	l.byAddr[ip]++
	return nil
}

func (l *Listener) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if n := l.byAddr[ip] - 1; n > 0 {
		l.byAddr[ip] = n
	} else {
		delete(l.byAddr, ip)
	}
}

// refuse answers c with a 429 and closes it, off the accept path. It reads the request before it
// answers: an HTTP client that receives a response before it has sent its request takes it for
// garbage on an idle connection (Go's Transport does), so a 429 written at accept would often be
// lost. Then it half-closes and drains until the client closes, so that closing with unread
// request bytes does not reset the connection under the response. All of it is bounded by
// RefuseTimeout, and at most RefuseConcurrency refusals are answered at once; the rest, which only
// a flood produces, are closed at once without a word, so refusals never hold more than a few
// descriptors.
func (l *Listener) refuse(c net.Conn, why error) {
	reply := refusePerClient
	if why == errGlobal {
		l.rejGlobal.Add(1)
		reply = refuseGlobal
	} else {
		l.rejClient.Add(1)
	}
	if l.noReply {
		_ = c.Close()
		return
	}
	select {
	case l.refusing <- struct{}{}:
	default:
		_ = c.Close()
		return
	}
	go func() {
		defer func() { <-l.refusing }()
		answer(c, reply, l.refuseWithin)
	}()
}

// answer reads (some of) a request, writes reply, and closes c once the peer has closed or within
// the time given. Errors are ignored on purpose: the peer may be gone, there is nobody to report
// them to, and the listener's counters already record the refusal.
func answer(c net.Conn, reply []byte, within time.Duration) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(within))
	var buf [512]byte
	if _, err := c.Read(buf[:]); err != nil {
		return // silent or gone: no one to answer
	}
	if _, err := c.Write(reply); err != nil {
		return
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	for {
		if _, err := c.Read(buf[:]); err != nil {
			return
		}
	}
}

// Stats returns the listener's counters.
func (l *Listener) Stats() ListenerStats {
	l.mu.Lock()
	open := l.open
	l.mu.Unlock()
	return ListenerStats{
		Open:              open,
		Accepted:          l.accepted.Load(),
		RejectedPerClient: l.rejClient.Load(),
		RejectedGlobal:    l.rejGlobal.Load(),
		Answering:         len(l.refusing),
	}
}

// OpenFrom is the number of open connections from one client IP.
func (l *Listener) OpenFrom(ip netip.Addr) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byAddr[ip.Unmap()]
}

// limitedConn gives its slot back exactly once, however often and from wherever it is closed
// (http.Server, a hijacking handler, Shutdown).
type limitedConn struct {
	net.Conn
	l    *Listener
	ip   netip.Addr
	once sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.ip) })
	return err
}

// remoteIP is the client's address without port, IPv4-in-IPv6 unmapped so one client has one key.
// An address that is not IP (a unix socket) maps to the zero Addr: all such clients share a budget.
func remoteIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	if a == nil {
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// Headroom the global cap leaves for everything else that needs a descriptor: raft's transport
// (a pool per peer), memberlist (TCP and UDP), bolt files, log files, child processes' pipes.
const (
	minHeadroom   = 256
	minMaxConns   = 64
	maxMaxConns   = 1 << 16
	headroomShare = 4 // a quarter of the limit when that is more than minHeadroom
)

// DefaultMaxConns derives a global connection cap from the process's RLIMIT_NOFILE soft limit
// (which the Go runtime raises to the hard limit at start-up on Linux): the limit minus a quarter
// of it (at least 256) kept for raft, gossip and files. It never returns less than 64, and when the
// limit cannot be read it assumes the common 1024.
func DefaultMaxConns() int {
	var rl syscall.Rlimit
	limit := uint64(1024)
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur > 0 {
		limit = rl.Cur
	}
	return maxConnsFor(limit)
}

func maxConnsFor(limit uint64) int {
	if limit > maxMaxConns*2 {
		return maxMaxConns
	}
	n := int(limit)
	headroom := max(n/headroomShare, minHeadroom)
	return min(max(n-headroom, minMaxConns), maxMaxConns)
}

// retryAfterSeconds renders a delay for the Retry-After header: whole seconds, rounded up, at
// least 1, because 0 invites an immediate retry.
func retryAfterSeconds(d time.Duration) string {
	s := int64((d + time.Second - 1) / time.Second)
	return strconv.FormatInt(max(s, 1), 10)
}
