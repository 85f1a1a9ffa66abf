package raftls

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/taskworker/taskworker/internal/limits"
)

func newPlain(t *testing.T, conns *limits.ListenerConfig, firstByte time.Duration) *PlainStreamLayer {
	t.Helper()
	s, err := ListenPlain("127.0.0.1:0", nil, conns, firstByte)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Raft works over the plain layer, and a pooled connection that has spoken stays open past the
// first-byte deadline while it idles between RPCs.
func TestPlainStreamCarriesRaftAndKeepsIdlePeers(t *testing.T) {
	srvStream := newPlain(t, nil, 200*time.Millisecond)
	srv := newTransport(t, srvStream)
	peer := newTransport(t, newPlain(t, nil, 0))
	for term := uint64(1); term <= 2; term++ {
		errc := make(chan error, 1)
		go func() { errc <- appendEntries(peer, srv.LocalAddr(), term) }()
		if got := answerOne(t, srv); got != term {
			t.Fatalf("term %d, want %d", got, term)
		}
		if err := <-errc; err != nil {
			t.Fatalf("append %d: %v", term, err)
		}
		if term == 1 {
			// Idle for longer than the first-byte deadline: the pooled connection must survive.
			sample := time.NewTicker(50 * time.Millisecond)
			for end := time.Now().Add(time.Second); time.Now().Before(end); <-sample.C {
				if srvStream.Stats().Open != 1 {
					t.Fatalf("stats %+v: the peer's pooled connection was closed while idle", srvStream.Stats())
				}
			}
			sample.Stop()
		}
	}
	if st := srvStream.Stats(); st.Accepted != 1 {
		t.Fatalf("stats %+v, want both RPCs over one pooled connection", st)
	}
}

func TestPlainStreamClosesSilentConnectionsAndCapsFloods(t *testing.T) {
	srvStream := newPlain(t, &limits.ListenerConfig{MaxConnsPerClient: 3, MaxConns: 10, Reserve: -1}, 200*time.Millisecond)
	newTransport(t, srvStream) // raft accepts and reads
	addr := srvStream.Addr().String()
	var cs []net.Conn
	for range 10 {
		c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		cs = append(cs, c)
	}
	waitFor(t, "7 per-address refusals", func() bool { return srvStream.Stats().RejectedPerClient == 7 })
	// The three admitted ones say nothing and are closed at the deadline.
	for i, c := range cs {
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Fatalf("connection %d: %v, want it closed by the server", i, err)
		}
	}
	waitFor(t, "every slot free again", func() bool { return srvStream.Stats().Open == 0 })
}

func TestListenPlainRefusesAnUnreachableAdvertiseAddress(t *testing.T) {
	if s, err := ListenPlain("0.0.0.0:0", nil, nil, 0); err == nil {
		_ = s.Close()
		t.Fatal("bound to 0.0.0.0 with no advertise address: want an error")
	}
}
