package clicmd

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/internal/pki"
)

// readPEMCerts parses every certificate in a PEM file, failing the test on anything else.
func readPEMCerts(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			t.Fatalf("%s holds a %s block", path, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		t.Fatalf("%s holds no certificate", path)
	}
	return certs
}

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != want {
		t.Errorf("%s: mode %v, want %v", path, st.Mode().Perm(), want)
	}
}

// mustRun runs a command that must succeed and returns its stdout.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	stdout, stderr, code := run(t, "", args...)
	if code != 0 {
		t.Fatalf("%q: exit %d, stderr %q", args, code, stderr)
	}
	return stdout
}

var fingerprintRE = regexp.MustCompile(`CA fingerprint \(SHA-256\): ([0-9a-f]{64})\n`)

func TestTLSCACreate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new") // created by the command
	before := time.Now()
	stdout := mustRun(t, "tls", "ca", "create", "--dir", dir, "--cluster", "prod", "--days", "30")

	certFile, keyFile := filepath.Join(dir, "taskworker-agent-ca.pem"), filepath.Join(dir, "taskworker-agent-ca-key.pem")
	certs := readPEMCerts(t, certFile)
	ca := certs[0]
	if len(certs) != 1 || !ca.IsCA || ca.Subject.OrganizationalUnit[0] != "prod" {
		t.Fatalf("CA file holds %d certificates, IsCA %v, subject %v", len(certs), ca.IsCA, ca.Subject)
	}
	if err := ca.CheckSignatureFrom(ca); err != nil {
		t.Errorf("CA is not self-signed: %v", err)
	}
	if want := before.Add(30 * 24 * time.Hour); ca.NotAfter.Before(want.Add(-time.Minute)) || ca.NotAfter.After(want.Add(time.Hour)) {
		t.Errorf("NotAfter %v, want about %v", ca.NotAfter, want)
	}
	sum := sha256.Sum256(ca.Raw)
	m := fingerprintRE.FindStringSubmatch(stdout)
	if m == nil || m[1] != hex.EncodeToString(sum[:]) {
		t.Errorf("stdout %q does not show the fingerprint %x", stdout, sum)
	}
	if !strings.Contains(stdout, "Saved "+certFile) || !strings.Contains(stdout, "Saved "+keyFile) {
		t.Errorf("stdout %q does not name the files", stdout)
	}
	checkMode(t, keyFile, 0o600)
	keyBlock, _ := pem.Decode(readFile(t, keyFile))
	key, err := x509.ParsePKCS8PrivateKey(keyBlock.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.X509KeyPair(readFile(t, certFile), readFile(t, keyFile)); err != nil || key == nil {
		t.Errorf("the key does not match the CA certificate: %v", err)
	}

	// A second run must not replace the CA that certificates already chain to.
	certPEM := readFile(t, certFile)
	if _, stderr, code := run(t, "", "tls", "ca", "create", "--dir", dir, "--cluster", "prod"); code != 1 || !strings.Contains(stderr, "exists") {
		t.Fatalf("second ca create: exit %d, stderr %q; want 1 and 'exists'", code, stderr)
	}
	if !bytes.Equal(certPEM, readFile(t, certFile)) {
		t.Fatal("the CA file was overwritten")
	}

	for _, args := range [][]string{
		{"--cluster", "Not_A_Label"},
		{"--days", "0"},
		{"extra"},
	} {
		if _, stderr, code := run(t, "", append([]string{"tls", "ca", "create", "--dir", t.TempDir()}, args...)...); code != 2 {
			t.Errorf("ca create %q: exit %d, stderr %q; want 2", args, code, stderr)
		}
	}
}

