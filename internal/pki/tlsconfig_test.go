package pki

import (
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestInternodeTLS(t *testing.T) {
	ca, other := newTestCA(t, "global"), newTestCA(t, "global")
	otherCluster := newTestCA(t, "dev")
	server := NewHolder(issue(t, ca, NodeSpec{Name: "server"}))
	srvName := ServerName("global")
	expired, err := ca.IssueIdentity(NodeSpec{Name: "old", Validity: time.Hour}, time.Now().Add(-2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	// A client that trusts our CA, so only the server's check of the client can fail.
	client := func(id *Identity) *tls.Config {
		h := NewHolder(id)
		cfg := InternodeClientConfig(NewHolder(issue(t, ca, NodeSpec{Name: "trust"})), srvName)
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if h.Identity() == nil {
				return &tls.Certificate{}, nil // no certificate at all
			}
			return h.GetClientCertificate(nil)
		}
		return cfg
	}
	for _, tc := range []struct {
		name   string
		client *tls.Config
		ok     bool
	}{
		{"node of the cluster", client(issue(t, ca, NodeSpec{Name: "peer"})), true},
		{"certificate from another CA", client(issue(t, other, NodeSpec{Name: "peer"})), false},
		{"server certificate of another cluster", client(issue(t, otherCluster, NodeSpec{Name: "peer"})), false},
		{"client-only certificate of this CA", client(issue(t, ca, NodeSpec{Role: RoleClient})), false},
		{"expired certificate of this CA", client(expired), false},
		{"no certificate", client(nil), false},
		{"TLS 1.2 client", func() *tls.Config {
			c := client(issue(t, ca, NodeSpec{Name: "peer"}))
			c.MaxVersion = tls.VersionTLS12
			return c
		}(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			serr, cerr := handshake(t, InternodeServerConfig(server, srvName), tc.client)
			if tc.ok && (serr != nil || cerr != nil) {
				t.Fatalf("refused: server %v, client %v", serr, cerr)
			}
			if !tc.ok && (serr == nil || cerr == nil) {
				t.Fatalf("accepted: server %v, client %v", serr, cerr)
			}
		})
	}
	t.Run("client-only certificate fails on the name check", func(t *testing.T) {
		serr, _ := handshake(t, InternodeServerConfig(server, srvName), client(issue(t, ca, NodeSpec{Role: RoleClient})))
		// It chains to the CA and has the client-auth usage: only the missing server name refuses it.
		if !errors.Is(serr, ErrPeerName) {
			t.Fatalf("server error %v, want ErrPeerName", serr)
		}
	})
}

func TestInternodeClientVerifiesTheServer(t *testing.T) {
	ca, other := newTestCA(t, "global"), newTestCA(t, "global")
	me := NewHolder(issue(t, ca, NodeSpec{Name: "me"}))
	srvName := ServerName("global")
	for _, tc := range []struct {
		name   string
		server *Identity
		ok     bool
	}{
		{"cluster server", issue(t, ca, NodeSpec{Name: "s"}), true},
		{"server of another CA", issue(t, other, NodeSpec{Name: "s"}), false},
		{"client-only certificate as server", issue(t, ca, NodeSpec{Role: RoleClient}), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The server side accepts anyone here, so only the client's check can fail.
			srv := &tls.Config{Certificates: []tls.Certificate{tc.server.Cert}, MinVersion: tls.VersionTLS13}
			_, cerr := handshake(t, srv, InternodeClientConfig(me, srvName))
			if (cerr == nil) != tc.ok {
				t.Fatalf("client error %v, want ok=%v", cerr, tc.ok)
			}
		})
	}
	t.Run("no identity trusts nothing", func(t *testing.T) {
		srv := &tls.Config{Certificates: []tls.Certificate{issue(t, ca, NodeSpec{Name: "s"}).Cert}}
		if _, cerr := handshake(t, srv, InternodeClientConfig(NewHolder(nil), srvName)); cerr == nil {
			t.Fatal("a client without identity accepted a server")
		}
	})
}

// A renewal stored in the holder is what the very next handshake presents, on a config built
// before the renewal.
func TestInternodeServerPresentsTheRenewedCertificate(t *testing.T) {
	ca := newTestCA(t, "global")
	h := NewHolder(issue(t, ca, NodeSpec{Name: "s"}))
	srv := InternodeServerConfig(h, ServerName("global"))
	peer := NewHolder(issue(t, ca, NodeSpec{Name: "p"}))
	var seen []string
	cli := InternodeClientConfig(peer, ServerName("global"))
	cli.VerifyConnection = func(cs tls.ConnectionState) error {
		seen = append(seen, Fingerprint(cs.PeerCertificates[0]))
		return nil
	}
	if serr, cerr := handshake(t, srv, cli); serr != nil || cerr != nil {
		t.Fatal(serr, cerr)
	}
	renewed := issue(t, ca, NodeSpec{Name: "s"})
	h.Store(renewed)
	if serr, cerr := handshake(t, srv, cli); serr != nil || cerr != nil {
		t.Fatal(serr, cerr)
	}
	if len(seen) != 2 || seen[1] != Fingerprint(renewed.Leaf()) || seen[0] == seen[1] {
		t.Fatalf("presented %v, want the old then the renewed certificate", seen)
	}
}

func TestAPIServerConfig(t *testing.T) {
	ca := newTestCA(t, "global")
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	h := NewHolder(issue(t, ca, NodeSpec{Name: "s", IPs: nil, DNSNames: []string{"localhost"}}))
	user := func(cert *Identity) *tls.Config {
		c, err := CAFileClientConfig(caFile)
		if err != nil {
			t.Fatal(err)
		}
		c.ServerName = "localhost"
		if cert != nil {
			c.Certificates = []tls.Certificate{cert.Cert}
		}
		return c
	}
	clientCert := issue(t, ca, NodeSpec{Role: RoleClient})
	for _, tc := range []struct {
		name           string
		verifyIncoming bool
		client         *tls.Config
		ok             bool
	}{
		{"plain HTTPS", false, user(nil), true},
		{"TLS 1.2 user tools are served", false, func() *tls.Config { c := user(nil); c.MaxVersion = tls.VersionTLS12; return c }(), true},
		{"verify incoming without a certificate", true, user(nil), false},
		{"verify incoming with a client certificate", true, user(clientCert), true},
		{"verify incoming with another CA's certificate", true, user(issue(t, newTestCA(t, "global"), NodeSpec{Role: RoleClient})), false},
		{"wrong host name", false, func() *tls.Config { c := user(nil); c.ServerName = "example.com"; return c }(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			serr, cerr := handshake(t, APIServerConfig(h, tc.verifyIncoming), tc.client)
			if tc.ok != (serr == nil && cerr == nil) {
				t.Fatalf("server %v, client %v; want ok=%v", serr, cerr, tc.ok)
			}
		})
	}
}

func TestPinnedClientConfig(t *testing.T) {
	ca, other := newTestCA(t, "global"), newTestCA(t, "global")
	srv := func(id *Identity) *tls.Config {
		return &tls.Config{Certificates: []tls.Certificate{id.Cert}}
	}
	leafOnly := issue(t, ca, NodeSpec{Name: "s"})
	leafOnly.Cert.Certificate = leafOnly.Cert.Certificate[:1]
	for _, tc := range []struct {
		name   string
		server *Identity
		pin    string
		want   error
	}{
		{"the pinned cluster", issue(t, ca, NodeSpec{Name: "s"}), ca.Fingerprint(), nil},
		{"another cluster", issue(t, other, NodeSpec{Name: "s"}), ca.Fingerprint(), ErrFingerprintMismatch},
		{"a server that does not send its CA", leafOnly, ca.Fingerprint(), ErrFingerprintMismatch},
		{"a client-only certificate of the pinned CA", issue(t, ca, NodeSpec{Role: RoleClient}), ca.Fingerprint(), errAny},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, cerr := handshake(t, srv(tc.server), PinnedClientConfig(tc.pin))
			switch {
			case tc.want == nil && cerr != nil:
				t.Fatalf("refused: %v", cerr)
			case tc.want == errAny && cerr == nil:
				t.Fatal("accepted")
			case tc.want != nil && tc.want != errAny && !errors.Is(cerr, tc.want):
				t.Fatalf("client error %v, want %v", cerr, tc.want)
			}
		})
	}
	// A CA that re-signs a copy of the pinned CA's subject and key id is still refused: the pin is
	// on the certificate's bytes.
	t.Run("impostor CA with the same name", func(t *testing.T) {
		impostor := newTestCA(t, "global")
		if impostor.Cert.Subject.String() != ca.Cert.Subject.String() {
			t.Fatal("test setup: subjects differ")
		}
		_, cerr := handshake(t, srv(issue(t, impostor, NodeSpec{Name: "s"})), PinnedClientConfig(ca.Fingerprint()))
		if !errors.Is(cerr, ErrFingerprintMismatch) {
			t.Fatalf("client error %v", cerr)
		}
	})
}

var errAny = errors.New("any error")
