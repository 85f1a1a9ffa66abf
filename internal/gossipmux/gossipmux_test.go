package gossipmux_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/taskworker/taskworker/internal/gossipmux"
	"github.com/taskworker/taskworker/internal/limits"
)

// waitTimeout is generous: CI machines are slow and shared.
const waitTimeout = 15 * time.Second

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // poll interval, not a wait for the condition itself
	}
}

func newTransport(t *testing.T, cfg gossipmux.Config) *gossipmux.Transport {
	t.Helper()
	if cfg.BindAddr == "" {
		cfg.BindAddr = "127.0.0.1"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	tr, err := gossipmux.New(cfg)
	if err != nil {
		t.Fatalf("new transport: %v", err)
	}
	t.Cleanup(func() { _ = tr.Shutdown() })
	return tr
}

// memberOpts varies what memberlist puts on the wire.
type memberOpts struct {
	key        []byte // gossip encryption key; nil = none
	label      string
	noCompress bool
	transport  memberlist.NodeAwareTransport // nil = a fresh gossipmux transport
}

func newMember(t *testing.T, name string, o memberOpts) (*memberlist.Memberlist, *gossipmux.Transport) {
	t.Helper()
	var mux *gossipmux.Transport
	tr := o.transport
	if tr == nil {
		mux = newTransport(t, gossipmux.Config{})
		tr = mux
	} else if m, ok := tr.(*gossipmux.Transport); ok {
		mux = m
	}
	c := memberlist.DefaultLANConfig()
	c.Name = name
	c.Transport = tr
	c.BindAddr = "127.0.0.1"
	if mux != nil {
		c.BindPort = mux.Addr().Port
	}
	c.ProbeInterval = 100 * time.Millisecond
	c.ProbeTimeout = 50 * time.Millisecond
	c.GossipInterval = 20 * time.Millisecond
	c.PushPullInterval = time.Second
	c.Label = o.label
	c.EnableCompression = !o.noCompress
	c.Logger = log.New(io.Discard, "", 0)
	if o.key != nil {
		kr, err := memberlist.NewKeyring(nil, o.key)
		if err != nil {
			t.Fatalf("keyring: %v", err)
		}
		c.Keyring = kr
	}
	m, err := memberlist.Create(c)
	if err != nil {
		t.Fatalf("create memberlist %s: %v", name, err)
	}
	t.Cleanup(func() { _ = m.Shutdown() })
	return m, mux
}

func gossipAddr(tr *gossipmux.Transport) string { return tr.Addr().String() }

func key(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func waitMembers(t *testing.T, n int, ms ...*memberlist.Memberlist) {
	t.Helper()
	waitFor(t, fmt.Sprintf("every member to see %d members", n), func() bool {
		for _, m := range ms {
			if m.NumMembers() != n {
				return false
			}
		}
		return true
	})
}

func TestRouteOf(t *testing.T) {
	for b := 0; b < 256; b++ {
		want := gossipmux.RouteGossip
		switch {
		case b == 0x16:
			want = gossipmux.RouteTLS
		case b >= 'A' && b <= 'Z':
			want = gossipmux.RoutePlainHTTP
		}
		if got := gossipmux.RouteOf(byte(b)); got != want {
			t.Errorf("RouteOf(%#x) = %v, want %v", b, got, want)
		}
	}
	// The first bytes memberlist streams start with (see TestMemberlistFirstBytesAreGossip) and the
	// lower-case letters no HTTP method uses stay gossip.
	for _, b := range []byte{0, 6, 8, 9, 10, 13, 244, 'g', 'p'} {
		if got := gossipmux.RouteOf(b); got != gossipmux.RouteGossip {
			t.Errorf("RouteOf(%#x) = %v, want gossip", b, got)
		}
	}
}

// TestMemberlistFirstBytesAreGossip captures the first byte memberlist really sends on a stream, for
// each setting that changes it, and checks it routes to gossip. If a memberlist upgrade ever made a
// stream start with 0x16 or a capital letter, this fails before the mux misroutes gossip.
func TestMemberlistFirstBytesAreGossip(t *testing.T) {
	cases := []struct {
		name string
		opts memberOpts
		want byte
	}{
		{"plain", memberOpts{noCompress: true}, 6}, // pushPullMsg
		{"compressed", memberOpts{}, 9},            // compressMsg
		{"encrypted", memberOpts{key: key(1)}, 10}, // encryptMsg
		{"labelled", memberOpts{label: "tw"}, 244}, // hasLabelMsg
		{"encrypted and labelled", memberOpts{key: key(1), label: "tw"}, 244},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, _ := newMember(t, "a", tc.opts)
			peer, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer peer.Close()
			first := make(chan byte, 1)
			go func() {
				c, err := peer.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				var b [1]byte
				if _, err := io.ReadFull(c, b[:]); err == nil {
					first <- b[0]
				}
			}()
			// The join fails (the peer hangs up); only the byte it sent matters.
			_, _ = m.Join([]string{peer.Addr().String()})
			select {
			case b := <-first:
				if b != tc.want {
					t.Errorf("first stream byte = %d, want %d", b, tc.want)
				}
				if r := gossipmux.RouteOf(b); r != gossipmux.RouteGossip {
					t.Errorf("memberlist's first byte %d routes to %v", b, r)
				}
			case <-time.After(waitTimeout):
				t.Fatal("memberlist sent no stream to the peer")
			}
		})
	}
}

