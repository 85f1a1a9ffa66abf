// Package gossipmux puts gossip and internode calls on one host:port. It is a memberlist transport
// (UDP packets and TCP streams on the same port, like memberlist's NetTransport) whose TCP accept loop
// looks at the first byte of every connection and hands it either to memberlist or to a net.Listener
// for internode traffic (the join exchange, forwarded writes, executor reports, log reads).
//
// Why: a joining node knows only `--join host:port`, the gossip address of a member, so the join
// exchange and every internode call must reach that same address.
//
// What routes where, by the first byte a client sends:
//
//	0x16            TLS handshake record (ClientHello)        → Internode()
//	'A'..'Z'        plain HTTP/1.x method or h2c preface       → Internode(), only with AllowPlainHTTP;
//	                                                              otherwise answered 400 and closed
//	anything else   memberlist stream                          → StreamCh()
//
// Why the ranges cannot collide: memberlist v0.7.0 starts every stream with a message-type byte, one of
// pingMsg(0)..errMsg(13) (streams start with ping 0 for a TCP fallback probe, pushPull 6, user 8,
// compress 9 or encrypt 10) or hasLabelMsg(244) for a label header. A TLS connection starts with a
// handshake record, content type 22 (0x16); HTTP/1.x starts with an upper-case method token (GET, POST,
// ...) and HTTP/2 with prior knowledge with "PRI", all in 65..90. memberlist would need nine more
// message types before one reached 22; TestMemberlistFirstBytesAreGossip pins the first byte of a real
// push/pull in each setting that changes it (plain, compressed, encrypted, labelled) to catch that.
//
// A connection that sends nothing is closed after PeekTimeout, and the peek runs in its own goroutine,
// so an idle client cannot hold up other connections. TCP connections are capped per remote IP and in
// total (internal/limits) from accept until whoever ends up owning them closes them, so a flood costs
// a bounded number of descriptors. UDP is memberlist's alone.
//
// The package knows nothing of TLS certificates, HTTP handlers or what internode calls mean: the caller
// wraps Internode() in tls.NewListener (or serves it with http.Server.ServeTLS) and decides who may talk.
package gossipmux

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-sockaddr"
	"github.com/hashicorp/memberlist"

	"github.com/taskworker/taskworker/internal/limits"
)

// DefaultPeekTimeout bounds how long a new connection may wait before sending its first byte. TLS and
// HTTP clients and memberlist all write at once after connecting, so a few seconds is ample even over
// a slow WAN.
const DefaultPeekTimeout = 5 * time.Second

const (
	// udpPacketBufSize holds the largest UDP datagram.
	udpPacketBufSize = 65536
	// udpRecvBufSize is what we ask the kernel to buffer, so bursts of gossip are not dropped.
	udpRecvBufSize = 2 * 1024 * 1024
	// bindAttempts is how often New retries when port 0 picked a TCP port whose UDP twin is taken.
	bindAttempts = 20
	// plainWriteTimeout bounds the 400 answer to a refused plain-HTTP client.
	plainWriteTimeout = time.Second
	// plainDrainLimit caps what refusePlain reads of a refused request.
	plainDrainLimit = 64 << 10
)

// tlsHandshake is the TLS record content type of a handshake, the first byte of every TLS connection.
const tlsHandshake = 0x16

// plainRefusal is what a plain-HTTP client gets when only TLS is allowed; like net/http's own answer to
// plain HTTP on a TLS port, it tells the operator what went wrong instead of a bare reset.
const plainRefusal = "HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n" +
	"Client sent an HTTP request to a TLS-only taskworker node port.\n"

// Config configures New.
type Config struct {
	// BindAddr is the IP to bind, for UDP and TCP; "" means 0.0.0.0.
	BindAddr string
	// BindPort is the port for UDP and TCP; 0 picks a free port that is free for both.
	BindPort int
	// AllowPlainHTTP routes plain-text HTTP to Internode(). Only insecure clusters set it; otherwise plain
	// HTTP is answered 400 and closed.
	AllowPlainHTTP bool
	// PeekTimeout bounds the wait for a connection's first byte; 0 means DefaultPeekTimeout.
	PeekTimeout time.Duration
	// Conns caps TCP connections per remote IP and in total; nil means limits.GossipListenerConfig().
	Conns *limits.ListenerConfig
	// Logger receives routing problems; nil means slog.Default().
	Logger *slog.Logger
}

