package raftls

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/internal/limits"
	"github.com/taskworker/taskworker/internal/pki"
)

const cluster = "global"

var serverName = pki.ServerName(cluster)

// waitFor polls cond until it holds or a generous deadline passes (CI machines are slow).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func newCA(t *testing.T) *pki.CA {
	t.Helper()
	ca, err := pki.CreateCA(cluster, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func identity(t *testing.T, ca *pki.CA, spec pki.NodeSpec) *pki.Identity {
	t.Helper()
	id, err := ca.IssueIdentity(spec, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return id
}

type streamOpts struct {
	handshakeTimeout time.Duration
	logs             io.Writer
	conns            *limits.ListenerConfig
}

// newStream listens on 127.0.0.1 with id as this node's identity.
func newStream(t *testing.T, id *pki.Identity, o streamOpts) *StreamLayer {
	t.Helper()
	h := pki.NewHolder(id)
	if o.logs == nil {
		o.logs = io.Discard
	}
	s, err := Listen("127.0.0.1:0", Config{
		Server:           pki.InternodeServerConfig(h, serverName),
		Client:           func() *tls.Config { return pki.InternodeClientConfig(h, serverName) },
		HandshakeTimeout: o.handshakeTimeout,
		Conns:            o.conns,
		Logger:           slog.New(slog.NewTextHandler(o.logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func newTransport(t *testing.T, s raft.StreamLayer) *raft.NetworkTransport {
	t.Helper()
	tr := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: s, MaxPool: 3, Timeout: 10 * time.Second, Logger: hclog.NewNullLogger(),
	})
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

// appendEntries sends one AppendEntries with term from client to server's address.
func appendEntries(client *raft.NetworkTransport, server raft.ServerAddress, term uint64) error {
	var resp raft.AppendEntriesResponse
	return client.AppendEntries("server", server, &raft.AppendEntriesRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("client"), Addr: []byte("client")},
		Term:      term,
	}, &resp)
}

// answerOne reads one RPC from the consumer channel, answers it, and returns its term.
func answerOne(t *testing.T, tr *raft.NetworkTransport) uint64 {
	t.Helper()
	select {
	case rpc := <-tr.Consumer():
		req, ok := rpc.Command.(*raft.AppendEntriesRequest)
		if !ok {
			t.Fatalf("unexpected RPC %T", rpc.Command)
		}
		rpc.Respond(&raft.AppendEntriesResponse{Term: req.Term, Success: true}, nil)
		return req.Term
	case <-time.After(60 * time.Second):
		t.Fatal("no RPC reached the consumer")
		return 0
	}
}

// rawAppendEntries is an AppendEntries RPC as raft's NetworkTransport puts it on the wire
// (a type byte, then the msgpack request), as an attacker's bare raft client would send it.
func rawAppendEntries(t *testing.T, term uint64) []byte {
	t.Helper()
	var buf bytes.Buffer
	buf.WriteByte(0) // rpcAppendEntries
	req := raft.AppendEntriesRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("evil"), Addr: []byte("evil")},
		Term:      term,
	}
	if err := codec.NewEncoder(&buf, &codec.MsgpackHandle{}).Encode(&req); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// counterFSM records applied commands; replicas are compared at the end.
type counterFSM struct {
	mu      sync.Mutex
	applied []string
}

func (f *counterFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = append(f.applied, string(l.Data))
	return len(f.applied)
}

func (f *counterFSM) Applied() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.applied...)
}

func (f *counterFSM) Snapshot() (raft.FSMSnapshot, error) { return fsmSnapshot(f.Applied()), nil }

func (f *counterFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var applied []string
	if err := json.NewDecoder(rc).Decode(&applied); err != nil {
		return err
	}
	f.mu.Lock()
	f.applied = applied
	f.mu.Unlock()
	return nil
}

type fsmSnapshot []string

func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode([]string(s)); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (fsmSnapshot) Release() {}

func TestThreeNodeRaftClusterOverMutualTLS(t *testing.T) {
	ca := newCA(t)
	type node struct {
		raft   *raft.Raft
		fsm    *counterFSM
		stream *StreamLayer
	}
	names := []string{"n1", "n2", "n3"}
	var nodes []*node
	var servers []raft.Server
	var transports []*raft.NetworkTransport
	for _, name := range names {
		s := newStream(t, identity(t, ca, pki.NodeSpec{Name: name, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}), streamOpts{})
		transports = append(transports, newTransport(t, s))
		nodes = append(nodes, &node{fsm: &counterFSM{}, stream: s})
		servers = append(servers, raft.Server{ID: raft.ServerID(name), Address: raft.ServerAddress(s.Addr().String())})
	}
	for i, n := range nodes {
		c := raft.DefaultConfig()
		c.LocalID = raft.ServerID(names[i])
		c.HeartbeatTimeout = 500 * time.Millisecond
		c.ElectionTimeout = 500 * time.Millisecond
		c.LeaderLeaseTimeout = 250 * time.Millisecond
		c.CommitTimeout = 20 * time.Millisecond
		c.Logger = hclog.NewNullLogger()
		logs, snaps := raft.NewInmemStore(), raft.NewInmemSnapshotStore()
		// Bootstrapping every server with the same configuration is allowed and avoids
		// depending on which one starts first.
		if err := raft.BootstrapCluster(c, logs, logs, snaps, transports[i], raft.Configuration{Servers: servers}); err != nil {
			t.Fatal(err)
		}
		r, err := raft.NewRaft(c, n.fsm, logs, logs, snaps, transports[i])
		if err != nil {
			t.Fatal(err)
		}
		n.raft = r
		t.Cleanup(func() { _ = r.Shutdown().Error() })
	}

	var leader *raft.Raft
	waitFor(t, "one leader", func() bool {
		leader = nil
		count := 0
		for _, n := range nodes {
			if n.raft.State() == raft.Leader {
				leader = n.raft
				count++
			}
		}
		return count == 1
	})
	for _, cmd := range []string{"first", "second", "third"} {
		if err := leader.Apply([]byte(cmd), 30*time.Second).Error(); err != nil {
			t.Fatalf("apply %s: %v", cmd, err)
		}
	}
	want := []string{"first", "second", "third"}
	waitFor(t, "every replica to apply every command", func() bool {
		for _, n := range nodes {
			if strings.Join(n.fsm.Applied(), ",") != strings.Join(want, ",") {
				return false
			}
		}
		return true
	})
	var accepted uint64
	for i, n := range nodes {
		st := n.stream.Stats()
		if st.Refused != 0 {
			t.Errorf("%s refused %d cluster connections", names[i], st.Refused)
		}
		accepted += st.Accepted
	}
	// The leader dials each follower at least once; a node that was only ever leader may
	// accept none itself.
	if accepted < 2 {
		t.Errorf("%d connections accepted in all: raft did not run over this transport", accepted)
	}
}

// A bare raft client, as in issue 9's attack, writes a valid AppendEntries in clear text. The
// same bytes reach raft's consumer through a plain TCP transport (so they are real raft RPCs),
// and are refused by the TLS transport before raft decodes them.
func TestRawRaftBytesAreRefusedBeforeDecoding(t *testing.T) {
	const evilTerm, goodTerm = 99, 42
	attack := rawAppendEntries(t, evilTerm)

	t.Run("control: the bytes are a raft RPC on a plain transport", func(t *testing.T) {
		plain, err := raft.NewTCPTransportWithLogger("127.0.0.1:0", nil, 1, 10*time.Second, hclog.NewNullLogger())
		if err != nil {
			t.Fatal(err)
		}
		defer plain.Close()
		c, err := net.Dial("tcp", string(plain.LocalAddr()))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(attack); err != nil {
			t.Fatal(err)
		}
		select {
		case rpc := <-plain.Consumer():
			if req, ok := rpc.Command.(*raft.AppendEntriesRequest); !ok || req.Term != evilTerm {
				t.Fatalf("got %#v", rpc.Command)
			}
			rpc.Respond(&raft.AppendEntriesResponse{}, nil)
		case <-time.After(60 * time.Second):
			t.Fatal("the raw RPC did not reach a plain transport; the attack bytes are wrong")
		}
	})

	t.Run("the TLS transport refuses them", func(t *testing.T) {
		ca := newCA(t)
		logs := &syncBuffer{}
		srvStream := newStream(t, identity(t, ca, pki.NodeSpec{Name: "server"}), streamOpts{logs: logs})
		srv := newTransport(t, srvStream)

		c, err := net.Dial("tcp", srvStream.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(attack); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
		_, err = io.ReadAll(c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the server kept the raw connection open")
		}
		waitFor(t, "the refusal to be counted", func() bool { return srvStream.Stats().Refused == 1 })
		if st := srvStream.Stats(); st.Accepted != 0 {
			t.Fatalf("stats %+v: the raw connection was handed to raft", st)
		}
		if !strings.Contains(logs.String(), "refused connection") || !strings.Contains(logs.String(), c.LocalAddr().String()) {
			t.Errorf("no log line names the refused peer: %q", logs.String())
		}

		// Nothing is waiting on the consumer channel, and the first RPC that does arrive is a
		// legitimate peer's: the raw one never got there.
		select {
		case rpc := <-srv.Consumer():
			t.Fatalf("an RPC reached raft: %#v", rpc.Command)
		default:
		}
		peer := newTransport(t, newStream(t, identity(t, ca, pki.NodeSpec{Name: "peer"}), streamOpts{}))
		errc := make(chan error, 1)
		go func() { errc <- appendEntries(peer, srv.LocalAddr(), goodTerm) }()
		if term := answerOne(t, srv); term != goodTerm {
			t.Fatalf("first RPC to reach raft has term %d, want the legitimate %d", term, goodTerm)
		}
		if err := <-errc; err != nil {
			t.Fatalf("legitimate RPC: %v", err)
		}
	})
}

func TestPeersWithoutAClusterCertificateAreRefused(t *testing.T) {
	ca := newCA(t)
	srvStream := newStream(t, identity(t, ca, pki.NodeSpec{Name: "server"}), streamOpts{})
	srv := newTransport(t, srvStream)
	trustOurCA := pki.NewHolder(identity(t, ca, pki.NodeSpec{Name: "trust"}))

	expired, err := ca.IssueIdentity(pki.NodeSpec{Name: "old", Validity: time.Hour}, time.Now().Add(-3*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cert *pki.Identity // nil: no certificate
	}{
		{"certificate from another CA", identity(t, newCA(t), pki.NodeSpec{Name: "intruder"})},
		{"client-only certificate of the cluster CA", identity(t, ca, pki.NodeSpec{Role: pki.RoleClient})},
		{"expired certificate of the cluster CA", expired},
		{"no certificate", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := srvStream.Stats()
			// The intruder trusts our CA, so only the server's check of the intruder can fail.
			ch := pki.NewHolder(tc.cert)
			cli, err := New(mustListen(t), Config{
				Server: pki.InternodeServerConfig(ch, serverName),
				Client: func() *tls.Config {
					cfg := pki.InternodeClientConfig(trustOurCA, serverName)
					cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
						if tc.cert == nil {
							return &tls.Certificate{}, nil
						}
						return &tc.cert.Cert, nil
					}
					return cfg
				},
				Logger: slog.New(slog.DiscardHandler),
			})
			if err != nil {
				t.Fatal(err)
			}
			intruder := newTransport(t, cli)
			if err := appendEntries(intruder, srv.LocalAddr(), 7); err == nil {
				t.Fatal("the RPC succeeded")
			}
			waitFor(t, "the refusal to be counted", func() bool { return srvStream.Stats().Refused == before.Refused+1 })
			if srvStream.Stats().Accepted != before.Accepted {
				t.Fatal("the connection was handed to raft")
			}
			select {
			case rpc := <-srv.Consumer():
				t.Fatalf("an RPC reached raft: %#v", rpc.Command)
			default:
			}
		})
	}
}

func mustListen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// Silent clients hold their handshakes open; a cluster peer arriving after them is served
// at once, well inside their handshake deadline.
func TestSlowHandshakesDoNotBlockOtherPeers(t *testing.T) {
	ca := newCA(t)
	srvStream := newStream(t, identity(t, ca, pki.NodeSpec{Name: "server"}), streamOpts{handshakeTimeout: 10 * time.Minute})
	srv := newTransport(t, srvStream)
	var slow []net.Conn
	for range 20 {
		c, err := net.Dial("tcp", srvStream.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// Half a TLS record header, then nothing.
		if _, err := c.Write([]byte{0x16, 0x03}); err != nil {
			t.Fatal(err)
		}
		slow = append(slow, c)
	}
	peer := newTransport(t, newStream(t, identity(t, ca, pki.NodeSpec{Name: "peer"}), streamOpts{}))
	errc := make(chan error, 1)
	go func() { errc <- appendEntries(peer, srv.LocalAddr(), 5) }()
	if term := answerOne(t, srv); term != 5 {
		t.Fatalf("term %d", term)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	// The slow connections are still pending (open, neither refused nor accepted): the peer was
	// not served because they had been dealt with first.
	if st := srvStream.Stats(); st.Refused != 0 || st.Accepted != 1 {
		t.Fatalf("stats %+v", st)
	}
	_ = slow[0].SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := slow[0].Read(make([]byte, 1)); err == nil || !isTimeout(err) {
		t.Fatalf("slow connection: %v, want it still open", err)
	}
}

// A flood of silent connections from one address takes that address's share and no more, a
// flood from several takes the total and no more, and a peer from another address is served as
// long as the total has room; refused connections are closed at once, not held for the handshake.
func TestConnectionFloodIsCappedPerAddressAndInTotal(t *testing.T) {
	ca := newCA(t)
	srvStream := newStream(t, identity(t, ca, pki.NodeSpec{Name: "server"}), streamOpts{
		handshakeTimeout: 10 * time.Minute,
		conns:            &limits.ListenerConfig{MaxConnsPerClient: 4, MaxConns: 8, Reserve: -1},
	})
	srv := newTransport(t, srvStream)
	addr := srvStream.Addr().String()
	flood := func(src string, n int) []net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 30 * time.Second}
		var cs []net.Conn
		for range n {
			c, err := d.Dial("tcp", addr)
			if err != nil {
				t.Fatalf("dial from %s: %v", src, err)
			}
			t.Cleanup(func() { _ = c.Close() })
			_, _ = c.Write([]byte{0x16, 0x03}) // half a TLS record header, then nothing
			cs = append(cs, c)
		}
		return cs
	}
	closedByServer := func(c net.Conn) bool {
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, err := c.Read(make([]byte, 1))
		return err != nil && !isTimeout(err)
	}

	cs := flood("127.0.0.2", 30)
	waitFor(t, "26 per-address refusals", func() bool { return srvStream.Stats().Conns.RejectedPerClient == 26 })
	if st := srvStream.Stats().Conns; st.Open != 4 {
		t.Fatalf("conns %+v, want the flooding address's 4", st)
	}
	if !closedByServer(cs[len(cs)-1]) {
		t.Fatal("a refused connection was not closed at once")
	}

	peer := newTransport(t, newStream(t, identity(t, ca, pki.NodeSpec{Name: "peer"}), streamOpts{}))
	errc := make(chan error, 1)
	go func() { errc <- appendEntries(peer, srv.LocalAddr(), 7) }()
	if term := answerOne(t, srv); term != 7 {
		t.Fatalf("term %d", term)
	}
	if err := <-errc; err != nil {
		t.Fatalf("peer during a one-address flood: %v", err)
	}

	// The peer holds one slot now; two more addresses take the rest and the total holds.
	flood("127.0.0.3", 4)
	flood("127.0.0.4", 4)
	waitFor(t, "the listener full", func() bool { return srvStream.Stats().Conns.Open == 8 })
	last := flood("127.0.0.5", 1)
	waitFor(t, "a global refusal", func() bool { return srvStream.Stats().Conns.RejectedGlobal >= 1 })
	if !closedByServer(last[0]) {
		t.Fatal("a connection over the total was not closed at once")
	}
	if st := srvStream.Stats().Conns; st.Open != 8 {
		t.Fatalf("conns %+v, want 8 open", st)
	}
}

func TestSlowHandshakeIsCutAtTheDeadline(t *testing.T) {
	ca := newCA(t)
	srvStream := newStream(t, identity(t, ca, pki.NodeSpec{Name: "server"}), streamOpts{handshakeTimeout: 200 * time.Millisecond})
	c, err := net.Dial("tcp", srvStream.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.ReadAll(c); isTimeout(err) {
		t.Fatal("the server did not close a silent connection")
	}
	waitFor(t, "the refusal to be counted", func() bool { return srvStream.Stats().Refused == 1 })
}

func TestDialRefusesAServerOfAnotherCA(t *testing.T) {
	ours, theirs := newCA(t), newCA(t)
	impostor := newStream(t, identity(t, theirs, pki.NodeSpec{Name: "impostor"}), streamOpts{})
	me := newStream(t, identity(t, ours, pki.NodeSpec{Name: "me"}), streamOpts{})
	if c, err := me.Dial(raft.ServerAddress(impostor.Addr().String()), 30*time.Second); err == nil {
		c.Close()
		t.Fatal("dialed a server of another CA")
	}
	friend := newStream(t, identity(t, ours, pki.NodeSpec{Name: "friend"}), streamOpts{})
	c, err := me.Dial(raft.ServerAddress(friend.Addr().String()), 30*time.Second)
	if err != nil {
		t.Fatalf("dial a cluster server: %v", err)
	}
	c.Close()
}

func TestCloseUnblocksAcceptAndPendingHandshakes(t *testing.T) {
	ca := newCA(t)
	s := newStream(t, identity(t, ca, pki.NodeSpec{Name: "server"}), streamOpts{handshakeTimeout: 10 * time.Minute})
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	acceptErr := make(chan error, 1)
	go func() { _, err := s.Accept(); acceptErr <- err }()
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Close waited for a pending handshake")
	}
	if err := <-acceptErr; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.ReadAll(c); isTimeout(err) {
		t.Fatal("the pending connection was left open")
	}
}

func TestNewRefusesAServerConfigThatDoesNotVerifyClients(t *testing.T) {
	ln := mustListen(t)
	defer ln.Close()
	_, err := New(ln, Config{Server: &tls.Config{}, Client: func() *tls.Config { return &tls.Config{} }})
	if err == nil {
		t.Fatal("accepted a server config without client verification")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
