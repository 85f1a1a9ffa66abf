package internode

import (
	"context"
	"crypto/tls"
	"errors"
	stdlog "log"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/internal/pki"
)

// Route is a handler another part serves on the channel.
type Route struct {
	Pattern string // an http.ServeMux pattern, such as "POST /v1/internode/join"
	Handler http.Handler
	// Open: the route serves callers without a node certificate (the join exchange, whose
	// caller has none yet). Its pattern must hold no wildcard.
	Open bool
}

// Caller is who made an internode call.
type Caller struct {
	// Name is the node its certificate names; "" in insecure mode.
	Name string
	// anyNode: the call cannot be tied to one node because nothing is authenticated (insecure
	// mode), so it may act for any. A certificate that names no node never gets this.
	anyNode bool
}

// May reports whether the caller may act for the named node.
func (c Caller) May(node string) bool { return c.anyNode || (c.Name != "" && c.Name == node) }

type callerKey struct{}

// CallerOf returns the caller of the internode request whose context ctx is; the zero Caller,
// which may act for no node, outside one.
func CallerOf(ctx context.Context) Caller {
	c, _ := ctx.Value(callerKey{}).(Caller)
	return c
}

// WriteError writes an error body with the API's shape; the internode routes have codes of
// their own.
func WriteError(w http.ResponseWriter, status int, code, msg string) {
	httpapi.WriteJSON(w, status, api.Error{Message: msg, Code: api.Code(code)})
}

func (c *Channel) newServer() *http.Server {
	// HTTP/1.1 stays for callers that are not nodes (the join exchange, and a node of an earlier
	// release); nodes of this one speak HTTP/2 over one connection (transport).
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	p.SetUnencryptedHTTP2(c.cfg.Trust.Insecure())
	return &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		Protocols:         p,
		HTTP2:             &http.HTTP2Config{SendPingTimeout: pingAfter, PingTimeout: pingTimeout},
		// Refused handshakes (no certificate, another CA) are logged here, one line each.
		ErrorLog: stdlog.New(handshakeLog{c}, "", 0),
	}
}

// Server is the channel's HTTP server, for the node to shut down with its others; nil on a nil
// Channel (a node that stopped before it made its channel).
func (c *Channel) Server() *http.Server {
	if c == nil {
		return nil
	}
	return c.srv
}

// Serve serves the channel's routes and the mounted ones on ln until the server is shut down.
func (c *Channel) Serve(ln net.Listener, mounted ...Route) {
	if !c.cfg.Trust.Insecure() {
		ln = tls.NewListener(ln, c.serverTLS())
	}
	open := map[string]bool{}
	for _, r := range mounted {
		if r.Open {
			_, path, _ := strings.Cut(r.Pattern, " ")
			open[path] = true
		}
	}
	c.srv.Handler = c.auth(open, c.routes(mounted))
	if err := c.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !c.shuttingDown() {
		c.log.With("component", "internode").Error("internode server", "err", err)
	}
}

func (c *Channel) shuttingDown() bool {
	select {
	case <-c.cfg.Done:
		return true
	default:
		return false
	}
}

// serverTLS asks every client for a certificate and verifies one if given; the open routes are
// the only ones that serve a client without (auth).
func (c *Channel) serverTLS() *tls.Config {
	h := c.cfg.Trust.Holder()
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: h.GetCertificate,
		NextProtos:     []string{alpnH2, "http/1.1"},
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
				NextProtos:     []string{alpnH2, "http/1.1"},
				// See pki.InternodeServerConfig: a resumed session would skip a reloaded CA bundle.
				SessionTicketsDisabled: true,
			}, nil
		},
	}
}

// auth identifies the caller of an internode route and refuses one without a cluster
// certificate, except on the open paths.
func (c *Channel) auth(open map[string]bool, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := c.cfg.Trust
		if s.Insecure() {
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, Caller{anyNode: true})))
			return
		}
		if open[r.URL.Path] {
			next.ServeHTTP(w, r)
			return
		}
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			c.warnRefused("", r.RemoteAddr, "refused an internode call without a node certificate", "path", api.Truncate(r.URL.Path))
			WriteError(w, http.StatusUnauthorized, "unauthorized", "internode calls need a node certificate of this cluster")
			return
		}
		// crypto/tls has verified the chain against the cluster's CAs (VerifyClientCertIfGiven).
		leaf := r.TLS.PeerCertificates[0]
		if err := leaf.VerifyHostname(s.ServerName()); err != nil {
			c.warnRefused("", r.RemoteAddr, "refused an internode call: the certificate does not name a cluster server", "err", err)
			WriteError(w, http.StatusForbidden, "forbidden", "the certificate does not name a server of this cluster")
			return
		}
		// Every route here is a node's: a certificate that names none (an operator's `tls cert
		// create --server` without --node) would otherwise speak for every node at once.
		name, ok := pki.NodeName(leaf, s.Cluster())
		if !ok {
			c.warnRefused("", r.RemoteAddr, "refused an internode call: the certificate names no node", "path", api.Truncate(r.URL.Path))
			WriteError(w, http.StatusForbidden, "forbidden", "internode calls need a certificate that names a node of this cluster")
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, Caller{Name: name})))
	})
}

// warnRefused logs a refused internode call at most as often as Config.AllowWarning lets it per
// remote IP, as a refused join is: a peer without the cluster's certificate must not fill the
// log by retrying. Each kind of refusal gets its own lines.
func (c *Channel) warnRefused(kind, remote, msg string, args ...any) {
	ip := remote
	if h, _, err := net.SplitHostPort(remote); err == nil {
		ip = h
	}
	ok, suppressed := c.cfg.AllowWarning(kind + ip)
	if !ok {
		return
	}
	args = append(args, "remote", remote)
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	c.log.With("component", "internode").Warn(msg, args...)
}

// handshakeLog takes the server's error log (a refused TLS handshake: no certificate of the
// cluster, another CA) through warnRefused, keyed by the remote address in the line.
type handshakeLog struct{ c *Channel }

func (h handshakeLog) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	remote := "?"
	if _, rest, ok := strings.Cut(line, " from "); ok {
		remote, _, _ = strings.Cut(rest, ": ")
	}
	h.c.warnRefused("tls ", remote, line)
	return len(p), nil
}

// hold holds every internode request while set, as a frozen process would (SIGSTOP).
type hold struct {
	release atomic.Pointer[chan struct{}] // held until this is closed; nil: serve
	held    atomic.Int64                  // requests that have been held
}

func (h *hold) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ch := h.release.Load(); ch != nil {
			h.held.Add(1)
			select {
			case <-*ch:
			case <-r.Context().Done():
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// Hold makes the server hold every request it receives from now until release is closed;
// Hold(nil) lets new ones through. It is the in-process tests' way to freeze a leader's side of
// forwarding; nothing calls it outside tests.
func (c *Channel) Hold(release chan struct{}) {
	if release == nil {
		c.hold.release.Store(nil)
		return
	}
	c.hold.release.Store(&release)
}

// Held is how many requests the server has held (Hold).
func (c *Channel) Held() int64 { return c.hold.held.Load() }
