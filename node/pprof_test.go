package node

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// get answers a GET of url: its status and body (status 0 when the request failed).
func get(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestPprofIsOffUnlessAskedFor(t *testing.T) {
	longTest(t)
	// Bound only in the last case, after three nodes have bound their own listeners with :0.
	ownAddr := freeAddr(t)

	tests := []struct {
		name  string
		pprof string
		token string
		// wantAPI is the status of /debug/pprof/ on the API listener (with the token, if any).
		wantAPI int
		// own is the address of the profiler's own listener, when it has one.
		own string
	}{
		{name: "off by default", wantAPI: http.StatusNotFound},
		{name: "on the API listener", pprof: PprofOnAPI, wantAPI: http.StatusOK},
		{name: "on the API listener behind the token", pprof: PprofOnAPI, token: "s3cret", wantAPI: http.StatusOK},
		{name: "on a loopback address of its own", pprof: ownAddr, wantAPI: http.StatusNotFound, own: ownAddr},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tc := startCluster(t, 1, clusterOpts{inmem: true, tweak: func(_ int, c *Config) {
				c.Pprof, c.Token = tt.pprof, tt.token
			}})
			base := "http://" + tc.nodes[0].HTTPAddr()
			code, body := get(t, base+"/debug/pprof/", tt.token)
			if code != tt.wantAPI {
				t.Fatalf("GET /debug/pprof/ on the API: %d, want %d\n%s", code, tt.wantAPI, body)
			}
			if code == http.StatusOK && !strings.Contains(body, "goroutine") {
				t.Fatalf("GET /debug/pprof/ on the API: no profile index:\n%s", body)
			}
			if tt.token != "" {
				if code, _ := get(t, base+"/debug/pprof/", ""); code != http.StatusUnauthorized {
					t.Fatalf("GET /debug/pprof/ without the API token: %d, want 401", code)
				}
			}
			if code, _ := get(t, base+"/v1/health", tt.token); code != http.StatusOK && code != http.StatusServiceUnavailable {
				t.Fatalf("the API itself no longer answers: /v1/health %d", code)
			}
			if tt.own != "" {
				waitFor(t, "the profiler on its own listener", 20*time.Second, func() bool {
					code, body := get(t, "http://"+tt.own+"/debug/pprof/goroutine?debug=1", "")
					return code == http.StatusOK && strings.Contains(body, "goroutine")
				})
			}
		})
	}
}

func TestPprofAddressMustBeLoopback(t *testing.T) {
	tests := []struct {
		pprof string
		acl   bool
		ok    bool
	}{
		{pprof: "", ok: true},
		{pprof: PprofOnAPI, ok: true},
		{pprof: PprofOnAPI, acl: true},
		{pprof: "127.0.0.1:6060", ok: true},
		{pprof: "127.0.0.1:6060", acl: true, ok: true},
		{pprof: "localhost:6060", ok: true},
		{pprof: "0.0.0.0:6060"},
		{pprof: "10.1.2.3:6060"},
		{pprof: "nonsense"},
	}
	for _, tt := range tests {
		c := Config{Name: "n1", DataDir: t.TempDir(), Pprof: tt.pprof, ACL: tt.acl}
		c.setDefaults()
		c.Registry = nil // Validate then also reports the missing registry; only --pprof matters here
		err := c.Validate()
		mentions := err != nil && strings.Contains(err.Error(), "--pprof")
		if mentions == tt.ok {
			t.Errorf("Pprof %q, ACL %v: Validate = %v, want ok=%v", tt.pprof, tt.acl, err, tt.ok)
		}
		if mentions && !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("Pprof %q: %v is not ErrInvalidConfig", tt.pprof, err)
		}
	}
}

func TestPprofFlagValues(t *testing.T) {
	tests := []struct{ in, want string }{
		{"true", PprofOnAPI}, {"1", PprofOnAPI}, {"api", PprofOnAPI},
		{"false", ""}, {"", ""},
		{"127.0.0.1:6060", "127.0.0.1:6060"},
	}
	for _, tt := range tests {
		var f pprofFlag
		if err := f.Set(tt.in); err != nil || f.String() != tt.want {
			t.Errorf("Set(%q): %q, %v; want %q", tt.in, f.String(), err, tt.want)
		}
	}
	if !(&pprofFlag{}).IsBoolFlag() {
		t.Error("--pprof must work without a value")
	}
}