// Transport is a memberlist.NodeAwareTransport that also serves internode connections on the gossip
// port. Its methods are safe for concurrent use.
type Transport struct {
	cfg Config
	log *slog.Logger

	tcp    *net.TCPListener
	capped *limits.Listener // tcp under the connection caps
	udp    *net.UDPConn

	packetCh  chan *memberlist.Packet
	streamCh  chan net.Conn
	internode *listener

	done     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup

	mu      sync.Mutex
	stopped bool
	pending map[net.Conn]struct{} // connections whose first byte has not arrived
}

var _ memberlist.NodeAwareTransport = (*Transport)(nil)

// New binds cfg.BindAddr:cfg.BindPort for UDP and TCP and starts serving.
func New(cfg Config) (*Transport, error) {
	if cfg.BindAddr == "" {
		cfg.BindAddr = "0.0.0.0"
	}
	if cfg.PeekTimeout <= 0 {
		cfg.PeekTimeout = DefaultPeekTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ip := net.ParseIP(cfg.BindAddr)
	if ip == nil {
		return nil, fmt.Errorf("gossipmux: bind address %q is not an IP", cfg.BindAddr)
	}
	tcp, udp, err := bind(ip, cfg.BindPort, listenUDP)
	if err != nil {
		return nil, fmt.Errorf("gossipmux: %w", err)
	}
	if err := setUDPRecvBuf(udp); err != nil {
		_ = tcp.Close()
		_ = udp.Close()
		return nil, fmt.Errorf("gossipmux: resize UDP buffer: %w", err)
	}
	conns := limits.GossipListenerConfig()
	if cfg.Conns != nil {
		conns = *cfg.Conns
	}
	conns.NoHTTPReply = true // mostly gossip and TLS; plain HTTP is answered after routing, if at all
	t := &Transport{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "gossipmux"),
		tcp:      tcp,
		capped:   limits.NewListener(tcp, conns),
		udp:      udp,
		packetCh: make(chan *memberlist.Packet),
		streamCh: make(chan net.Conn),
		done:     make(chan struct{}),
		pending:  make(map[net.Conn]struct{}),
	}
	t.internode = &listener{addr: tcp.Addr(), conns: make(chan net.Conn), closed: make(chan struct{})}
	t.wg.Add(2)
	go t.acceptLoop()
	go t.readPackets()
	return t, nil
}

func listenUDP(a *net.UDPAddr) (*net.UDPConn, error) { return net.ListenUDP("udp", a) }

