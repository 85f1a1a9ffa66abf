package node

import (
	"context"
	"net/http"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/httpapi"
)

// A leaving node answers its clients instead of dropping them. While it drains it serves as
// usual but health says draining; then releaseClients answers every held request (a blocking
// wait returns the record as it is, as a wait that elapsed would; a log follow ends cleanly) and
// refuses new ones with shutting_down and the leader's address, so clients move to another node
// before the HTTP server shuts down.

// releaseClients lets go of held requests and refuses new ones; only the first call acts.
func (n *Node) releaseClients(why string) {
	n.releaseOnce.Do(func() {
		n.closing.Store(true)
		close(n.released)
		n.log.Info("answering held requests; new ones are sent elsewhere", "reason", why)
	})
}

// untilReleased is ctx, also cancelled once held requests are released; stop frees it.
func (n *Node) untilReleased(ctx context.Context) (_ context.Context, stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-n.released:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// refuseWhenClosing answers every request but health and metrics with 503 shutting_down, and
// the leader's HTTP address, once held requests were released.
func (n *Node) refuseWhenClosing(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !n.closing.Load() || r.URL.Path == "/v1/health" || r.URL.Path == "/metrics" {
			next.ServeHTTP(w, r)
			return
		}
		leader, addr := n.leaderHTTP()
		w.Header().Set(api.HeaderLeaderAddr, addr)
		msg := "node " + n.cfg.Name + " is shutting down: send requests to another node"
		if addr != "" {
			msg += ", such as the leader " + leader + " at " + addr
		}
		httpapi.WriteError(w, api.Errorf(api.CodeShuttingDown, "%s", msg))
	})
}

// leaderHTTP returns the leader's name and HTTP host:port as this node knows them, or "" when
// no other node leads.
func (n *Node) leaderHTTP() (name, addr string) {
	name = n.Leader()
	if name == "" || name == n.cfg.Name {
		return "", ""
	}
	nd, ok := n.fsm.Node(name)
	if !ok {
		return name, ""
	}
	return name, nd.HTTPAddr
}
