package limits

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"
)

func TestDefaultServerTimeoutsApply(t *testing.T) {
	s := &http.Server{WriteTimeout: time.Second}
	d := DefaultServerTimeouts()
	d.Apply(s)
	if s.WriteTimeout != 0 {
		t.Fatal("WriteTimeout kept: it would cut long polls and log follows")
	}
	if d.ReadHeaderTimeout <= 0 || d.ReadTimeout <= 0 || d.IdleTimeout <= 0 || d.MaxHeaderBytes <= 0 {
		t.Fatalf("a bound is missing: %+v", d)
	}
	// Each bound must reach the server as given: a field Apply forgets is 0 there, and net/http
	// quietly falls back (IdleTimeout to ReadTimeout) or has no bound at all.
	got := ServerTimeouts{ReadHeaderTimeout: s.ReadHeaderTimeout, ReadTimeout: s.ReadTimeout, IdleTimeout: s.IdleTimeout, MaxHeaderBytes: s.MaxHeaderBytes}
	if got != d {
		t.Fatalf("applied %+v, want %+v", got, d)
	}
}

// readClosedWithin reads c until the server closes it, failing if that takes longer than within:
// a bound far shorter than any fallback the server could be using instead of the one under test.
func readClosedWithin(t *testing.T, r io.Reader, c net.Conn, within time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, r)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the server did not close the connection within %s", within)
	}
}

// readUntilClosed reads c until the server closes it, failing if our own generous deadline comes
// first (which would mean the server kept the connection).
func readUntilClosed(t *testing.T, r io.Reader, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(generous))
	_, err := io.Copy(io.Discard, r)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the server did not close the connection")
	}
}

func TestIdleTimeoutClosesKeepAliveConnection(t *testing.T) {
	l := listen(t)
	// ReadTimeout, which net/http uses for idle connections when IdleTimeout is unset, is an hour:
	// only IdleTimeout can close the connection within the 10 s this test waits.
	serve(t, l, okHandler(), ServerTimeouts{ReadHeaderTimeout: time.Hour, ReadTimeout: time.Hour, IdleTimeout: 50 * time.Millisecond})
	c := dialFrom(t, "127.0.0.1", l.Addr().String())
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("response %v %v: want a 200 that keeps the connection alive", resp, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	readClosedWithin(t, br, c, 10*time.Second) // idle after its request: closed by IdleTimeout, not by us
}

func TestReadHeaderTimeoutClosesSilentConnection(t *testing.T) {
	l := listen(t)
	serve(t, l, okHandler(), ServerTimeouts{ReadHeaderTimeout: 50 * time.Millisecond, IdleTimeout: time.Minute})
	c := dialFrom(t, "127.0.0.1", l.Addr().String())
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\n") // a header started and never finished
	readUntilClosed(t, c, c)
}

// A long poll outlives ReadTimeout: net/http clears the read deadline once the body is read, so the
// handler's context is not cancelled by it. This holds net/http to the reasoning in ServerTimeouts.
func TestReadTimeoutSparesLongPolls(t *testing.T) {
	const readTimeout = 50 * time.Millisecond
	started := make(chan time.Time, 1)
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		started <- time.Now()
		select {
		case <-release:
			_, _ = io.WriteString(w, "done")
		case <-r.Context().Done():
			// The client sees no "done": the test fails below.
		}
	})
	l := listen(t)
	serve(t, l, h, ServerTimeouts{ReadHeaderTimeout: readTimeout, ReadTimeout: readTimeout, IdleTimeout: time.Minute})

	type result struct {
		body string
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := clientFrom("127.0.0.1").Post("http://"+l.Addr().String()+"/", "application/json", nil)
		if err != nil {
			got <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		got <- result{string(b), err}
	}()
	t0 := <-started
	// Hold the poll for many times ReadTimeout before answering it.
	waitFor(t, "the long poll to outlast ReadTimeout many times", func() bool { return time.Since(t0) > 10*readTimeout })
	close(release)
	if r := <-got; r.err != nil || r.body != "done" {
		t.Fatalf("long poll: %q %v, want done", r.body, r.err)
	}
}
