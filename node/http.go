package node

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/ui"
)

// routes is the public API (internal/httpapi over internal/endpoint) and the web console (ui), behind
// the API token when one is set. The internode routes are not here: internal/internode serves them
// on the internode listener (internode.go).
func (n *Node) routes() http.Handler {
	opts := httpapi.Options{Token: n.cfg.Token, MaxBodyBytes: n.cfg.MaxBodyBytes, Logger: n.log.With("component", "http"),
		Observe: n.metrics.ObserveHTTP, UI: ui.Handler(), Forward: n.fwd, Workers: workerSessions{n.workers},
		Tracer: n.tracer}
	if n.cfg.ACL {
		opts.ACL = n.ep.ACL
	}
	if !n.trust.Insecure() { // the operator routes hold what admits a machine: management credential only
		opts.Management = n.trust.IsManagement
	}
	switch n.cfg.Pprof {
	case "":
	case PprofOnAPI:
		opts.Pprof = pprofMux() // behind the operator routes' guard
	default:
		n.goLoop(n.servePprof)
	}
	return n.work.RefuseWhenClosing(httpapi.New(n.ep, opts))
}

// pprofMux is Go's profiler, registered here rather than through net/http/pprof's side effect on
// http.DefaultServeMux, which nothing of the node serves.
func pprofMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// servePprof serves the profiler on the loopback address of its own (--pprof=HOST:PORT) until
// the node stops. A profiler that cannot listen is logged, not fatal: it is a diagnostic aid.
func (n *Node) servePprof(ctx context.Context) {
	ln, err := net.Listen("tcp", n.cfg.Pprof)
	if err != nil {
		n.log.Error("pprof listener", "addr", n.cfg.Pprof, "err", err)
		return
	}
	srv := &http.Server{Handler: pprofMux(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	n.log.Info("pprof listening", "addr", ln.Addr().String())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		n.log.Error("pprof server", "err", err)
	}
}
