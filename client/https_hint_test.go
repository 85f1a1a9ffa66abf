package client

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestPlainHTTPToAnHTTPSNodeSaysUseHTTPS: Go's HTTPS server answers a plain request with a bare
// 400 "Bad Request"; the client turns it into the fix, naming the https:// address to use.
func TestPlainHTTPToAnHTTPSNodeSaysUseHTTPS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("a plain request reached the handler: %s", r.URL)
	}))
	defer srv.Close()
	hostport := strings.TrimPrefix(srv.URL, "https://")
	c := New("http://" + hostport)
	_, err := c.Cluster(context.Background())
	want := "http://" + hostport + " serves HTTPS: use https://" + hostport
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v, want an error containing %q", err, want)
	}
}
