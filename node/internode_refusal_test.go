package node

import (
	"crypto/tls"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/internode"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A peer without the cluster's certificate that keeps calling the node-to-node routes, or keeps
// failing the TLS handshake, gets one warning line per address per minute, not one per try.
func TestRefusedInternodeCallsAreLoggedOncePerAddress(t *testing.T) {
	rec := &logRecorder{}
	tc := startSecureCluster(t, 1, secureOpts(rec))
	n1 := tc.nodes[0]
	lines := func(substr string) int {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		c := 0
		for _, m := range rec.msgs {
			if strings.Contains(m, substr) {
				c++
			}
		}
		return c
	}
	// No client certificate: the TLS session is set up, the route refuses.
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the attacker's client
	defer anon.CloseIdleConnections()
	const tries = 50
	for range tries {
		resp, err := anon.Post("https://"+n1.GossipAddr()+internode.CommandPath(fsm.CmdReport), "application/msgpack", strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("an internode call without a certificate: %d, want 401", resp.StatusCode)
		}
	}
	if got := lines("refused an internode call without a node certificate"); got != 1 {
		t.Errorf("%d calls without a certificate logged %d warnings, want 1", tries, got)
	}
	// A client that does not trust the node's certificate aborts every handshake: each is a
	// line of the server's error log.
	for range tries {
		if c, err := tls.Dial("tcp", n1.GossipAddr(), &tls.Config{ServerName: "x"}); err == nil {
			c.Close()
			t.Fatal("a handshake with a client that trusts no cluster CA succeeded")
		}
	}
	waitFor(t, "the first failed handshake is logged", 10*time.Second, func() bool { return lines("TLS handshake error") > 0 })
	if got := lines("TLS handshake error"); got != 1 {
		t.Errorf("%d failed handshakes logged %d warnings, want 1", tries, got)
	}
}
