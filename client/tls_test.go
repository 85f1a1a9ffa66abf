package client_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/internal/pki"
)

// tlsNode is a fake node serving /v1/health over HTTPS with a certificate from a cluster CA.
type tlsNode struct {
	url    string
	caFile string // the cluster CA's certificate, as `tls ca create` writes it
	ca     *pki.CA
	hits   atomic.Int32 // requests that got past TLS
	auth   atomic.Value // the last Authorization header
}

// startTLSNode serves with a certificate of role from a new CA of cluster, naming ips.
func startTLSNode(t *testing.T, cluster string, role pki.Role, ips ...net.IP) *tlsNode {
	t.Helper()
	ca, err := pki.CreateCA(cluster, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	id, err := ca.IssueIdentity(pki.NodeSpec{Name: "n1", Role: role, IPs: ips}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	n := &tlsNode{ca: ca, caFile: filepath.Join(t.TempDir(), "ca.pem")}
	if err := os.WriteFile(n.caFile, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.hits.Add(1)
		n.auth.Store(r.Header.Get("Authorization"))
		writeJSON(w, 200, map[string]string{"status": "ok", "leader": "n1"})
	}))
	// Certificates, not GetCertificate: httptest would otherwise answer a client that sends no
	// SNI (one dialing an IP) with its own built-in certificate.
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{id.Cert}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are what these tests make
	srv.StartTLS()
	t.Cleanup(srv.Close)
	n.url = srv.URL
	return n
}

var loopback = net.IPv4(127, 0, 0, 1)

