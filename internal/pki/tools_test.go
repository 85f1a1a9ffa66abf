package pki

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The `tls ca create` / `tls cert create` flow: files an operator then hands to --tls-cert,
// --tls-key and --tls-ca, which must work for internode TLS.
func TestToolFilesWorkAsOperatorCertificates(t *testing.T) {
	dir := t.TempDir()
	caFiles, err := CreateCAFiles(dir, "global", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(caFiles.Cert) != "taskworker-agent-ca.pem" || filepath.Base(caFiles.Key) != "taskworker-agent-ca-key.pem" {
		t.Fatalf("CA files %+v", caFiles)
	}
	if st, _ := os.Stat(caFiles.Key); st.Mode().Perm() != 0o600 {
		t.Errorf("CA key mode %v", st.Mode().Perm())
	}
	if _, err := CreateCAFiles(dir, "global", time.Now()); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second CA create: %v, want ErrExist", err)
	}
	ca, err := LoadCAFiles(caFiles.Cert, caFiles.Key)
	if err != nil {
		t.Fatal(err)
	}

	var servers []Files
	for i := range 2 {
		f, err := CreateCertFiles(dir, ca, NodeSpec{Role: RoleServer, IPs: []net.IP{net.ParseIP("10.1.1.1")}}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(dir, "global-server-taskworker-"+string(rune('0'+i))+".pem"); f.Cert != want {
			t.Fatalf("server cert %d at %s, want %s", i, f.Cert, want)
		}
		if st, _ := os.Stat(f.Key); st.Mode().Perm() != 0o600 {
			t.Errorf("key mode %v", st.Mode().Perm())
		}
		servers = append(servers, f)
	}
	client, err := CreateCertFiles(dir, ca, NodeSpec{Role: RoleClient}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(client.Cert) != "global-client-taskworker-0.pem" {
		t.Fatalf("client cert %s", client.Cert)
	}

	load := func(f Files) *Holder {
		id, err := FileSource{CertFile: f.Cert, KeyFile: f.Key, CAFile: caFiles.Cert}.Load()
		if err != nil {
			t.Fatal(err)
		}
		return NewHolder(id)
	}
	s0, s1, cl := load(servers[0]), load(servers[1]), load(client)
	leaf := s0.Identity().Leaf()
	for _, name := range []string{"server.global.taskworker", "localhost", "127.0.0.1", "10.1.1.1"} {
		if err := leaf.VerifyHostname(name); err != nil {
			t.Errorf("server certificate: %v", err)
		}
	}
	sn := ServerName("global")
	if serr, cerr := handshake(t, InternodeServerConfig(s0, sn), InternodeClientConfig(s1, sn)); serr != nil || cerr != nil {
		t.Fatalf("two server certificates: server %v, client %v", serr, cerr)
	}
	if serr, _ := handshake(t, InternodeServerConfig(s0, sn), InternodeClientConfig(cl, sn)); serr == nil {
		t.Fatal("a --client certificate passed internode TLS")
	}
	if serr, cerr := handshake(t, APIServerConfig(s0, true), InternodeClientConfig(cl, "localhost")); serr != nil || cerr != nil {
		t.Fatalf("a --client certificate on the API with verify-incoming: server %v, client %v", serr, cerr)
	}
}

// `tls ca create --days N` chooses the CA's lifetime; zero keeps the default.
func TestCreateCAFilesValidFor(t *testing.T) {
	for _, tc := range []struct {
		name     string
		validity time.Duration
		want     time.Duration
	}{
		{"two days", 48 * time.Hour, 48 * time.Hour},
		{"zero means the default", 0, CAValidity},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := CreateCAFilesValidFor(t.TempDir(), "global", testNow, tc.validity)
			if err != nil {
				t.Fatal(err)
			}
			ca, err := LoadCAFiles(f.Cert, f.Key)
			if err != nil {
				t.Fatal(err)
			}
			if got := ca.Cert.NotAfter; !got.Equal(testNow.Add(tc.want)) {
				t.Errorf("NotAfter %v, want %v", got, testNow.Add(tc.want))
			}
		})
	}
}