func TestMembersJoinOverMux(t *testing.T) {
	cases := []struct {
		name string
		opts memberOpts
	}{
		{"plain", memberOpts{noCompress: true}},
		{"compressed", memberOpts{}},
		{"encrypted", memberOpts{key: key(7)}},
		{"encrypted and labelled", memberOpts{key: key(7), label: "tw"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, ta := newMember(t, "a", tc.opts)
			b, _ := newMember(t, "b", tc.opts)
			c, _ := newMember(t, "c", tc.opts)
			for _, m := range []*memberlist.Memberlist{b, c} {
				if _, err := m.Join([]string{gossipAddr(ta)}); err != nil {
					t.Fatalf("join: %v", err)
				}
			}
			waitMembers(t, 3, a, b, c)
			// Every member advertises its real gossip port, and the others reach it on it.
			for _, n := range a.Members() {
				if n.Port == 0 || n.Addr.String() != "127.0.0.1" {
					t.Errorf("member %s advertises %s:%d", n.Name, n.Addr, n.Port)
				}
			}
		})
	}
}

func TestWrongGossipKeyCannotJoin(t *testing.T) {
	cases := []struct {
		name string
		key  []byte
	}{
		{"different key", key(2)},
		{"no key", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, ta := newMember(t, "a", memberOpts{key: key(1)})
			b, _ := newMember(t, "b", memberOpts{key: key(1)})
			if _, err := b.Join([]string{gossipAddr(ta)}); err != nil {
				t.Fatalf("join with the right key: %v", err)
			}
			waitMembers(t, 2, a, b)

			intruder, _ := newMember(t, "intruder", memberOpts{key: tc.key})
			if _, err := intruder.Join([]string{gossipAddr(ta)}); err == nil {
				t.Fatal("join with the wrong key succeeded")
			}
			if n := intruder.NumMembers(); n != 1 {
				t.Errorf("intruder sees %d members, want only itself", n)
			}
			for _, n := range a.Members() {
				if n.Name == "intruder" {
					t.Errorf("the cluster lists the intruder")
				}
			}
		})
	}
}

// selfSigned returns a server certificate for 127.0.0.1 and a pool that trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "gossipmux test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv, Leaf: leaf}, pool
}

// serve runs an http.Server on tr.Internode() until the test ends; tlsCert nil serves plain HTTP.
// The handler counts its calls and says whether the request came over TLS.
func serve(t *testing.T, tr *gossipmux.Transport, tlsCert *tls.Certificate) *atomic.Int64 {
	t.Helper()
	var calls atomic.Int64
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			fmt.Fprintf(w, "internode tls=%t", r.TLS != nil)
		}),
		ReadHeaderTimeout: waitTimeout,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	errc := make(chan error, 1)
	go func() {
		if tlsCert != nil {
			srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{*tlsCert}}
			errc <- srv.ServeTLS(tr.Internode(), "", "")
			return
		}
		errc <- srv.Serve(tr.Internode())
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	return &calls
}

func httpClient(pool *x509.CertPool) *http.Client {
	return &http.Client{
		Timeout: waitTimeout,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: pool},
			DisableKeepAlives: true,
		},
	}
}