func TestTLSVerifiesTheNode(t *testing.T) {
	node := startTLSNode(t, "global", pki.RoleServer, loopback)
	other := startTLSNode(t, "global", pki.RoleServer, loopback) // same cluster name, another CA
	noIP := startTLSNode(t, "global", pki.RoleServer)            // names only server.global.taskworker
	clientCert := startTLSNode(t, "global", pki.RoleClient, loopback)
	colons := strings.ToUpper(strings.Join(splitEvery(node.ca.Fingerprint(), 2), ":"))

	for _, tc := range []struct {
		name    string
		node    *tlsNode
		addr    string // default: the node's https URL
		opts    []client.Option
		wantErr error // nil: the call must succeed; errAny: any error, before the handler
	}{
		{name: "CA file", node: node, opts: []client.Option{client.WithCAFile(node.caFile)}},
		{name: "CA file, bare host:port means https", node: node, addr: strings.TrimPrefix(node.url, "https://"),
			opts: []client.Option{client.WithCAFile(node.caFile)}},
		{name: "another CA's file is refused", node: other, opts: []client.Option{client.WithCAFile(node.caFile)}, wantErr: errAny},
		{name: "CA file, certificate not naming the dialed IP, is refused", node: noIP,
			opts: []client.Option{client.WithCAFile(noIP.caFile)}, wantErr: errAny},
		{name: "no option: system roots refuse the cluster CA", node: node, wantErr: errAny},
		{name: "fingerprint", node: node, opts: []client.Option{client.WithCAFingerprint(node.ca.Fingerprint())}},
		{name: "fingerprint with colons, upper case", node: node, opts: []client.Option{client.WithCAFingerprint(colons)}},
		{name: "fingerprint: any address, the cluster server name is checked", node: noIP,
			opts: []client.Option{client.WithCAFingerprint(noIP.ca.Fingerprint())}},
		{name: "another CA's fingerprint is refused", node: other,
			opts: []client.Option{client.WithCAFingerprint(node.ca.Fingerprint())}, wantErr: client.ErrFingerprintMismatch},
		{name: "fingerprint: a client-only certificate cannot act as a node", node: clientCert,
			opts: []client.Option{client.WithCAFingerprint(clientCert.ca.Fingerprint())}, wantErr: errAny},
		{name: "TLS config with the CA as root", node: node, opts: []client.Option{client.WithTLSConfig(rootsConfig(t, node.ca))}},
		{name: "TLS config and a CA file", node: node,
			opts: []client.Option{client.WithTLSConfig(&tls.Config{}), client.WithCAFile(node.caFile)}},
		{name: "own HTTP client with a CA file", node: node,
			opts: []client.Option{client.WithHTTPClient(&http.Client{}), client.WithCAFile(node.caFile)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.node.hits.Load()
			addr := tc.addr
			if addr == "" {
				addr = tc.node.url
			}
			opts := append([]client.Option{client.WithToken("s3cret")}, tc.opts...)
			c := client.New(addr, opts...)
			if err := c.Err(); err != nil {
				t.Fatalf("Err() = %v", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			leader, err := c.Health(ctx)
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("Health: %v", err)
			case tc.wantErr == nil:
				if leader != "n1" || tc.node.auth.Load() != "Bearer s3cret" {
					t.Fatalf("Health = %q, token %v", leader, tc.node.auth.Load())
				}
			case err == nil:
				t.Fatal("Health succeeded; want a refused connection")
			case tc.wantErr != errAny && !errors.Is(err, tc.wantErr):
				t.Fatalf("Health: %v; want %v", err, tc.wantErr)
			case tc.node.hits.Load() != before:
				t.Fatal("the request reached the handler although TLS should have refused the node")
			}
			var apiErr *client.APIError
			if errors.As(err, &apiErr) {
				t.Fatalf("Health: an API error %v; want a TLS error", err)
			}
		})
	}
}

func TestTLSOptionMistakesFailEveryCall(t *testing.T) {
	node := startTLSNode(t, "global", pki.RoleServer, loopback)
	for _, tc := range []struct {
		name string
		addr string
		opts []client.Option
		want error
	}{
		{"http:// with a CA file", strings.Replace(node.url, "https://", "http://", 1),
			[]client.Option{client.WithCAFile(node.caFile)}, client.ErrTLSOverHTTP},
		{"http:// with a fingerprint", strings.Replace(node.url, "https://", "HTTP://", 1),
			[]client.Option{client.WithCAFingerprint(node.ca.Fingerprint())}, client.ErrTLSOverHTTP},
		{"CA file and fingerprint", node.url,
			[]client.Option{client.WithCAFile(node.caFile), client.WithCAFingerprint(node.ca.Fingerprint())}, client.ErrTLSConflict},
		{"short fingerprint", node.url, []client.Option{client.WithCAFingerprint("abcd")}, client.ErrBadFingerprint},
		{"fingerprint not hex", node.url, []client.Option{client.WithCAFingerprint(strings.Repeat("g", 64))}, client.ErrBadFingerprint},
		{"missing CA file", node.url, []client.Option{client.WithCAFile(filepath.Join(t.TempDir(), "nope.pem"))}, os.ErrNotExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := client.New(tc.addr, tc.opts...)
			if !errors.Is(c.Err(), tc.want) {
				t.Fatalf("Err() = %v, want %v", c.Err(), tc.want)
			}
			if _, err := c.Health(context.Background()); !errors.Is(err, tc.want) {
				t.Fatalf("Health: %v, want %v", err, tc.want)
			}
			if n := node.hits.Load(); n != 0 {
				t.Fatalf("%d requests reached the node", n)
			}
		})
	}
}

// A caller's own HTTP client keeps its transport: the TLS options go into a copy.
func TestTLSOptionsLeaveTheCallersTransportAlone(t *testing.T) {
	node := startTLSNode(t, "global", pki.RoleServer, loopback)
	tr := &http.Transport{}
	hc := &http.Client{Transport: tr}
	if _, err := client.New(node.url, client.WithHTTPClient(hc), client.WithCAFile(node.caFile)).Health(context.Background()); err != nil {
		t.Fatal(err)
	}
	// (Clone sets up HTTP/2 on the original, which may give it a TLSClientConfig of its own.)
	if hc.Transport != tr || tr.TLSClientConfig != nil && tr.TLSClientConfig.RootCAs != nil {
		t.Fatal("the caller's client or transport was changed")
	}
	if _, err := client.New(node.url, client.WithHTTPClient(hc)).Health(context.Background()); err == nil {
		t.Fatal("the caller's client trusts the cluster CA after being used with WithCAFile")
	}
}

// errAny stands for "some error" in the tables above.
var errAny = errors.New("any error")

func rootsConfig(t *testing.T, ca *pki.CA) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return &tls.Config{RootCAs: pool}
}

func splitEvery(s string, n int) []string {
	var parts []string
	for len(s) > n {
		parts, s = append(parts, s[:n]), s[n:]
	}
	return append(parts, s)
}
