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

// DefaultReserveShare is the part of MaxConns kept for light clients when ListenerConfig.Reserve
// is 0: the last tenth. A flood spread over a few hundred addresses, each holding dozens of idle
// connections, fills the other nine tenths and no more, so a client that opens a new connection
// still gets in.
const DefaultReserveShare = 10

// DefaultLightClientConns is the default ListenerConfig.LightClientConns: a client holding fewer
// open connections than this may use the reserve. A CLI, a script or a browser holds one or two at
// a time; a flooding address holds as many as it can.
const DefaultLightClientConns = 4

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
	// Reserve is how many of the last MaxConns slots admit only a client IP that holds fewer than
	// LightClientConns connections, so that addresses which hold many cannot take the last slots
	// from one that opens its first. 0 means MaxConns/DefaultReserveShare; negative means none.
	Reserve int
	// LightClientConns is the number of open connections below which a client IP may use the
	// reserve. 0 means DefaultLightClientConns.
	LightClientConns int
}

// ListenerStats is a snapshot of a Listener's counters.
type ListenerStats struct {
	Open              int    // connections admitted and not yet closed
	Accepted          uint64 // connections admitted since start
	RejectedPerClient uint64 // refused because their client IP was at its cap
	RejectedGlobal    uint64 // refused because the listener was at MaxConns
	RejectedReserve   uint64 // refused because only the reserve was left and the client held many
	Answering         int    // refused connections being answered now (at most RefuseConcurrency)
}

// Listener wraps a net.Listener and admits a new connection only while its client IP is under
// MaxConnsPerClient and the listener under MaxConns, keeping the last Reserve slots for client IPs
// that hold fewer than LightClientConns. A connection over a cap is still accepted (so
// the kernel's backlog keeps draining and the refusal is visible to the client), answered with a
// minimal HTTP 429 and closed; the wrapped server never sees it, and refusals hold at most
// RefuseConcurrency descriptors for at most RefuseTimeout each (see refuse).
//
// Use it under http.Server.Serve (and under tls.NewListener, so refusals cost no handshake).
type Listener struct {
	net.Listener
	perClient    int
	max          int
	reserve      int // the last slots of max, for clients holding fewer than light
	light        int
	exemptLoop   bool
	noReply      bool
	refuseWithin time.Duration
	refusing     chan struct{} // a slot per refusal being answered

	mu     sync.Mutex
	open   int
	byAddr map[netip.Addr]int // only clients with open connections: bounded by open

	accepted, rejClient, rejGlobal, rejReserve atomic.Uint64
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
	switch {
	case l.max <= 0 || cfg.Reserve < 0:
		l.reserve = 0
	case cfg.Reserve == 0:
		l.reserve = l.max / DefaultReserveShare
	default:
		l.reserve = min(cfg.Reserve, l.max)
	}
	l.light = cfg.LightClientConns
	if l.light <= 0 {
		l.light = DefaultLightClientConns
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
	errReserve   = errors.New("listener down to the slots reserved for light clients")
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
	held := l.byAddr[ip]
	if l.perClient > 0 && !(l.exemptLoop && ip.IsLoopback()) && held >= l.perClient {
		return errPerClient
	}
	if l.reserve > 0 && l.open >= l.max-l.reserve && held >= l.light {
		return errReserve
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
	switch why {
	case errGlobal:
		l.rejGlobal.Add(1)
		reply = refuseGlobal
	case errReserve:
		l.rejReserve.Add(1)
		reply = refuseGlobal
	default:
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
		RejectedReserve:   l.rejReserve.Load(),
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

// CloseWrite half-closes the connection when the one underneath can (a TCP connection can), so
// wrapping a listener keeps the graceful refusals of the servers above it working.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// NetConn returns the connection underneath, as tls.Conn.NetConn does.
func (c *limitedConn) NetConn() net.Conn { return c.Conn }

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
	limit := fileLimit()
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

// Caps of a node-to-node listener (the raft port; the gossip port, which also carries internode
// calls). Only cluster nodes belong there, so the caps are sized for them, not for clients:
//
//   - Raft: a peer holds at most MaxPool (3) pooled connections to a node, plus one for a snapshot
//     install or a leadership transfer in flight: about 4. Per IP 64 leaves room for 16 nodes behind
//     one address (NAT, or a test cluster on one host); 1024 in total for 256 peers.
//   - Gossip port: memberlist's push/pull and TCP fallback probes are one short stream each, a few
//     at once per peer. The internode HTTP client (HTTP/1.1) keeps up to 32 idle connections per
//     peer and opens one more per forwarded write or log follow in flight, so a busy follower
//     holds dozens to its leader. Per IP 256 leaves room for 8 busy nodes behind one address;
//     past it, a follower's extra forwards are refused at accept and retried with back-off, which
//     slows that follower down instead of letting it take the whole port.
//
// Both are also held to a sixteenth of the descriptor limit, so that a flood on both peer ports at
// once takes at most an eighth of the descriptors, which fits in the quarter DefaultMaxConns leaves
// outside the API: at the common limit of 1024 that is 64 per port, and with the API full the node
// still has 1024-768-2*64 = 128 descriptors for its files and outgoing connections.
const (
	DefaultPeerMaxConnsPerClient   = 64  // raft
	DefaultGossipMaxConnsPerClient = 256 // the gossip port
	DefaultPeerLightClientConns    = 8   // an idle peer's holding on one port, with room to spare
	maxPeerConns                   = 1024
	minPeerConns                   = 32
	peerShare                      = 16
)

// DefaultPeerMaxConns is the total cap of one node-to-node listener: 1024, or a sixteenth of the
// RLIMIT_NOFILE soft limit when that is less (never below 32).
func DefaultPeerMaxConns() int {
	limit := fileLimit()
	return peerMaxConnsFor(limit)
}

func peerMaxConnsFor(limit uint64) int {
	return int(max(min(limit/peerShare, maxPeerConns), minPeerConns))
}

// PeerListenerConfig is the configuration of the raft port's listener: the caps above, refusals
// closed without a reply (the protocols there are not HTTP), and no exemption for loopback, where
// test clusters and local attackers live alike.
func PeerListenerConfig() ListenerConfig { return peerConfig(DefaultPeerMaxConnsPerClient) }

// GossipListenerConfig is PeerListenerConfig for the gossip port, with its larger cap per address.
func GossipListenerConfig() ListenerConfig { return peerConfig(DefaultGossipMaxConnsPerClient) }

func peerConfig(perClient int) ListenerConfig {
	total := DefaultPeerMaxConns()
	return ListenerConfig{
		MaxConnsPerClient: min(perClient, total),
		MaxConns:          total,
		LightClientConns:  DefaultPeerLightClientConns,
		NoHTTPReply:       true,
	}
}
