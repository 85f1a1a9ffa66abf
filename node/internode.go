package node

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	stdlog "log"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/pki"
	"github.com/taskworker/taskworker/membership"
)

// The internode channel: an HTTP server on the internode listener (the gossip port, through
// gossipmux) and the client nodes call it with. In secure mode both ends use TLS 1.3 with
// certificates of the cluster CA (or the operator's); the server asks for a client certificate,
// and every route but the join exchange refuses a caller without one, or with one that names no
// node. The caller's node name is read from its certificate (pki.NodeName), so a forwarded
// executor report can be checked against the node that sent it. In insecure mode it is plain
// HTTP and callers are not known.

// internodeCaller is who made an internode call.
type internodeCaller struct {
	name string
	// anyNode: the call cannot be tied to one node because nothing is authenticated (insecure
	// mode), so it may act for any. A certificate that names no node never gets this.
	anyNode bool
}

// may reports whether the caller may act for the named node.
func (c internodeCaller) may(node string) bool { return c.anyNode || (c.name != "" && c.name == node) }

type callerKey struct{}

func callerOf(ctx context.Context) internodeCaller {
	c, _ := ctx.Value(callerKey{}).(internodeCaller)
	return c
}

// checkNodeIdentity checks that a forwarded command about a node comes from that node: only a
// node registers, drains or reports for itself. Submits and cancels are users' requests that any
// node may pass on.
func checkNodeIdentity(c *fsm.Command, caller internodeCaller) error {
	var names []string
	switch b := c.Body.(type) {
	case *fsm.Register:
		names = []string{b.Node.Name}
	case *fsm.Drain:
		names = []string{b.Name}
	case *fsm.ReportBatch:
		for _, r := range b.Items {
			names = append(names, r.Node)
		}
	}
	for _, name := range names {
		if !caller.may(name) {
			return api.Errorf(api.CodeForbidden, "node %q may not send a %s command for node %q", api.Truncate(caller.name), c.Type(), api.Truncate(name))
		}
	}
	return nil
}

// internodeAuth identifies the caller of an internode route and refuses one without a cluster
// certificate (except on the join route, whose caller has no certificate yet).
func (n *Node) internodeAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := n.trust
		if s.Insecure() {
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, internodeCaller{anyNode: true})))
			return
		}
		if r.URL.Path == internodeJoinPath {
			next.ServeHTTP(w, r)
			return
		}
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			n.warnRefusedCall(r.RemoteAddr, "refused an internode call without a node certificate", "path", api.Truncate(r.URL.Path))
			writeError(w, http.StatusUnauthorized, "unauthorized", "internode calls need a node certificate of this cluster")
			return
		}
		// crypto/tls has verified the chain against the cluster's CAs (VerifyClientCertIfGiven).
		leaf := r.TLS.PeerCertificates[0]
		if err := leaf.VerifyHostname(s.ServerName()); err != nil {
			n.warnRefusedCall(r.RemoteAddr, "refused an internode call: the certificate does not name a cluster server", "err", err)
			writeError(w, http.StatusForbidden, "forbidden", "the certificate does not name a server of this cluster")
			return
		}
		// Every route here is a node's: a certificate that names none (an operator's `tls cert
		// create --server` without --node) would otherwise speak for every node at once.
		name, ok := pki.NodeName(leaf, s.Cluster())
		if !ok {
			n.warnRefusedCall(r.RemoteAddr, "refused an internode call: the certificate names no node", "path", api.Truncate(r.URL.Path))
			writeError(w, http.StatusForbidden, "forbidden", "internode calls need a certificate that names a node of this cluster")
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, internodeCaller{name: name})))
	})
}

// warnRefusedCall logs a refused internode call at most once per remote IP per minute, as a
// refused join is: a peer without the cluster's certificate must not fill the log by retrying.
func (n *Node) warnRefusedCall(remote, msg string, args ...any) {
	n.warnRefused("", remote, msg, args...)
}

// warnRefused is warnRefusedCall for one kind of refusal: each kind gets its own line per IP.
func (n *Node) warnRefused(kind, remote, msg string, args ...any) {
	ip := remote
	if h, _, err := net.SplitHostPort(remote); err == nil {
		ip = h
	}
	ok, suppressed := n.callRefusals.Allow(kind+ip, time.Now())
	if !ok {
		return
	}
	args = append(args, "remote", remote)
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	n.log.With("component", "internode").Warn(msg, args...)
}

// handshakeLog takes the internode server's error log (a refused TLS handshake: no certificate
// of the cluster, another CA) through warnRefusedCall, keyed by the remote address in the line.
type handshakeLog struct{ n *Node }

func (h handshakeLog) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	remote := "?"
	if _, rest, ok := strings.Cut(line, " from "); ok {
		remote, _, _ = strings.Cut(rest, ": ")
	}
	h.n.warnRefused("tls ", remote, line)
	return len(p), nil
}

