package node

import (
	"log/slog"
	"net"
	"net/http"

	"golang.org/x/time/rate"

	"github.com/taskworker/taskworker/internal/limits"
)

// The public API's protection against one client starving the rest (internal/limits): a cap on
// open connections per client address and in all, so file descriptors stay for raft, gossip and
// the data files; a per-client request rate with 429 and Retry-After; server timeouts that close
// idle keep-alives but still allow long polls and log follows.

// limitConns caps the connections the API listener holds open.
func (n *Node) limitConns(ln net.Listener) net.Listener {
	return limits.NewListener(ln, limits.ListenerConfig{MaxConnsPerClient: n.cfg.MaxConnsPerClient})
}

// limitRequests puts the per-client rate limiter in front of h; health and metrics stay exempt so
// monitoring keeps working under load. Without a rate (Config.RateLimit <= 0, the default) there is
// none.
func (n *Node) limitRequests(h http.Handler) http.Handler {
	if n.cfg.RateLimit <= 0 {
		return h
	}
	rl := limits.NewRateLimiter(limits.RateLimitConfig{
		Rate: rate.Limit(n.cfg.RateLimit), Burst: n.cfg.RateBurst,
		ExemptPaths: []string{"/v1/health", "/metrics"},
	})
	return rl.Middleware(h)
}

// newHTTPServer is the API's server with the recommended timeouts.
func (n *Node) newHTTPServer(h http.Handler) *http.Server {
	// The server's own complaints (TLS handshakes of plain-HTTP clients, and the like) go to the
	// node's log at debug level rather than to the standard logger.
	s := &http.Server{Handler: h, ErrorLog: slog.NewLogLogger(n.log.With("component", "http").Handler(), slog.LevelDebug)}
	limits.DefaultServerTimeouts().Apply(s)
	return s
}
