package memnet

import (
	"errors"
	"io"
	"syscall"
	"testing"
	"time"
)

func TestIsolateCutsPacketsAndStreamsUntilHeal(t *testing.T) {
	var n Network
	a, b := n.NewTransport("a"), n.NewTransport("b")
	accepted := make(chan struct{})
	go func() {
		for c := range b.StreamCh() {
			_, _ = io.Copy(io.Discard, c) // returns once the stream breaks
			_ = c.Close()
			accepted <- struct{}{}
		}
	}()

	open, err := a.DialTimeout(b.Addr(), time.Second)
	if err != nil {
		t.Fatalf("dial before isolation: %v", err)
	}
	n.Isolate("b")
	<-accepted // the open stream broke
	if _, err := open.Write([]byte("x")); err == nil {
		t.Error("write on a stream cut by Isolate succeeded")
	}
	if _, err := a.WriteTo([]byte("ping"), b.Addr()); err != nil {
		t.Errorf("WriteTo an isolated node: %v, want a silent drop", err)
	}
	if _, err := a.DialTimeout(b.Addr(), time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial an isolated node: %v, want connection refused", err)
	}
	if _, err := b.DialTimeout(a.Addr(), time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial from an isolated node: %v, want connection refused", err)
	}

	n.Heal("b")
	if _, err := a.WriteTo([]byte("ping"), b.Addr()); err != nil {
		t.Fatal(err)
	}
	if p := <-b.PacketCh(); string(p.Buf) != "ping" || p.From.String() != a.Addr() {
		t.Errorf("got packet %q from %s", p.Buf, p.From)
	}
	if len(b.packetCh) != 0 {
		t.Error("a packet sent during isolation was delivered")
	}
}

func TestKillIsNotHealed(t *testing.T) {
	var n Network
	a, b := n.NewTransport("a"), n.NewTransport("b")
	n.Kill("b")
	n.Heal("b")
	if _, err := a.DialTimeout(b.Addr(), time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial a killed node after Heal: %v, want connection refused", err)
	}
	b2 := n.NewTransport("b") // restarted elsewhere
	if b2.Addr() == b.Addr() {
		t.Fatalf("restart reused address %s", b.Addr())
	}
	if _, err := a.WriteTo([]byte("hi"), b2.Addr()); err != nil {
		t.Fatal(err)
	}
	if p := <-b2.PacketCh(); string(p.Buf) != "hi" {
		t.Errorf("restarted node got %q", p.Buf)
	}
}
