package pki

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestSaveIdentityLoadsBackFromTheDirectory(t *testing.T) {
	ca := newTestCA(t, "global")
	id := issue(t, ca, NodeSpec{Name: "n1"})
	dir := filepath.Join(t.TempDir(), "tls")
	if err := SaveIdentity(dir, id); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(filepath.Join(dir, NodeKeyFile)); st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v", st.Mode().Perm())
	}
	got, err := DirSource(dir).Load()
	if err != nil {
		t.Fatal(err)
	}
	if Fingerprint(got.Leaf()) != Fingerprint(id.Leaf()) || len(got.Cert.Certificate) != 2 {
		t.Fatal("loaded identity differs")
	}
	if len(got.CAs) != 1 || Fingerprint(got.CAs[0]) != ca.Fingerprint() {
		t.Fatal("loaded CA differs")
	}
}

func TestNewIdentityPEMRefusesMismatchedFiles(t *testing.T) {
	ca, other := newTestCA(t, "global"), newTestCA(t, "global")
	a, b := issue(t, ca, NodeSpec{Name: "a"}), issue(t, ca, NodeSpec{Name: "b"})
	chainA := append(encodeCert(a.Leaf()), ca.CertPEM()...)
	keyA, _ := encodeKey(a.Cert.PrivateKey)
	keyB, _ := encodeKey(b.Cert.PrivateKey)
	for _, tc := range []struct {
		name            string
		chain, key, cas []byte
		now             time.Time
		ok              bool
	}{
		{"matching", chainA, keyA, ca.CertPEM(), time.Now(), true},
		{"key of another certificate", chainA, keyB, ca.CertPEM(), time.Now(), false},
		{"CA that did not sign it", chainA, keyA, other.CertPEM(), time.Now(), false},
		{"expired", chainA, keyA, ca.CertPEM(), time.Now().Add(DefaultNodeValidity + time.Hour), false},
		{"key in the CA file", chainA, keyA, keyA, time.Now(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewIdentityPEM(tc.chain, tc.key, tc.cas, tc.now)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// A SIGHUP reload swaps what the next handshake presents; a broken file keeps the old identity.
func TestHolderReloadSwapsAtomicallyAndKeepsTheOldOnError(t *testing.T) {
	ca := newTestCA(t, "global")
	dir := t.TempDir()
	first := issue(t, ca, NodeSpec{Name: "n1"})
	if err := SaveIdentity(dir, first); err != nil {
		t.Fatal(err)
	}
	h := NewHolder(nil)
	if _, err := h.GetCertificate(&tls.ClientHelloInfo{}); err == nil {
		t.Fatal("empty holder returned a certificate")
	}
	if err := h.Reload(DirSource(dir)); err != nil {
		t.Fatal(err)
	}
	presented := func() string {
		c, err := h.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatal(err)
		}
		cc, err := h.GetClientCertificate(&tls.CertificateRequestInfo{})
		if err != nil || cc != c {
			t.Fatalf("client certificate differs from server certificate: %v", err)
		}
		return Fingerprint(c.Leaf)
	}
	if presented() != Fingerprint(first.Leaf()) {
		t.Fatal("not the loaded certificate")
	}
	second := issue(t, ca, NodeSpec{Name: "n1"})
	if err := SaveIdentity(dir, second); err != nil {
		t.Fatal(err)
	}
	if err := h.Reload(DirSource(dir)); err != nil {
		t.Fatal(err)
	}
	if presented() != Fingerprint(second.Leaf()) {
		t.Fatal("reload did not swap the certificate")
	}
	if err := os.WriteFile(filepath.Join(dir, NodeKeyFile), []byte("half-written"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := h.Reload(DirSource(dir)); err == nil {
		t.Fatal("broken key file reloaded")
	}
	if presented() != Fingerprint(second.Leaf()) {
		t.Fatal("a failed reload replaced the certificate")
	}
}