func TestTLSCertCreate(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, "tls", "ca", "create", "--dir", dir, "--cluster", "prod")
	ca := readPEMCerts(t, filepath.Join(dir, "taskworker-agent-ca.pem"))[0]
	roots := x509.NewCertPool()
	roots.AddCert(ca)

	stdout := mustRun(t, "tls", "cert", "create", "--server", "--dir", dir, "--node", "n1", "--days", "10",
		"--additional-dnsname", "node1.example", "--additional-dnsname", "tw.example",
		"--additional-ipaddress", "10.0.0.5")
	certFile := filepath.Join(dir, "prod-server-taskworker-0.pem")
	keyFile := filepath.Join(dir, "prod-server-taskworker-0-key.pem")
	if !strings.Contains(stdout, "Saved "+certFile) || !strings.Contains(stdout, "Saved "+keyFile) {
		t.Fatalf("stdout %q does not name %s and its key", stdout, certFile)
	}
	checkMode(t, keyFile, 0o600)
	chain := readPEMCerts(t, certFile)
	if len(chain) != 2 || !chain[1].Equal(ca) {
		t.Fatalf("server file holds %d certificates; want the leaf, then the CA", len(chain))
	}
	leaf := chain[0]
	for _, name := range []string{"server.prod.taskworker", "node1.example", "tw.example", "localhost", "127.0.0.1", "10.0.0.5"} {
		opts := x509.VerifyOptions{Roots: roots, DNSName: name, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		if _, err := leaf.Verify(opts); err != nil {
			t.Errorf("server certificate for %s: %v", name, err)
		}
	}
	if leaf.Subject.CommonName != "n1" {
		t.Errorf("server certificate CN %q, want the node name", leaf.Subject.CommonName)
	}
	if d := time.Until(leaf.NotAfter); d < 9*24*time.Hour || d > 11*24*time.Hour {
		t.Errorf("server certificate valid for %v more, want about 10 days", d)
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Errorf("server key does not match: %v", err)
	}

	// The next server certificate takes the next number; the first is left alone.
	if !strings.Contains(stdout, `For node "n1" only`) {
		t.Errorf("stdout %q does not say which node the certificate is for", stdout)
	}
	first := readFile(t, certFile)
	nameless := mustRun(t, "tls", "cert", "create", "--server", "--dir", dir)
	if !strings.Contains(nameless, "cannot act as any node") {
		t.Errorf("a certificate without --node: stdout %q does not say it cannot act as a node", nameless)
	}
	if _, ok := pki.NodeName(readPEMCerts(t, filepath.Join(dir, "prod-server-taskworker-1.pem"))[0], "prod"); ok {
		t.Error("a certificate made without --node names a node")
	}
	if !bytes.Equal(first, readFile(t, certFile)) {
		t.Fatal("the first server certificate was overwritten")
	}

	// A client certificate, signed by a CA named with --ca and --key from elsewhere.
	out := t.TempDir()
	mustRun(t, "tls", "cert", "create", "--client", "--dir", out,
		"--ca", filepath.Join(dir, "taskworker-agent-ca.pem"), "--key", filepath.Join(dir, "taskworker-agent-ca-key.pem"))
	cl := readPEMCerts(t, filepath.Join(out, "prod-client-taskworker-0.pem"))[0]
	if _, err := cl.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if _, err := cl.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("a client certificate verifies as a server")
	}
	if slices.Contains(cl.DNSNames, "server.prod.taskworker") {
		t.Errorf("client certificate names %v", cl.DNSNames)
	}
	checkMode(t, filepath.Join(out, "prod-client-taskworker-0-key.pem"), 0o600)

	for _, tc := range []struct {
		name string
		args []string
		code int
	}{
		{"neither --server nor --client", []string{"--dir", dir}, 2},
		{"both", []string{"--server", "--client", "--dir", dir}, 2},
		{"--node with --client", []string{"--client", "--node", "n1", "--dir", dir}, 2},
		{"bad IP", []string{"--server", "--additional-ipaddress", "10.0.0", "--dir", dir}, 2},
		{"zero days", []string{"--server", "--days", "0", "--dir", dir}, 2},
		{"no CA in the directory", []string{"--server", "--dir", t.TempDir()}, 1},
		{"CA file not a CA", []string{"--server", "--dir", t.TempDir(), "--ca", certFile, "--key", keyFile}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files, _ := os.ReadDir(dir)
			_, stderr, code := run(t, "", append([]string{"tls", "cert", "create"}, tc.args...)...)
			if code != tc.code {
				t.Fatalf("exit %d, stderr %q; want %d", code, stderr, tc.code)
			}
			if after, _ := os.ReadDir(dir); len(after) != len(files) {
				t.Errorf("a refused run wrote files: %d, then %d", len(files), len(after))
			}
		})
	}
}

