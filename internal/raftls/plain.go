package raftls

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/internal/limits"
)

// PlainStreamLayer is raft's plain TCP stream layer, for an insecure cluster (--insecure, --dev),
// with the connection caps of StreamLayer and a deadline for a new connection's first byte. It
// authenticates nobody: anyone who reaches the port may speak raft, as --insecure documents. The
// caps only keep a flood from using up the node's descriptors, and the deadline keeps a silent
// connection from holding a slot (raft's transport never times out an incoming connection).
type PlainStreamLayer struct {
	ln        *limits.Listener
	advertise net.Addr
	firstByte time.Duration
}

var _ raft.StreamLayer = (*PlainStreamLayer)(nil)

// ListenPlain listens on bind (host:port). advertise is the address other nodes reach this one
// at (the listener's own when nil, which then needs a specific bind host); conns caps incoming
// connections (limits.PeerListenerConfig() when nil); a connection must send its first byte
// within firstByte (DefaultHandshakeTimeout when zero).
func ListenPlain(bind string, advertise net.Addr, conns *limits.ListenerConfig, firstByte time.Duration) (*PlainStreamLayer, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("raft listen: %w", err)
	}
	addr := advertise
	if addr == nil {
		addr = ln.Addr()
	}
	if ta, ok := addr.(*net.TCPAddr); !ok || ta.IP == nil || ta.IP.IsUnspecified() {
		_ = ln.Close()
		return nil, fmt.Errorf("raft listen: %s is not an address other nodes can reach; give an advertise address", addr)
	}
	if firstByte <= 0 {
		firstByte = DefaultHandshakeTimeout
	}
	return &PlainStreamLayer{ln: capped(ln, conns), advertise: advertise, firstByte: firstByte}, nil
}

// Accept returns the next connection within the caps, with a deadline on its first byte.
func (s *PlainStreamLayer) Accept() (net.Conn, error) {
	c, err := s.ln.Accept()
	if err != nil {
		return nil, err
	}
	if err := c.SetReadDeadline(time.Now().Add(s.firstByte)); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("raft accept: set first-byte deadline: %w", err)
	}
	return &firstByteConn{Conn: c}, nil
}

// Close stops listening; connections already accepted are raft's to close.
func (s *PlainStreamLayer) Close() error { return s.ln.Close() }

// Addr is the advertised address (raft stores it as this server's address).
func (s *PlainStreamLayer) Addr() net.Addr {
	if s.advertise != nil {
		return s.advertise
	}
	return s.ln.Addr()
}

// Dial connects to a raft peer within timeout.
func (s *PlainStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return net.DialTimeout("tcp", string(address), timeout)
}

// Stats are the connection cap's counters.
func (s *PlainStreamLayer) Stats() limits.ListenerStats { return s.ln.Stats() }

// firstByteConn lifts the accept-time read deadline once a byte has arrived: from then on the
// connection is raft's, which reads with no deadline between RPCs.
type firstByteConn struct {
	net.Conn
	once sync.Once
}

func (c *firstByteConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.once.Do(func() {
			if derr := c.Conn.SetReadDeadline(time.Time{}); derr != nil && err == nil && !errors.Is(derr, net.ErrClosed) {
				err = derr
			}
		})
	}
	return n, err
}
