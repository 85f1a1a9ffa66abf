package gossipmux

import (
	"errors"
	"net"
	"syscall"
	"testing"
)

// TestBind covers the retry that keeps UDP and TCP on one port when port 0 lets the kernel pick a TCP
// port whose UDP twin is taken, and the cases that must not retry.
func TestBind(t *testing.T) {
	errOther := errors.New("permission denied")
	cases := []struct {
		name      string
		port      int
		failures  []error // what the first UDP listens return before the real one
		wantErr   bool
		wantCalls int
	}{
		{"free port on the first try", 0, nil, false, 1},
		{"UDP twin taken twice, then free", 0, []error{syscall.EADDRINUSE, syscall.EADDRINUSE}, false, 3},
		{"UDP twin always taken", 0, repeat(syscall.EADDRINUSE, bindAttempts), true, bindAttempts},
		{"another UDP error is not retried", 0, []error{errOther}, true, 1},
		{"a chosen port is not retried", freePort(t), []error{syscall.EADDRINUSE}, true, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			udpListen := func(a *net.UDPAddr) (*net.UDPConn, error) {
				calls++
				if calls <= len(tc.failures) {
					return nil, &net.OpError{Op: "listen", Net: "udp", Err: tc.failures[calls-1]}
				}
				return net.ListenUDP("udp", a)
			}
			tcp, udp, err := bind(net.IPv4(127, 0, 0, 1), tc.port, udpListen)
			if calls != tc.wantCalls {
				t.Errorf("UDP listen called %d times, want %d", calls, tc.wantCalls)
			}
			if tc.wantErr {
				if err == nil {
					tcp.Close()
					udp.Close()
					t.Fatal("bind succeeded, want an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer tcp.Close()
			defer udp.Close()
			if tp, up := tcp.Addr().(*net.TCPAddr).Port, udp.LocalAddr().(*net.UDPAddr).Port; tp != up {
				t.Errorf("TCP port %d, UDP port %d: want one port", tp, up)
			}
		})
	}
}

func repeat(err error, n int) []error {
	out := make([]error, n)
	for i := range out {
		out[i] = err
	}
	return out
}

// freePort returns a TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
