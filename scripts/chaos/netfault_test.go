package main

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// The delay proxy must pass bytes unchanged and in order both ways, pass on a half-close (after
// the data before it), and end its connections when closed. (How long it holds data is measured
// by the chaos run, which prints it, not asserted here: timings on this machine are noisy.)
func TestDelayProxy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// The target answers each connection with what it read, reversed, after the client's FIN.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c)
				for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
					b[i], b[j] = b[j], b[i]
				}
				_, _ = c.Write(b)
			}()
		}
	}()
	px, err := startDelayProxy("127.0.0.1", ln.Addr().String(), 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close()

	msg := bytes.Repeat([]byte("0123456789abcdef"), 20000) // 320 KB: many chunks
	c, err := net.Dial("tcp", px.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	go func() {
		_, _ = c.Write(msg)
		_ = c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read through the proxy: %v", err)
	}
	want := bytes.Clone(msg)
	for i, j := 0, len(want)-1; i < j; i, j = i+1, j-1 {
		want[i], want[j] = want[j], want[i]
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes back, want %d, the message reversed", len(got), len(want))
	}

	// A connection still open when the proxy closes is ended, and no new one is relayed.
	c2, err := net.Dial("tcp", px.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_, _ = c2.Write([]byte("x"))
	px.Close()
	_ = c2.SetReadDeadline(time.Now().Add(30 * time.Second))
	var ne net.Error
	if _, err := c2.Read(make([]byte, 1)); err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("a proxied connection after Close: read err %v, want it ended", err)
	}
	if c3, err := net.DialTimeout("tcp", px.Addr(), 5*time.Second); err == nil {
		c3.Close()
		t.Fatal("the proxy still accepts after Close")
	}
}