// bind listens on ip:port for TCP and UDP. With port 0 the kernel picks a TCP port that may be taken
// for UDP, so it tries again with another TCP port; a port the caller chose is not retried.
func bind(ip net.IP, port int, udpListen func(*net.UDPAddr) (*net.UDPConn, error)) (*net.TCPListener, *net.UDPConn, error) {
	attempts := 1
	if port == 0 {
		attempts = bindAttempts
	}
	var lastErr error
	for range attempts {
		tcp, err := net.ListenTCP("tcp", &net.TCPAddr{IP: ip, Port: port})
		if err != nil {
			return nil, nil, fmt.Errorf("listen tcp %s: %w", net.JoinHostPort(ip.String(), fmt.Sprint(port)), err)
		}
		p := tcp.Addr().(*net.TCPAddr).Port
		udp, err := udpListen(&net.UDPAddr{IP: ip, Port: p})
		if err == nil {
			return tcp, udp, nil
		}
		_ = tcp.Close()
		lastErr = fmt.Errorf("listen udp %s: %w", net.JoinHostPort(ip.String(), fmt.Sprint(p)), err)
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	return nil, nil, lastErr
}

// setUDPRecvBuf asks for a large UDP receive buffer, halving the request until the kernel accepts it.
func setUDPRecvBuf(c *net.UDPConn) error {
	var err error
	for size := udpRecvBufSize; size > 0; size /= 2 {
		if err = c.SetReadBuffer(size); err == nil {
			return nil
		}
	}
	return err
}

// Addr is the bound address, for TCP and UDP alike (the port is the one picked when BindPort was 0).
func (t *Transport) Addr() *net.TCPAddr { return t.tcp.Addr().(*net.TCPAddr) }

// Stats are the connection cap's counters: open TCP connections and refusals by cap.
func (t *Transport) Stats() limits.ListenerStats { return t.capped.Stats() }

// Internode is the listener for TLS (and, with AllowPlainHTTP, plain HTTP) connections that arrive on
// the gossip port. Its connections replay the byte that was peeked. Closing it refuses internode
// connections from then on but leaves gossip running; Shutdown closes it too.
func (t *Transport) Internode() net.Listener { return t.internode }

// FinalAdvertiseAddr implements memberlist.Transport. A configured ip wins (with the bound port when
// port is 0, since memberlist passes 0 unless told otherwise); else the bound IP, or a private IP of
// this host when bound to all interfaces.
func (t *Transport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	if port == 0 || ip == "" {
		port = t.Addr().Port
	}
	if ip != "" {
		addr := net.ParseIP(ip)
		if addr == nil {
			return nil, 0, fmt.Errorf("gossipmux: advertise address %q is not an IP", ip)
		}
		if v4 := addr.To4(); v4 != nil {
			addr = v4
		}
		return addr, port, nil
	}
	bound := t.Addr().IP
	if !bound.IsUnspecified() {
		if v4 := bound.To4(); v4 != nil {
			bound = v4
		}
		return bound, port, nil
	}
	private, err := sockaddr.GetPrivateIP()
	if err != nil {
		return nil, 0, fmt.Errorf("gossipmux: find a private IP to advertise: %w", err)
	}
	if private == "" {
		return nil, 0, errors.New("gossipmux: bound to all interfaces, no private IP found and no advertise address given")
	}
	addr := net.ParseIP(private)
	if addr == nil {
		return nil, 0, fmt.Errorf("gossipmux: private IP %q does not parse", private)
	}
	return addr, port, nil
}

// WriteTo implements memberlist.Transport.
func (t *Transport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress implements memberlist.NodeAwareTransport: one UDP datagram from the gossip port.
func (t *Transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	udpAddr, err := net.ResolveUDPAddr("udp", a.Addr)
	if err != nil {
		return time.Time{}, fmt.Errorf("gossipmux: resolve %s: %w", a.String(), err)
	}
	_, err = t.udp.WriteTo(b, udpAddr)
	// Taken after the write returns, so RTT estimates err slightly low rather than high.
	return time.Now(), err
}

// PacketCh implements memberlist.Transport.
func (t *Transport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

// DialTimeout implements memberlist.Transport.
func (t *Transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// DialAddressTimeout implements memberlist.NodeAwareTransport. Outgoing gossip streams need no marker:
// memberlist's own first byte is what the far side routes on.
func (t *Transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	return d.Dial("tcp", a.Addr)
}

// StreamCh implements memberlist.Transport.
func (t *Transport) StreamCh() <-chan net.Conn { return t.streamCh }

// Shutdown implements memberlist.Transport: it closes both sockets, the internode listener (its Accept
// returns net.ErrClosed) and every connection not yet handed on, and waits for its goroutines. It is
// safe to call more than once.
func (t *Transport) Shutdown() error {
	t.stopOnce.Do(func() {
		t.mu.Lock()
		t.stopped = true
		pending := t.pending
		t.pending = nil
		t.mu.Unlock()

		close(t.done)
		t.internode.close()
		_ = t.tcp.Close()
		_ = t.udp.Close()
		for c := range pending {
			_ = c.Close()
		}
	})
	t.wg.Wait()
	return nil
}

func (t *Transport) stopping() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

// acceptLoop accepts TCP connections and routes each in its own goroutine, so a client that connects
// and stays silent holds up nobody.
func (t *Transport) acceptLoop() {
	defer t.wg.Done()
	const baseDelay, maxDelay = 5 * time.Millisecond, time.Second
	var delay time.Duration
	for {
		c, err := t.capped.Accept()
		if err != nil {
			if t.stopping() {
				return
			}
			// Out of file descriptors and the like: back off instead of spinning, as net/http does.
			delay = min(max(2*delay, baseDelay), maxDelay)
			t.log.Error("accept gossip-port connection", "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-t.done:
				return
			}
			continue
		}
		delay = 0
		if !t.track(c) {
			_ = c.Close()
			return
		}
		t.wg.Add(1)
		go t.route(c)
	}
}

// track records c as pending so Shutdown can close it; false means Shutdown has begun.
func (t *Transport) track(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	t.pending[c] = struct{}{}
	return true
}

// untrack hands c over to its route; false means Shutdown closed it meanwhile.
func (t *Transport) untrack(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	delete(t.pending, c)
	return true
}

// Route says where a connection whose first byte is b goes.
type Route int

const (
	RouteGossip    Route = iota // memberlist's StreamCh
	RouteTLS                    // Internode(), always
	RoutePlainHTTP              // Internode() with AllowPlainHTTP, else refused
)

func (r Route) String() string {
	switch r {
	case RouteGossip:
		return "gossip"
	case RouteTLS:
		return "tls"
	case RoutePlainHTTP:
		return "plain-http"
	}
	return fmt.Sprintf("Route(%d)", int(r))
}

// RouteOf classifies a connection by its first byte; the package doc explains the ranges.
func RouteOf(b byte) Route {
	switch {
	case b == tlsHandshake:
		return RouteTLS
	case b >= 'A' && b <= 'Z':
		return RoutePlainHTTP
	default:
		return RouteGossip
	}
}

func (t *Transport) route(c net.Conn) {
	defer t.wg.Done()
	var first [1]byte
	err := c.SetReadDeadline(time.Now().Add(t.cfg.PeekTimeout))
	if err == nil {
		_, err = io.ReadFull(c, first[:])
	}
	if err == nil {
		// The next owner sets its own deadlines; ours must not cut it off.
		err = c.SetReadDeadline(time.Time{})
	}
	if !t.untrack(c) {
		return // Shutdown closed it
	}
	if err != nil {
		// EOF, timeout or reset before one byte: nothing to route. Debug only: scanners and health
		// checks do this all day.
		t.log.Debug("gossip-port connection sent nothing", "remote", c.RemoteAddr(), "err", err)
		_ = c.Close()
		return
	}
	pc := &peekedConn{Conn: c, first: first[0]}
	switch RouteOf(first[0]) {
	case RouteGossip:
		t.handOff(pc, t.streamCh, nil)
	case RouteTLS:
		t.handOff(pc, t.internode.conns, t.internode.closed)
	case RoutePlainHTTP:
		if !t.cfg.AllowPlainHTTP {
			t.log.Info("refused plain HTTP on the gossip port: this node takes internode calls over TLS only",
				"remote", c.RemoteAddr())
			refusePlain(c)
			return
		}
		t.handOff(pc, t.internode.conns, t.internode.closed)
	}
}

// refusePlain answers a plain-HTTP client 400 and closes. Closing a socket with the rest of the
// request unread makes the kernel send a reset, which can reach the client before the answer and hide
// it; so it half-closes, drains what the client sent (bounded), and only then closes.
func refusePlain(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(plainWriteTimeout))
	if _, err := io.WriteString(c, plainRefusal); err != nil {
		return
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(c, plainDrainLimit))
}

// handOff waits for the consumer to take c, or closes it if the transport or the consumer closes first.
func (t *Transport) handOff(c net.Conn, to chan<- net.Conn, consumerClosed <-chan struct{}) {
	select {
	case to <- c:
	case <-consumerClosed:
		_ = c.Close()
	case <-t.done:
		_ = c.Close()
	}
}

// readPackets feeds UDP datagrams to memberlist.
func (t *Transport) readPackets() {
	defer t.wg.Done()
	for {
		buf := make([]byte, udpPacketBufSize)
		n, from, err := t.udp.ReadFrom(buf)
		ts := time.Now() // as close to the read as possible, for RTT estimates
		if err != nil {
			if t.stopping() || errors.Is(err, net.ErrClosed) {
				return
			}
			t.log.Error("read gossip packet", "err", err)
			continue
		}
		if n < 1 {
			continue // memberlist needs at least the message-type byte
		}
		select {
		case t.packetCh <- &memberlist.Packet{Buf: buf[:n], From: from, Timestamp: ts}:
		case <-t.done:
			return
		}
	}
}

// listener is the internode side of the gossip port.
type listener struct {
	addr      net.Addr
	conns     chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
}

// Accept waits for the next internode connection; after Close or Shutdown it returns an error that
// wraps net.ErrClosed.
func (l *listener) Accept() (net.Conn, error) {
	// Closed wins over a connection that is ready at the same moment, so Accept after Close always fails.
	select {
	case <-l.closed:
		return nil, l.errClosed()
	default:
	}
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, l.errClosed()
	}
}

func (l *listener) errClosed() error {
	return &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: net.ErrClosed}
}

// Close stops routing connections to this listener; gossip goes on.
func (l *listener) Close() error {
	l.close()
	return nil
}

func (l *listener) close() { l.closeOnce.Do(func() { close(l.closed) }) }

// Addr is the gossip port's address.
func (l *listener) Addr() net.Addr { return l.addr }

// peekedConn gives back the byte the router read before the rest of the stream.
type peekedConn struct {
	net.Conn
	mu       sync.Mutex
	first    byte
	replayed bool
}

func (c *peekedConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return c.Conn.Read(p)
	}
	c.mu.Lock()
	if !c.replayed {
		c.replayed = true
		c.mu.Unlock()
		p[0] = c.first
		return 1, nil
	}
	c.mu.Unlock()
	return c.Conn.Read(p)
}

// NetConn returns the underlying TCP connection, as tls.Conn.NetConn does, for callers that need its
// socket options; reading from it directly would skip the peeked byte.
func (c *peekedConn) NetConn() net.Conn { return c.Conn }