func TestKeygen(t *testing.T) {
	a, b := mustRun(t, "keygen"), mustRun(t, "keygen")
	for _, out := range []string{a, b} {
		k, err := base64.StdEncoding.DecodeString(strings.TrimSuffix(out, "\n"))
		if err != nil || len(k) != 32 || !strings.HasSuffix(out, "\n") {
			t.Fatalf("keygen printed %q: %d bytes, %v; want one base64 line of 32 bytes", out, len(k), err)
		}
	}
	if a == b {
		t.Fatal("two keygen runs printed the same key")
	}
	if _, _, code := run(t, "", "keygen", "extra"); code != 2 {
		t.Errorf("keygen with an argument: exit %d, want 2", code)
	}
}

// httpsNode serves `types` over HTTPS with a server certificate that `tls cert create`
// wrote, as a node started with --tls-cert and --http-tls would.
func httpsNode(t *testing.T, dir string) (url string, auth func() string) {
	t.Helper()
	mustRun(t, "tls", "cert", "create", "--server", "--dir", dir)
	matches, _ := filepath.Glob(filepath.Join(dir, "*-server-taskworker-*-key.pem"))
	keyFile := matches[len(matches)-1]
	cert, err := tls.LoadX509KeyPair(strings.TrimSuffix(keyFile, "-key.pem")+".pem", keyFile)
	if err != nil {
		t.Fatal(err)
	}
	var seen string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r.Header.Get("Authorization")
		reply(w, 200, []client.TypeInfo{{Type: "echo", Version: "1"}})
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are what the tests make
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL, func() string { return seen }
}

