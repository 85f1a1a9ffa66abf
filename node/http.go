package node

import (
	"context"
	"io"
	"net/http"

	"github.com/taskworker/taskworker/internal/httpapi"
)

// routes mounts the public API (internal/httpapi over apiBackend) and the node-to-node routes
// (peer.go) on the one HTTP listener, both behind the cluster token when one is set.
func (n *Node) routes() http.Handler {
	mux := http.NewServeMux()
	var peer http.Handler = n.peerRoutes()
	if n.cfg.Token != "" {
		peer = httpapi.RequireToken(n.cfg.Token, peer)
	}
	mux.Handle(internalPrefix, peer)
	opts := httpapi.Options{Token: n.cfg.Token, MaxBodyBytes: n.cfg.MaxBodyBytes, Logger: n.log.With("component", "http")}
	if n.cfg.ACL {
		opts.ACL = aclBackend{n}
	}
	mux.Handle("/", httpapi.New(apiBackend{n}, opts))
	return mux
}

// peerRequest builds a request to another node's HTTP API, carrying the cluster token.
func (n *Node) peerRequest(ctx context.Context, method, addr, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, body)
	if err != nil {
		return nil, err
	}
	if n.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+n.cfg.Token)
	}
	return req, nil
}
