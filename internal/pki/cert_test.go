package pki

import (
	"crypto/x509"
	"net"
	"slices"
	"testing"
	"time"
)

func TestIssueServerCertificate(t *testing.T) {
	ca, err := CreateCA("prod", testNow)
	if err != nil {
		t.Fatal(err)
	}
	ips := []net.IP{net.ParseIP("10.0.0.7"), net.ParseIP("fd00::7")}
	id, err := ca.IssueIdentity(NodeSpec{Name: "node-a", IPs: ips}, testNow)
	if err != nil {
		t.Fatal(err)
	}
	leaf := id.Leaf()
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("ExtKeyUsage = %v, want server and client", leaf.ExtKeyUsage)
	}
	if err := leaf.VerifyHostname("server.prod.taskworker"); err != nil {
		t.Errorf("server name: %v", err)
	}
	for _, ip := range ips {
		if err := leaf.VerifyHostname(ip.String()); err != nil {
			t.Errorf("IP %s: %v", ip, err)
		}
	}
	if name, ok := NodeName(leaf, "prod"); !ok || name != "node-a" {
		t.Errorf("NodeName = %q, %v", name, ok)
	}
	if _, ok := NodeName(leaf, "other"); ok {
		t.Error("NodeName matched another cluster's URI")
	}
	if got := leaf.NotAfter.Sub(testNow); got != DefaultNodeValidity {
		t.Errorf("validity = %v, want %v", got, DefaultNodeValidity)
	}
	if leaf.IsCA {
		t.Error("node certificate is a CA")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: id.Roots, CurrentTime: testNow, DNSName: ServerName("prod")}); err != nil {
		t.Errorf("does not chain to the CA: %v", err)
	}
	if len(id.Cert.Certificate) != 2 {
		t.Errorf("chain length %d, want leaf and CA", len(id.Cert.Certificate))
	}
}

func TestIssueClientCertificateCannotServe(t *testing.T) {
	ca := newTestCA(t, "prod")
	id := issue(t, ca, NodeSpec{Role: RoleClient})
	leaf := id.Leaf()
	if err := leaf.VerifyHostname(ServerName("prod")); err == nil {
		t.Error("client certificate names a server")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: id.Roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("client certificate verifies for server auth")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: id.Roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate does not verify for client auth: %v", err)
	}
	if leaf.Subject.CommonName != ClientName("prod") {
		t.Errorf("CN = %q", leaf.Subject.CommonName)
	}
}

func TestIssueValidity(t *testing.T) {
	ca, err := CreateCA("global", testNow)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		validity time.Duration
		issuedAt time.Time
		wantEnd  time.Time
	}{
		{"default", 0, testNow, testNow.Add(DefaultNodeValidity)},
		{"configured", 72 * time.Hour, testNow, testNow.Add(72 * time.Hour)},
		{"never past the CA", 0, ca.Cert.NotAfter.Add(-time.Hour), ca.Cert.NotAfter},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leaf, err := ca.Issue(NodeSpec{Name: "n", Validity: tc.validity}, ca.Key.Public(), tc.issuedAt)
			if err != nil {
				t.Fatal(err)
			}
			if !leaf.NotAfter.Equal(tc.wantEnd) {
				t.Errorf("NotAfter = %v, want %v", leaf.NotAfter, tc.wantEnd)
			}
			if leaf.NotBefore.After(tc.issuedAt) {
				t.Errorf("NotBefore %v is after issue time", leaf.NotBefore)
			}
		})
	}
}

func TestIssueRejectsBadNodeNames(t *testing.T) {
	ca := newTestCA(t, "global")
	for _, name := range []string{"bad\nname", "nul\x00", string(make([]byte, 300)), "\xff\xfe"} {
		if _, err := ca.IssueIdentity(NodeSpec{Name: name}, testNow); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
	// Names that are not DNS labels are fine: they travel in a URI.
	for _, name := range []string{"Node_1", "node a", "a/b", "ünï"} {
		id, err := ca.IssueIdentity(NodeSpec{Name: name}, testNow)
		if err != nil {
			t.Errorf("name %q refused: %v", name, err)
			continue
		}
		if got, ok := NodeName(id.Leaf(), "global"); !ok || got != name {
			t.Errorf("NodeName round trip of %q = %q", name, got)
		}
	}
}

func TestNeedsRenewalAtTwoThirdsOfLifetime(t *testing.T) {
	start := testNow
	cert := &x509.Certificate{NotBefore: start, NotAfter: start.Add(30 * 24 * time.Hour)}
	for _, tc := range []struct {
		at   time.Duration
		want bool
	}{
		{0, false},
		{19 * 24 * time.Hour, false},
		{20*24*time.Hour - time.Second, false},
		{20 * 24 * time.Hour, true},
		{29 * 24 * time.Hour, true},
		{31 * 24 * time.Hour, true}, // expired: certainly renew
	} {
		if got := NeedsRenewal(cert, start.Add(tc.at)); got != tc.want {
			t.Errorf("NeedsRenewal at +%v = %v, want %v", tc.at, got, tc.want)
		}
	}
}
