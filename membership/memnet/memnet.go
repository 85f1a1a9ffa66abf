// Package memnet is an in-process network for memberlist, so tests of membership and of what is
// built on it run fast and without ports. Packets travel over channels and streams over net.Pipe;
// a test can cut a node off (Isolate, Kill) and reconnect it (Heal). It knows nothing of taskworker.
package memnet

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/memberlist"
)

// port is the gossip port of every fake host; hosts differ by IP.
const port = 7946

// Network connects the Transports it made. The zero value is ready to use.
type Network struct {
	mu     sync.Mutex
	byAddr map[string]*Transport
	byName map[string]*Transport // the newest transport of each name
	hosts  int
}

// NewTransport returns a transport for node name at a fresh fake address 127.0.x.y:7946. Calling it
// again with the same name models a restart on a new address; Isolate, Heal and Kill then act on
// the new one.
func (n *Network) NewTransport(name string) *Transport {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.byAddr == nil {
		n.byAddr = make(map[string]*Transport)
		n.byName = make(map[string]*Transport)
	}
	n.hosts++
	ip := net.IPv4(127, 0, byte(n.hosts>>8), byte(n.hosts))
	t := &Transport{
		net:      n,
		name:     name,
		ip:       ip,
		packetCh: make(chan *memberlist.Packet, 1024),
		streamCh: make(chan net.Conn),
		done:     make(chan struct{}),
		conns:    make(map[*conn]struct{}),
	}
	n.byAddr[t.Addr()] = t
	n.byName[name] = t
	return t
}

// Isolate drops every packet to and from node name and refuses its streams, both ways, and breaks
// its open streams, until Heal.
func (n *Network) Isolate(name string) { n.cut(name, func(t *Transport) { t.isolated = true }) }

// Kill isolates node name for good, as if its host vanished: Heal does not bring it back.
func (n *Network) Kill(name string) { n.cut(name, func(t *Transport) { t.killed = true }) }

// Heal undoes Isolate.
func (n *Network) Heal(name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.lookup(name).isolated = false
}

func (n *Network) cut(name string, mark func(*Transport)) {
	n.mu.Lock()
	t := n.lookup(name)
	mark(t)
	conns := t.takeConns()
	n.mu.Unlock()
	closeAll(conns)
}

func (n *Network) lookup(name string) *Transport {
	t, ok := n.byName[name]
	if !ok {
		panic(fmt.Sprintf("memnet: no node %q", name))
	}
	return t
}

// route returns the transport at addr if from may talk to it, else nil. Call with n.mu held.
func (n *Network) route(from *Transport, addr string) *Transport {
	to := n.byAddr[addr]
	if to == nil || !from.up() || !to.up() {
		return nil
	}
	return to
}

// Transport is one node's end of a Network; it implements memberlist.NodeAwareTransport.
type Transport struct {
	net      *Network
	name     string
	ip       net.IP
	packetCh chan *memberlist.Packet
	streamCh chan net.Conn
	done     chan struct{} // closed by Shutdown

	// Guarded by net.mu.
	isolated, killed, down bool
	conns                  map[*conn]struct{} // this side of every open stream
}

var _ memberlist.NodeAwareTransport = (*Transport)(nil)

// Addr is the transport's host:port.
func (t *Transport) Addr() string { return net.JoinHostPort(t.ip.String(), fmt.Sprint(port)) }

func (t *Transport) up() bool { return !t.isolated && !t.killed && !t.down }

// FinalAdvertiseAddr ignores what the node was configured with: the network chose the address.
func (t *Transport) FinalAdvertiseAddr(string, int) (net.IP, int, error) { return t.ip, port, nil }

func (t *Transport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress delivers b like UDP would: silently dropped when the peer is unreachable or its
// receive queue is full.
func (t *Transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	now := time.Now()
	t.net.mu.Lock()
	to := t.net.route(t, a.Addr)
	t.net.mu.Unlock()
	if to == nil {
		return now, nil
	}
	p := &memberlist.Packet{Buf: bytes.Clone(b), From: &net.UDPAddr{IP: t.ip, Port: port}, Timestamp: now}
	select {
	case to.packetCh <- p:
	default:
	}
	return now, nil
}

func (t *Transport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

func (t *Transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// DialAddressTimeout connects like TCP would: refused at once when the peer is unreachable.
func (t *Transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	t.net.mu.Lock()
	to := t.net.route(t, a.Addr)
	if to == nil {
		t.net.mu.Unlock()
		return nil, fmt.Errorf("memnet: dial %s: %w", a.Addr, syscall.ECONNREFUSED)
	}
	local, remote := net.Pipe()
	lc := t.track(local, &net.TCPAddr{IP: to.ip, Port: port})
	rc := to.track(remote, &net.TCPAddr{IP: t.ip, Port: port})
	t.net.mu.Unlock()

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case to.streamCh <- rc:
		return lc, nil
	case <-timer.C:
		closeAll([]*conn{lc, rc})
		return nil, fmt.Errorf("memnet: dial %s: %w", a.Addr, os.ErrDeadlineExceeded)
	case <-to.done:
		closeAll([]*conn{lc, rc})
		return nil, fmt.Errorf("memnet: dial %s: %w", a.Addr, syscall.ECONNREFUSED)
	}
}

func (t *Transport) StreamCh() <-chan net.Conn { return t.streamCh }

// Shutdown takes the node off the network for good.
func (t *Transport) Shutdown() error {
	t.net.mu.Lock()
	if t.down {
		t.net.mu.Unlock()
		return nil
	}
	t.down = true
	close(t.done)
	conns := t.takeConns()
	t.net.mu.Unlock()
	closeAll(conns)
	return nil
}

// track registers one end of a stream so that cutting t off breaks it. Call with net.mu held.
func (t *Transport) track(c net.Conn, remote net.Addr) *conn {
	tc := &conn{Conn: c, owner: t, local: &net.TCPAddr{IP: t.ip, Port: port}, remote: remote}
	t.conns[tc] = struct{}{}
	return tc
}

// takeConns empties t's stream set for closing outside the lock. Call with net.mu held.
func (t *Transport) takeConns() []*conn {
	out := make([]*conn, 0, len(t.conns))
	for c := range t.conns {
		out = append(out, c)
	}
	clear(t.conns)
	return out
}

func closeAll(conns []*conn) {
	for _, c := range conns {
		_ = c.Close()
	}
}

// conn is one end of a net.Pipe with real-looking addresses.
type conn struct {
	net.Conn
	owner         *Transport
	local, remote net.Addr
}

func (c *conn) LocalAddr() net.Addr  { return c.local }
func (c *conn) RemoteAddr() net.Addr { return c.remote }

func (c *conn) Close() error {
	c.owner.net.mu.Lock()
	delete(c.owner.conns, c)
	c.owner.net.mu.Unlock()
	return c.Conn.Close()
}