func get(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body of %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// TestTLSAndGossipShareThePort serves TLS on the internode listener of a node that gossips on the same
// port, and checks both work: a TLS client dialing the gossip address is answered, and a second
// member joins through that address.
func TestTLSAndGossipShareThePort(t *testing.T) {
	a, ta := newMember(t, "a", memberOpts{key: key(3)})
	cert, pool := selfSigned(t)
	calls := serve(t, ta, &cert)

	b, _ := newMember(t, "b", memberOpts{key: key(3)})
	if _, err := b.Join([]string{gossipAddr(ta)}); err != nil {
		t.Fatalf("join: %v", err)
	}
	waitMembers(t, 2, a, b)

	code, body := get(t, httpClient(pool), "https://"+gossipAddr(ta)+"/v1/internode")
	if code != http.StatusOK || body != "internode tls=true" {
		t.Errorf("TLS GET = %d %q, want 200 %q", code, body, "internode tls=true")
	}
	if calls.Load() != 1 {
		t.Errorf("handler ran %d times, want 1", calls.Load())
	}
	// Gossip still flows after the internode call: a third member joins.
	c, _ := newMember(t, "c", memberOpts{key: key(3)})
	if _, err := c.Join([]string{gossipAddr(ta)}); err != nil {
		t.Fatalf("join after TLS call: %v", err)
	}
	waitMembers(t, 3, a, b, c)
}

func TestPlainHTTP(t *testing.T) {
	cases := []struct {
		name      string
		allow     bool
		wantCode  int
		wantBody  string
		wantCalls int64
	}{
		{"allowed in an insecure cluster", true, http.StatusOK, "internode tls=false", 1},
		{"refused in a secure cluster", false, http.StatusBadRequest, "TLS-only", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTransport(t, gossipmux.Config{AllowPlainHTTP: tc.allow})
			calls := serve(t, tr, nil)
			code, body := get(t, httpClient(nil), "http://"+gossipAddr(tr)+"/v1/internode")
			if code != tc.wantCode || !strings.Contains(body, tc.wantBody) {
				t.Errorf("plain GET = %d %q, want %d containing %q", code, body, tc.wantCode, tc.wantBody)
			}
			if got := calls.Load(); got != tc.wantCalls {
				t.Errorf("handler ran %d times, want %d", got, tc.wantCalls)
			}
		})
	}
}

// TestTLSAllowedWhenPlainRefused: refusing plain HTTP must not refuse TLS.
func TestTLSAllowedWhenPlainRefused(t *testing.T) {
	tr := newTransport(t, gossipmux.Config{AllowPlainHTTP: false})
	cert, pool := selfSigned(t)
	serve(t, tr, &cert)
	if code, _ := get(t, httpClient(pool), "https://"+gossipAddr(tr)+"/"); code != http.StatusOK {
		t.Errorf("TLS GET = %d, want 200", code)
	}
}

// dialIdle opens connections that send nothing.
func dialIdle(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	var conns []net.Conn
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		conns = append(conns, c)
	}
	return conns
}

// TestIdleClientsDoNotBlock holds silent connections open for longer than the test runs (the peek
// timeout is a minute) and checks TLS calls and gossip joins are served meanwhile.
func TestIdleClientsDoNotBlock(t *testing.T) {
	ta := newTransport(t, gossipmux.Config{PeekTimeout: time.Minute})
	a, _ := newMember(t, "a", memberOpts{transport: ta})
	dialIdle(t, gossipAddr(ta), 20)

	cert, pool := selfSigned(t)
	serve(t, ta, &cert)
	if code, _ := get(t, httpClient(pool), "https://"+gossipAddr(ta)+"/"); code != http.StatusOK {
		t.Errorf("TLS GET beside idle clients = %d, want 200", code)
	}
	b, _ := newMember(t, "b", memberOpts{})
	if _, err := b.Join([]string{gossipAddr(ta)}); err != nil {
		t.Fatalf("join beside idle clients: %v", err)
	}
	waitMembers(t, 2, a, b)
}