// internodeServerTLS asks every client for a certificate and verifies one if given; the join
// route is the only one that serves a client without (internodeAuth).
func (n *Node) internodeServerTLS() *tls.Config {
	h := n.trust.Holder()
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: h.GetCertificate,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			id := h.Identity()
			if id == nil {
				return nil, pki.ErrNoIdentity
			}
			return &tls.Config{
				MinVersion:     tls.VersionTLS13,
				GetCertificate: h.GetCertificate,
				ClientAuth:     tls.VerifyClientCertIfGiven,
				ClientCAs:      id.Roots,
				// See pki.InternodeServerConfig: a resumed session would skip a reloaded CA bundle.
				SessionTicketsDisabled: true,
			}, nil
		},
	}
}

// serveInternode serves the internode routes on ln until the node shuts down.
func (n *Node) serveInternode(ln net.Listener) {
	if !n.trust.Insecure() {
		ln = tls.NewListener(ln, n.internodeServerTLS())
	}
	log := n.log.With("component", "internode")
	n.internode = &http.Server{
		Handler:           n.internodeAuth(n.internodeRoutes()),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// Refused handshakes (no certificate, another CA) are logged here, one line each.
		ErrorLog: stdlog.New(handshakeLog{n}, "", 0),
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.internode.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && n.ctx.Err() == nil {
			log.Error("internode server", "err", err)
		}
	}()
}

// newInternodeClients makes the clients for internode calls: n.client for calls with a deadline
// and n.streamClient for log follows that last as long as a task.
func (n *Node) newInternodeClients() {
	// Each peer's gossip port admits limits.DefaultGossipMaxConnsPerClient (256) connections from
	// one address; past it a forward is refused at accept and retried. Holding forwards to 64 per
	// peer (a forward in flight takes one, and they wait for each other past that) and log
	// follows, which last as long as a task, to 128 keeps a busy follower inside the cap.
	n.client = &http.Client{Timeout: internodeRequestTimeout, Transport: n.internodeTransport(64)}
	n.streamClient = &http.Client{Transport: n.internodeTransport(128)}
	n.forwardClient = &http.Client{Transport: n.internodeTransport(128)}
}

// internodeTransport is an internode transport holding at most maxPerNode connections to one node.
func (n *Node) internodeTransport(maxPerNode int) *http.Transport {
	tr := &http.Transport{MaxConnsPerHost: maxPerNode, MaxIdleConnsPerHost: 32, IdleConnTimeout: 90 * time.Second}
	if s := n.trust; !s.Insecure() {
		tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			// Made per dial, so a reloaded CA bundle is trusted from the next connection on.
			d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: pki.InternodeClientConfig(s.Holder(), s.ServerName())}
			return d.DialContext(ctx, network, addr)
		}
	}
	return tr
}

// internodeRequest builds an internode request to the node at addr (its internode address).
func (n *Node) internodeRequest(ctx context.Context, method, addr, path string, body io.Reader) (*http.Request, error) {
	scheme := "https://"
	if n.trust.Insecure() {
		scheme = "http://"
	}
	return http.NewRequestWithContext(ctx, method, scheme+addr+path, body)
}

// internodeAddr is where the named node takes internode calls: its gossip address (or the
// address its gossip metadata names), from gossip, else from its FSM record; "" when unknown.
func (n *Node) internodeAddr(name string) string {
	var members []membership.Member
	if n.members != nil {
		members = n.members.Members()
	}
	for _, m := range members {
		if m.Name == name {
			if m.Meta.Internode != "" {
				return m.Meta.Internode
			}
			return m.GossipAddr
		}
	}
	if nd, ok := n.fsm.Node(name); ok {
		return nd.GossipAddr
	}
	return ""
}

// leaderInternodeAddr is the internode address of the leader raft names, or of the one a
// not-leader reply named (a node that is not a raft member yet learns the leader that way); ""
// when unknown.
func (n *Node) leaderInternodeAddr() string {
	name := n.Leader()
	if name == "" {
		name, _ = n.leaderHint.Load().(string)
	}
	if name == "" || name == n.cfg.Name {
		return ""
	}
	return n.internodeAddr(name)
}

// anyInternodeAddr is the internode address of a random alive member other than this node, to ask
// who leads; "" when there is none.
func (n *Node) anyInternodeAddr() string {
	var addrs []string
	for _, m := range n.members.Members() {
		if m.Name != n.cfg.Name && m.State == membership.StateAlive {
			if m.Meta.Internode != "" {
				addrs = append(addrs, m.Meta.Internode)
			} else {
				addrs = append(addrs, m.GossipAddr)
			}
		}
	}
	if len(addrs) == 0 {
		return ""
	}
	return addrs[rand.IntN(len(addrs))]
}
