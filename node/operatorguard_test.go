package node

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// The node's wiring of the operator routes' guard: on a secure node they need its management
// credential (the profiler on the API listener too); on an insecure one they stay open.
func TestSecureNodesGuardOperatorRoutesAndTheProfilerWithTheManagementCredential(t *testing.T) {
	o := secureOpts(nil)
	tweak := o.tweak
	o.tweak = func(i int, c *Config) { tweak(i, c); c.Pprof = PprofOnAPI }
	tc := startSecureCluster(t, 1, o)
	n := tc.nodes[0]
	waitFor(t, "the management credential", 10*time.Second, func() bool { return n.trust.IsManagement(n.trust.ManagementCredential()) })
	base := "http://" + n.HTTPAddr()
	for _, path := range []string{"/debug/pprof/", "/v1/operator/join-token", "/v1/operator/digest"} {
		if code, _ := get(t, base+path, ""); code != http.StatusUnauthorized {
			t.Errorf("GET %s without a credential: %d, want 401", path, code)
		}
		if code, _ := get(t, base+path, "twm_wrong"); code != http.StatusForbidden {
			t.Errorf("GET %s with a wrong credential: %d, want 403", path, code)
		}
		if code, body := get(t, base+path, n.trust.ManagementCredential()); code != http.StatusOK {
			t.Errorf("GET %s with the management credential: %d %s, want 200", path, code, body)
		}
	}

	insecure := startCluster(t, 1, clusterOpts{inmem: true})
	if code, body := get(t, "http://"+insecure.nodes[0].HTTPAddr()+"/v1/operator/digest", ""); code != http.StatusOK {
		t.Errorf("an insecure node's digest without a credential: %d %s, want 200", code, body)
	}
}

// With ACLs the management credential is a management identity, beside ACL tokens.
func TestWithACLsTheManagementCredentialIsAManagementIdentity(t *testing.T) {
	o := secureOpts(nil)
	tweak := o.tweak
	o.tweak = func(i int, c *Config) { tweak(i, c); c.ACL = true }
	tc := startSecureCluster(t, 1, o)
	n := tc.nodes[0]
	waitFor(t, "the management credential", 10*time.Second, func() bool { return n.trust.IsManagement(n.trust.ManagementCredential()) })
	base := "http://" + n.HTTPAddr()
	if code, body := get(t, base+"/v1/operator/join-token", n.trust.ManagementCredential()); code != http.StatusOK {
		t.Errorf("join token with the management credential: %d %s", code, body)
	}
	if code, body := get(t, base+"/v1/acl/token/self", n.trust.ManagementCredential()); code != http.StatusOK || !strings.Contains(body, `"management":true`) {
		t.Errorf("token self with the management credential: %d %s", code, body)
	}
	if code, _ := get(t, base+"/v1/operator/join-token", "twm_wrong"); code != http.StatusUnauthorized {
		t.Errorf("join token with a wrong credential: %d, want 401 (an unknown ACL token)", code)
	}
}