// TestIdleFloodIsCapped floods the port with silent connections from one address, then from others:
// the flooding address gets its share, the whole flood no more than the total, the rest are closed at
// accept, and a member from another address still joins and makes TLS calls while the total has room.
// Connections handed to memberlist and to the internode server give their slots back when closed.
func TestIdleFloodIsCapped(t *testing.T) {
	ta := newTransport(t, gossipmux.Config{PeekTimeout: time.Minute,
		Conns: &limits.ListenerConfig{MaxConnsPerClient: 4, MaxConns: 12, Reserve: -1}})
	a, _ := newMember(t, "a", memberOpts{transport: ta})
	addr := gossipAddr(ta)
	flood := func(src string, n int) []net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: waitTimeout}
		var cs []net.Conn
		for range n {
			c, err := d.Dial("tcp", addr)
			if err != nil {
				t.Fatalf("dial from %s: %v", src, err)
			}
			t.Cleanup(func() { _ = c.Close() })
			cs = append(cs, c)
		}
		return cs
	}
	cs := flood("127.0.0.2", 30)
	waitFor(t, "26 per-address refusals", func() bool { return ta.Stats().RejectedPerClient == 26 })
	if st := ta.Stats(); st.Open != 4 {
		t.Fatalf("stats %+v, want the flooding address's 4 open", st)
	}
	last := cs[len(cs)-1]
	_ = last.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := last.Read(make([]byte, 1)); !isClosedByPeer(err) {
		t.Fatalf("read on a refused connection = %v, want it closed at accept", err)
	}

	cert, pool := selfSigned(t)
	serve(t, ta, &cert)
	if code, _ := get(t, httpClient(pool), "https://"+addr+"/"); code != http.StatusOK {
		t.Errorf("TLS GET during the flood = %d, want 200", code)
	}
	b, _ := newMember(t, "b", memberOpts{})
	if _, err := b.Join([]string{addr}); err != nil {
		t.Fatalf("join during the flood: %v", err)
	}
	waitMembers(t, 2, a, b)
	// The TLS call and the join's push/pull are over; their slots are free again.
	waitFor(t, "only the flood's slots held", func() bool { return ta.Stats().Open == 4 })

	flood("127.0.0.3", 4)
	flood("127.0.0.4", 4)
	waitFor(t, "the total reached", func() bool { return ta.Stats().Open == 12 })
	flood("127.0.0.5", 3)
	waitFor(t, "3 global refusals", func() bool { return ta.Stats().RejectedGlobal == 3 })
	if st := ta.Stats(); st.Open != 12 {
		t.Fatalf("stats %+v, want 12 open", st)
	}
}

// isClosedByPeer says whether a read error means the other side closed, as opposed to our own deadline.
func isClosedByPeer(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return err != nil
}

func TestIdleClientClosedAfterPeekTimeout(t *testing.T) {
	tr := newTransport(t, gossipmux.Config{PeekTimeout: 50 * time.Millisecond})
	c := dialIdle(t, gossipAddr(tr), 1)[0]
	_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := c.Read(make([]byte, 1)); !isClosedByPeer(err) {
		t.Errorf("read on an idle connection = %v, want the transport to close it", err)
	}
}

func TestShutdown(t *testing.T) {
	tr, err := gossipmux.New(gossipmux.Config{
		BindAddr:       "127.0.0.1",
		AllowPlainHTTP: true,
		PeekTimeout:    time.Minute,
		Logger:         slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	idle := dialIdle(t, gossipAddr(tr), 1)[0]
	// The kernel queues connections in order and the transport accepts them in order, so once a
	// connection dialed after the idle one comes out of Internode(), the idle one is in the
	// transport's hands, waiting for its first byte: Shutdown must close it, not wait it out.
	later := dialIdle(t, gossipAddr(tr), 1)[0]
	if _, err := io.WriteString(later, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	c, err := tr.Internode().Accept()
	if err != nil {
		t.Fatalf("accept the later connection: %v", err)
	}
	_ = c.Close()

	accepted := make(chan error, 1)
	go func() {
		c, err := tr.Internode().Accept()
		if err == nil {
			_ = c.Close()
		}
		accepted <- err
	}()

	done := make(chan struct{})
	go func() { _ = tr.Shutdown(); close(done) }()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatal("Shutdown did not return while a client was idle")
	}
	select {
	case err := <-accepted:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after Shutdown = %v, want net.ErrClosed", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Shutdown did not unblock Accept")
	}
	if _, err := tr.Internode().Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("a later Accept = %v, want net.ErrClosed", err)
	}
	_ = idle.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := idle.Read(make([]byte, 1)); !isClosedByPeer(err) {
		t.Errorf("idle client read after Shutdown = %v, want closed", err)
	}
	if _, err := net.DialTimeout("tcp", gossipAddr(tr), time.Second); err == nil {
		t.Error("dial after Shutdown succeeded")
	}
	if err := tr.Shutdown(); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
}