// The client flags, against files the tls tools made: what an operator does end to end.
func TestClientTLSAndTokenFlags(t *testing.T) {
	dir, otherDir := t.TempDir(), t.TempDir()
	fp := fingerprintRE.FindStringSubmatch(mustRun(t, "tls", "ca", "create", "--dir", dir))[1]
	otherFP := fingerprintRE.FindStringSubmatch(mustRun(t, "tls", "ca", "create", "--dir", otherDir))[1]
	caFile, otherCA := filepath.Join(dir, "taskworker-agent-ca.pem"), filepath.Join(otherDir, "taskworker-agent-ca.pem")
	addr, auth := httpsNode(t, dir)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("from-file\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	emptyFile := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(emptyFile, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name     string
		env      map[string]string
		args     []string
		code     int
		auth     string // the Authorization header the node must have seen, when code is 0
		stderrIn string
	}{
		{name: "--ca-file", args: []string{"--addr", addr, "--ca-file", caFile}},
		{name: "TASKWORKER_CA_FILE", env: map[string]string{"TASKWORKER_CA_FILE": caFile, "TASKWORKER_ADDR": addr}},
		{name: "another CA's file is refused", args: []string{"--addr", addr, "--ca-file", otherCA}, code: 2, stderrIn: "certificate"},
		{name: "no CA: the system roots refuse the node", args: []string{"--addr", addr}, code: 2, stderrIn: "certificate"},
		{name: "--ca-fingerprint", args: []string{"--addr", addr, "--ca-fingerprint", fp}},
		{name: "TASKWORKER_CA_FINGERPRINT, upper case", env: map[string]string{"TASKWORKER_CA_FINGERPRINT": strings.ToUpper(fp)},
			args: []string{"--addr", addr}},
		{name: "another CA's fingerprint is refused", args: []string{"--addr", addr, "--ca-fingerprint", otherFP}, code: 2,
			stderrIn: "does not match"},
		{name: "malformed fingerprint", args: []string{"--addr", addr, "--ca-fingerprint", "abc"}, code: 2, stderrIn: "64 hex digits"},
		{name: "CA file and fingerprint", args: []string{"--addr", addr, "--ca-file", caFile, "--ca-fingerprint", fp}, code: 2,
			stderrIn: "not both"},
		{name: "http:// address with a CA file", args: []string{"--addr", strings.Replace(addr, "https:", "http:", 1), "--ca-file", caFile},
			code: 2, stderrIn: "use https://"},
		{name: "a CA file makes the default address https", args: []string{"--ca-file", caFile}, code: 2,
			stderrIn: "https://127.0.0.1:7948"},
		{name: "missing CA file", args: []string{"--addr", addr, "--ca-file", caFile + ".nope"}, code: 2, stderrIn: "no such file"},
		{name: "--token-file, line end trimmed", args: []string{"--addr", addr, "--ca-file", caFile, "--token-file", tokenFile},
			auth: "Bearer from-file"},
		{name: "TASKWORKER_TOKEN_FILE", env: map[string]string{"TASKWORKER_TOKEN_FILE": tokenFile},
			args: []string{"--addr", addr, "--ca-file", caFile}, auth: "Bearer from-file"},
		{name: "--token wins over --token-file", args: []string{"--addr", addr, "--ca-file", caFile, "--token", "argv", "--token-file", tokenFile},
			auth: "Bearer argv"},
		{name: "TASKWORKER_TOKEN", env: map[string]string{"TASKWORKER_TOKEN": "env"}, args: []string{"--addr", addr, "--ca-file", caFile},
			auth: "Bearer env"},
		{name: "empty token file", args: []string{"--addr", addr, "--ca-file", caFile, "--token-file", emptyFile}, code: 2, stderrIn: "empty"},
		{name: "missing token file", args: []string{"--addr", addr, "--ca-file", caFile, "--token-file", tokenFile + ".nope"}, code: 2,
			stderrIn: "token-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			stdout, stderr, code := run(t, "", append([]string{"types"}, tc.args...)...)
			if code != tc.code || !strings.Contains(stderr, tc.stderrIn) {
				t.Fatalf("exit %d, stderr %q; want %d, stderr with %q", code, stderr, tc.code, tc.stderrIn)
			}
			if code == 0 && (!strings.Contains(stdout, "echo") || auth() != tc.auth) {
				t.Fatalf("stdout %q, token %q; want the types, token %q", stdout, auth(), tc.auth)
			}
		})
	}
}

// The TLS flags are on every client command, subcommands included.
func TestEveryClientCommandTakesTheConnectionFlags(t *testing.T) {
	var walk func(prefix string, cmds []*cli.Command)
	walk = func(prefix string, cmds []*cli.Command) {
		for _, c := range cmds {
			name := strings.TrimSpace(prefix + " " + c.Name)
			if len(c.Subcommands) > 0 {
				walk(name, c.Subcommands)
			}
			if c.Action == nil || offline[strings.Fields(name)[0]] || slices.Contains([]string{"keyring", "task", "queue", "rate-limit"}, name) {
				continue
			}
			var flags []string
			for _, f := range c.Flags {
				flags = append(flags, f.Names()...)
			}
			for _, want := range []string{"addr", "token", "token-file", "ca-file", "ca-fingerprint"} {
				if !slices.Contains(flags, want) {
					t.Errorf("%s lacks --%s", name, want)
				}
			}
		}
	}
	walk("", Commands())
}

// offline commands never call a node.
var offline = map[string]bool{"tls": true, "keygen": true}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
