package node

import (
	"net/http"

	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/ui"
)

// routes is the public API (internal/httpapi over apiBackend) and the web console (ui), behind the API token when one is
// set. Node-to-node routes are not here: they live on the internode listener (internode.go).
func (n *Node) routes() http.Handler {
	opts := httpapi.Options{Token: n.cfg.Token, MaxBodyBytes: n.cfg.MaxBodyBytes, Logger: n.log.With("component", "http"),
		Observe: n.metrics.observeHTTP, UI: ui.Handler()}
	if n.cfg.ACL {
		opts.ACL = aclBackend{n}
	}
	return n.refuseWhenClosing(httpapi.New(apiBackend{n}, opts))
}
