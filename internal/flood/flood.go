// Package flood is the client side of the connection-flood tests (internal/limits, e2e): a child
// process that opens many connections at once and holds them, so no single process needs as many
// file descriptors as the flood. It is test support and imports nothing of taskworker's.
package flood

import (
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Options describe one flood child's connections.
type Options struct {
	Addr    string        // host:port to dial
	Count   int           // connections to open
	Source  string        // local IP to dial from; "" lets the kernel choose
	Timeout time.Duration // per dial
	Send    string        // written on each connection once open (a request), never read back
}

// Hold is the main of a flood child: it opens the connections with 32 dialers, reports "opened N
// failed F" on stdout, holds them until stdin closes, closes them and returns the exit code. A
// connection the server refused stays open on this side, as an attacker's would.
func Hold(o Options) int {
	var (
		mu     sync.Mutex
		conns  = make([]net.Conn, 0, o.Count)
		failed atomic.Int64
		next   atomic.Int64
		wg     sync.WaitGroup
	)
	d := &net.Dialer{Timeout: o.Timeout}
	if o.Source != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(o.Source)}
	}
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(o.Count) {
				c, err := d.Dial("tcp", o.Addr)
				if err != nil {
					if failed.Add(1) == 1 {
						fmt.Fprintln(os.Stderr, "flood child: first dial error:", err)
					}
					continue
				}
				if o.Send != "" {
					// A refused connection may already be closed by the server: the write can fail.
					_, _ = io.WriteString(c, o.Send)
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	fmt.Printf("opened %d failed %d\n", len(conns), failed.Load())
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		_ = c.Close()
	}
	return 0
}
