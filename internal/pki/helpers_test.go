package pki

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"
)

var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newTestCA(t *testing.T, cluster string) *CA {
	t.Helper()
	ca, err := CreateCA(cluster, time.Now())
	if err != nil {
		t.Fatalf("CreateCA: %v", err)
	}
	return ca
}

func issue(t *testing.T, ca *CA, spec NodeSpec) *Identity {
	t.Helper()
	id, err := ca.IssueIdentity(spec, time.Now())
	if err != nil {
		t.Fatalf("IssueIdentity(%+v): %v", spec, err)
	}
	return id
}

// handshake runs one TLS connection over 127.0.0.1 with the given configs. The server writes
// one byte after its handshake and the client reads it, so a rejection that TLS 1.3 reports to
// the client only after its own handshake (a refused client certificate) still shows up as a
// client error.
func handshake(t *testing.T, server, client *tls.Config) (serverErr, clientErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		tc := tls.Server(c, server)
		if err := tc.Handshake(); err != nil {
			done <- err
			return
		}
		_, err = tc.Write([]byte{1})
		done <- err
	}()
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	tc := tls.Client(c, client)
	clientErr = tc.Handshake()
	if clientErr == nil {
		var b [1]byte
		if _, err := io.ReadFull(tc, b[:]); err != nil {
			clientErr = err
		}
	}
	// A client that gave up closes its end; the server's pending handshake then fails too.
	_ = tc.Close()
	serverErr = <-done
	return serverErr, clientErr
}