// TestInternodeCloseKeepsGossip: the internode server stopping must not take gossip down with it.
func TestInternodeCloseKeepsGossip(t *testing.T) {
	a, ta := newMember(t, "a", memberOpts{})
	if err := ta.Internode().Close(); err != nil {
		t.Fatal(err)
	}
	_, pool := selfSigned(t)
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: waitTimeout}, "tcp", gossipAddr(ta), &tls.Config{RootCAs: pool})
	if err == nil {
		conn.Close()
		t.Fatal("TLS handshake succeeded with the internode listener closed")
	}
	b, _ := newMember(t, "b", memberOpts{})
	if _, err := b.Join([]string{gossipAddr(ta)}); err != nil {
		t.Fatalf("join after closing the internode listener: %v", err)
	}
	waitMembers(t, 2, a, b)
}

// TestStreamReplaysFirstByte: memberlist must see the whole stream, including the byte used to route it.
func TestStreamReplaysFirstByte(t *testing.T) {
	ta := newTransport(t, gossipmux.Config{})
	tb := newTransport(t, gossipmux.Config{})
	msg := []byte("\x06push-pull state")
	c, err := ta.DialAddressTimeout(memberlist.Address{Addr: gossipAddr(tb), Name: "b"}, waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-tb.StreamCh():
		defer s.Close()
		_ = s.SetReadDeadline(time.Now().Add(waitTimeout))
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(s, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Errorf("stream read %q, want %q", got, msg)
		}
	case <-time.After(waitTimeout):
		t.Fatal("no stream reached StreamCh")
	}
}

// TestPacketsUseTheGossipPort: datagrams leave from and arrive at the one bound port.
func TestPacketsUseTheGossipPort(t *testing.T) {
	ta := newTransport(t, gossipmux.Config{})
	tb := newTransport(t, gossipmux.Config{})
	msg := []byte("ping")
	if _, err := ta.WriteToAddress(msg, memberlist.Address{Addr: gossipAddr(tb), Name: "b"}); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-tb.PacketCh():
		if !bytes.Equal(p.Buf, msg) {
			t.Errorf("packet %q, want %q", p.Buf, msg)
		}
		if p.From.String() != gossipAddr(ta) {
			t.Errorf("packet from %s, want the sender's gossip port %s", p.From, gossipAddr(ta))
		}
		if p.Timestamp.IsZero() {
			t.Error("packet has no timestamp")
		}
	case <-time.After(waitTimeout):
		t.Fatal("no packet arrived")
	}
}

func TestPortZeroBindsUDPAndTCPToOnePort(t *testing.T) {
	tr := newTransport(t, gossipmux.Config{BindPort: 0})
	port := tr.Addr().Port
	if port == 0 {
		t.Fatal("no port picked")
	}
	if l, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}); err == nil {
		l.Close()
		t.Errorf("UDP port %d is free: the transport did not bind it", port)
	}
	if l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}); err == nil {
		l.Close()
		t.Errorf("TCP port %d is free: the transport did not bind it", port)
	}
	if got := tr.Internode().Addr().String(); got != gossipAddr(tr) {
		t.Errorf("internode listener address %s, want the gossip address %s", got, gossipAddr(tr))
	}
}

func TestFixedPortInUseFails(t *testing.T) {
	taken := newTransport(t, gossipmux.Config{})
	_, err := gossipmux.New(gossipmux.Config{BindAddr: "127.0.0.1", BindPort: taken.Addr().Port})
	if err == nil {
		t.Fatal("New on a port in use succeeded")
	}
}

func TestFinalAdvertiseAddr(t *testing.T) {
	tr := newTransport(t, gossipmux.Config{})
	bound := tr.Addr().Port
	cases := []struct {
		name     string
		ip       string
		port     int
		wantIP   string
		wantPort int
		wantErr  bool
	}{
		{"nothing configured: the bound address", "", 0, "127.0.0.1", bound, false},
		{"a port without an IP is ignored", "", 7946, "127.0.0.1", bound, false},
		{"configured IP and port", "10.0.0.5", 8000, "10.0.0.5", 8000, false},
		{"configured IP, bound port", "10.0.0.5", 0, "10.0.0.5", bound, false},
		{"not an IP", "gossip.example", 8000, "", 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ip, port, err := tr.FinalAdvertiseAddr(tc.ip, tc.port)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("got %s:%d, want an error", ip, port)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ip.String() != tc.wantIP || port != tc.wantPort {
				t.Errorf("got %s:%d, want %s:%d", ip, port, tc.wantIP, tc.wantPort)
			}
			if len(ip) != net.IPv4len {
				t.Errorf("IPv4 address in %d-byte form; memberlist wants 4", len(ip))
			}
		})
	}
}
