package pki

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestCreateCAIsAP256TenYearCAForItsCluster(t *testing.T) {
	ca, err := CreateCA("prod-eu", testNow)
	if err != nil {
		t.Fatal(err)
	}
	c := ca.Cert
	if !c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Errorf("want a CA limited to end-entity certificates, got IsCA=%v MaxPathLen=%d", c.IsCA, c.MaxPathLen)
	}
	if c.PublicKeyAlgorithm != x509.ECDSA || ca.Key.Curve.Params().Name != "P-256" {
		t.Errorf("want ECDSA P-256, got %v %s", c.PublicKeyAlgorithm, ca.Key.Curve.Params().Name)
	}
	if got := c.NotAfter.Sub(testNow); got != CAValidity {
		t.Errorf("validity from now = %v, want %v", got, CAValidity)
	}
	if c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Error("CA cannot sign certificates")
	}
	if ca.Cluster() != "prod-eu" {
		t.Errorf("Cluster() = %q", ca.Cluster())
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
}

func TestFingerprintIsSHA256OfTheDER(t *testing.T) {
	ca := newTestCA(t, "global")
	block, _ := pem.Decode(ca.CertPEM())
	sum := sha256.Sum256(block.Bytes)
	if want := hex.EncodeToString(sum[:]); ca.Fingerprint() != want {
		t.Fatalf("Fingerprint = %s, want %s", ca.Fingerprint(), want)
	}
	if other := newTestCA(t, "global"); other.Fingerprint() == ca.Fingerprint() {
		t.Fatal("two CAs share a fingerprint")
	}
}

func TestValidateCluster(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"global", true}, {"dc1", true}, {"a", true}, {"prod-eu-1", true},
		{"", false}, {"-a", false}, {"a-", false}, {"Prod", false}, {"a.b", false}, {"a_b", false},
		{string(make([]byte, 64)), false},
	} {
		if err := ValidateCluster(tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidateCluster(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if _, err := CreateCA(tc.name, testNow); (err == nil) != tc.ok {
			t.Errorf("CreateCA(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestSaveLoadCARoundTripsWithPrivateKeyFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	ca := newTestCA(t, "global")
	if err := SaveCA(dir, ca); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", st.Mode().Perm())
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", st.Mode().Perm())
	}
	got, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Fingerprint() != ca.Fingerprint() || !got.Key.Equal(ca.Key) || got.Cluster() != "global" {
		t.Fatal("loaded CA differs from the saved one")
	}
	// No temporary files are left behind by the atomic writes.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("dir holds %d entries, want 2", len(entries))
	}
}

func TestLoadCAErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadCA(dir); !errors.Is(err, ErrNoCA) {
		t.Fatalf("empty dir: %v, want ErrNoCA", err)
	}
	a, b := newTestCA(t, "global"), newTestCA(t, "global")
	if err := SaveCA(dir, a); err != nil {
		t.Fatal(err)
	}
	bKey, err := encodeKey(b.Key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, CAKeyFile), bKey, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(dir); err == nil || errors.Is(err, ErrNoCA) {
		t.Fatalf("key of another CA: %v, want a mismatch error", err)
	}
	if err := os.Remove(filepath.Join(dir, CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(dir); err == nil || errors.Is(err, ErrNoCA) {
		t.Fatalf("certificate without key: %v, want an error other than ErrNoCA", err)
	}
}

func TestLoadOrCreateCACreatesOnceThenLoads(t *testing.T) {
	dir := t.TempDir()
	first, created, err := LoadOrCreateCA(dir, "global", testNow)
	if err != nil || !created {
		t.Fatalf("first: created=%v err=%v", created, err)
	}
	again, created, err := LoadOrCreateCA(dir, "global", testNow.Add(time.Hour))
	if err != nil || created {
		t.Fatalf("second: created=%v err=%v", created, err)
	}
	if again.Fingerprint() != first.Fingerprint() {
		t.Fatal("second call made a new CA")
	}
	if _, _, err := LoadOrCreateCA(dir, "other", testNow); err == nil {
		t.Fatal("a CA for another cluster was accepted")
	}
}

func TestParseCARoundTripsKeyPEMAndRefusesAnotherKey(t *testing.T) {
	ca, err := CreateCA("global", testNow)
	if err != nil {
		t.Fatal(err)
	}
	other, err := CreateCA("global", testNow)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseCA(ca.CertPEM(), keyPEM)
	if err != nil || got.Fingerprint() != ca.Fingerprint() || !got.Key.Equal(ca.Key) {
		t.Fatalf("ParseCA = %v, %v", got, err)
	}
	otherKey, _ := other.KeyPEM()
	if _, err := ParseCA(ca.CertPEM(), otherKey); err == nil {
		t.Error("ParseCA accepted the key of another CA")
	}
}
