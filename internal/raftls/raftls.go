// Package raftls is a hashicorp/raft StreamLayer over mutual TLS: raft.NewNetworkTransport
// given a StreamLayer from here speaks raft only with peers that hold a valid cluster
// certificate.
//
// Accept hands raft a connection only after its TLS handshake has succeeded, so a peer without
// a certificate from the cluster CA (or one that does not name a cluster server) is closed
// before raft decodes a single byte of it. Handshakes run in their own goroutines, each under a
// deadline, so a slow or silent client neither blocks Accept nor holds a goroutine forever.
// Connections are capped per remote IP and in total (internal/limits), counted from accept to
// close, so a flood of idle connections costs the node a bounded number of descriptors.
//
// PlainStreamLayer is its twin for an insecure cluster: the same caps, a deadline on the first
// byte instead of the handshake, and no authentication.
//
// It knows nothing of how certificates are made or renewed: it takes the tls.Configs that
// internal/pki builds (InternodeServerConfig, InternodeClientConfig).
package raftls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/internal/limits"
)

// DefaultHandshakeTimeout bounds one incoming TLS handshake. A cluster peer on a LAN finishes in
// milliseconds; five seconds leaves room for an overloaded node without letting a stalled client
// keep its slot under the connection cap for long.
const DefaultHandshakeTimeout = 5 * time.Second

// Config configures a StreamLayer.
type Config struct {
	// Server is the listener's TLS config; it must require and verify client certificates
	// (pki.InternodeServerConfig does).
	Server *tls.Config
	// Client returns the TLS config for one dial (pki.InternodeClientConfig), called per dial so
	// that a reloaded CA bundle is used.
	Client func() *tls.Config
	// Advertise is the address other nodes reach this one at; the listener's address if nil.
	Advertise net.Addr
	// HandshakeTimeout bounds an incoming handshake (DefaultHandshakeTimeout if zero).
	HandshakeTimeout time.Duration
	// VerifyPeer, when set, checks a peer's verified certificate after the handshake; a peer it
	// refuses is closed as one that failed the handshake (a certificate that names no node).
	VerifyPeer func(leaf *x509.Certificate) error
	// Conns caps incoming connections per remote IP and in total; nil means
	// limits.PeerListenerConfig().
	Conns  *limits.ListenerConfig
	Logger *slog.Logger
}

// Stats counts incoming connections.
type Stats struct {
	// Accepted is how many connections passed the TLS handshake and were handed to raft.
	Accepted uint64
	// Refused is how many failed the handshake (no, wrong or expired certificate, not TLS at all,
	// or too slow) and were closed.
	Refused uint64
	// Conns are the connection cap's counters: open connections and refusals by cap.
	Conns limits.ListenerStats
}

// StreamLayer implements raft.StreamLayer with mutual TLS.
type StreamLayer struct {
	ln        *limits.Listener
	cfg       Config
	log       *slog.Logger
	conns     chan net.Conn
	ctx       context.Context // cancelled by Close; aborts pending handshakes
	cancel    context.CancelFunc
	closeOnce sync.Once
	wg        sync.WaitGroup
	accepted  atomic.Uint64
	refused   atomic.Uint64
}

var _ raft.StreamLayer = (*StreamLayer)(nil)

// Listen listens on bind (host:port) and returns a StreamLayer serving it.
func Listen(bind string, cfg Config) (*StreamLayer, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("raft TLS listen: %w", err)
	}
	s, err := New(ln, cfg)
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	return s, nil
}

// New serves ln; Close closes it.
func New(ln net.Listener, cfg Config) (*StreamLayer, error) {
	if cfg.Server == nil || cfg.Client == nil {
		return nil, errors.New("raft TLS: both a server and a client TLS config are required")
	}
	if cfg.Server.ClientAuth != tls.RequireAndVerifyClientCert && cfg.Server.GetConfigForClient == nil {
		// Refuse a config that would let raft talk to anyone; pki's config decides per client.
		return nil, errors.New("raft TLS: the server config must require and verify client certificates")
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &StreamLayer{
		ln:     capped(ln, cfg.Conns),
		cfg:    cfg,
		log:    logger,
		conns:  make(chan net.Conn),
		ctx:    ctx,
		cancel: cancel,
	}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// capped puts ln under the connection caps conns (limits.PeerListenerConfig() when nil).
// Refusals are closed without a reply: raft's port speaks TLS or raft, never HTTP.
func capped(ln net.Listener, conns *limits.ListenerConfig) *limits.Listener {
	cfg := limits.PeerListenerConfig()
	if conns != nil {
		cfg = *conns
	}
	cfg.NoHTTPReply = true
	return limits.NewListener(ln, cfg)
}

// acceptLoop accepts TCP connections and starts a handshake for each. It never waits on a
// handshake, so one slow client cannot hold up the next peer.
func (s *StreamLayer) acceptLoop() {
	defer s.wg.Done()
	var delay time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			// Out of file descriptors and the like: back off as net/http does, keep serving.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("raft TLS: accept failed; retrying", "error", err, "retry_in", delay)
			select {
			case <-time.After(delay):
				continue
			case <-s.ctx.Done():
				return
			}
		}
		delay = 0
		s.wg.Add(1)
		go s.handshake(c)
	}
}

func (s *StreamLayer) handshake(c net.Conn) {
	defer s.wg.Done()
	tc := tls.Server(c, s.cfg.Server)
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err == nil && s.cfg.VerifyPeer != nil {
		err = s.verifyPeer(tc.ConnectionState())
	}
	if err != nil {
		_ = c.Close()
		if s.ctx.Err() == nil {
			s.log.Warn("raft TLS: refused connection", "remote", c.RemoteAddr().String(), "error", err)
		}
		s.refused.Add(1) // after the log line: once Stats shows the refusal, the log does too
		return
	}
	// Counted before the hand-off: once raft holds the connection, Stats must already show it.
	s.accepted.Add(1)
	select {
	case s.conns <- tc:
	case <-s.ctx.Done():
		s.accepted.Add(^uint64(0)) // not handed over after all
		_ = tc.Close()
	}
}

func (s *StreamLayer) verifyPeer(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the peer sent no certificate")
	}
	return s.cfg.VerifyPeer(cs.PeerCertificates[0])
}

// Accept returns the next connection whose handshake succeeded: its peer holds a certificate of
// the cluster. It returns net.ErrClosed after Close.
func (s *StreamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Close stops listening, aborts pending handshakes and waits for their goroutines.
// Connections already handed to raft are raft's to close.
func (s *StreamLayer) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.cancel()
		err = s.ln.Close()
		s.wg.Wait()
	})
	return err
}

// Addr is the advertised address (raft stores it as this server's address).
func (s *StreamLayer) Addr() net.Addr {
	if s.cfg.Advertise != nil {
		return s.cfg.Advertise
	}
	return s.ln.Addr()
}

// Dial connects to a raft peer and completes the TLS handshake (verifying the peer as a cluster
// server and presenting this node's certificate) within timeout.
func (s *StreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: s.cfg.Client()}
	c, err := d.DialContext(ctx, "tcp", string(address))
	if err != nil {
		return nil, fmt.Errorf("raft TLS dial %s: %w", address, err)
	}
	return c, nil
}

// Stats returns the connection counters.
func (s *StreamLayer) Stats() Stats {
	return Stats{Accepted: s.accepted.Load(), Refused: s.refused.Load(), Conns: s.ln.Stats()}
}
