package worker

import (
	"context"
	"net/http"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/httpapi"
)

// A leaving node answers its clients instead of dropping them. While it drains it serves as
// usual but health says draining; then Release answers every held request (a blocking wait
// returns the record as it is, as a wait that elapsed would; a log follow ends cleanly) and
// RefuseWhenClosing refuses new ones with shutting_down and the leader's address, so clients
// move to another node before the HTTP server shuts down.

// Release lets go of held requests and refuses new ones; only the first call acts.
func (w *Worker) Release(why string) {
	w.releaseOnce.Do(func() {
		w.closing.Store(true)
		close(w.released)
		w.log.Info("answering held requests; new ones are sent elsewhere", "reason", why)
	})
}

// Released is closed once held requests are let go: a held request selects on it.
func (w *Worker) Released() <-chan struct{} { return w.released }

// UntilReleased is ctx, also cancelled once held requests are released; stop frees it.
func (w *Worker) UntilReleased(ctx context.Context) (_ context.Context, stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-w.released:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// RefuseWhenClosing answers every request but health and metrics with 503 shutting_down, and
// the leader's HTTP address, once held requests were released.
func (w *Worker) RefuseWhenClosing(next http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if !w.closing.Load() || r.URL.Path == "/v1/health" || r.URL.Path == "/metrics" {
			next.ServeHTTP(rw, r)
			return
		}
		leader, addr := w.leaderHTTP()
		rw.Header().Set(api.HeaderLeaderAddr, addr)
		msg := "node " + w.cfg.Name + " is shutting down: send requests to another node"
		if addr != "" {
			msg += ", such as the leader " + leader + " at " + addr
		}
		httpapi.WriteError(rw, api.Errorf(api.CodeShuttingDown, "%s", msg))
	})
}

// leaderHTTP returns the leader's name and HTTP host:port as this node knows them, or "" when
// no other node leads.
func (w *Worker) leaderHTTP() (name, addr string) {
	name = w.cfg.Leader()
	if name == "" || name == w.cfg.Name {
		return "", ""
	}
	nd, ok := w.cfg.FSM.Node(name)
	if !ok {
		return name, ""
	}
	return name, nd.HTTPAddr
}
