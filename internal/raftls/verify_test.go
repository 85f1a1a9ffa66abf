package raftls

import (
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/internal/pki"
)

// VerifyPeer refuses a peer whose certificate the CA signed but that names no node: its
// connection is closed before raft reads a byte, and counted refused; a named node is heard.
func TestVerifyPeerRefusesACertificateThatNamesNoNode(t *testing.T) {
	ca := newCA(t)
	loopback := []net.IP{net.IPv4(127, 0, 0, 1)}
	h := pki.NewHolder(identity(t, ca, pki.NodeSpec{Name: "n1", Role: pki.RoleServer, IPs: loopback}))
	s, err := Listen("127.0.0.1:0", Config{
		Server:     pki.InternodeServerConfig(h, serverName),
		Client:     func() *tls.Config { return pki.InternodeClientConfig(h, serverName) },
		VerifyPeer: pki.RequireNodeName(cluster),
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	server := newTransport(t, s)

	nameless := newStream(t, identity(t, ca, pki.NodeSpec{Role: pki.RoleServer, IPs: loopback}), streamOpts{})
	c, err := nameless.Dial(raft.ServerAddress(s.Addr().String()), 10*time.Second)
	if err == nil {
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		_, _ = c.Write([]byte{0})
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if ne, ok := err.(net.Error); err == nil || ok && ne.Timeout() {
		t.Fatalf("a certificate that names no node was kept: %v", err)
	}
	waitFor(t, "the refusal counted", func() bool { return s.Stats().Refused == 1 })
	if st := s.Stats(); st.Accepted != 0 {
		t.Fatalf("stats %+v: the nameless peer was handed to raft", st)
	}

	named := newTransport(t, newStream(t, identity(t, ca, pki.NodeSpec{Name: "n2", Role: pki.RoleServer, IPs: loopback}), streamOpts{}))
	done := make(chan error, 1)
	go func() { done <- appendEntries(named, raft.ServerAddress(s.Addr().String()), 7) }()
	if term := answerOne(t, server); term != 7 {
		t.Fatalf("term %d", term)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
