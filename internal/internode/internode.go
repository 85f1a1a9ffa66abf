// Package internode owns the node-to-node channel and the way a node's writes reach raft.
//
// The channel is an HTTP server on the internode listener (the gossip port, through gossipmux)
// (server.go) and the clients a node calls other nodes with (internode.go). In secure mode both ends
// use TLS 1.3 with certificates of the cluster CA (or the operator's); the server asks for a
// client certificate, and every route but the ones mounted as Open refuses a caller without one,
// or with one that names no node. The caller's node name is read from its certificate
// (pki.NodeName) and handed to the routes (CallerOf), so a node's command can be checked against
// the node that sent it. In insecure mode it is plain HTTP and callers are not known.
//
// It serves its own routes: the commands a node sends about itself (reports, its registration,
// its drain, a running task's children), checked against the caller and applied by the leader
// (routes.go), and a leaving node's raft removal. Other parts hand it the handlers of theirs to
// mount (Route): the API's forwarded writes (internal/forward), the join exchange and the
// secrets (internal/trust), log reads.
//
// On the write side it owns Propose (a write of the API, on the leader), ProposeNode (a node's
// own command, sent to the leader wherever it is and retried across leader changes), Apply with
// the leader's batcher (batch.go) and the placement proposed right behind a submit
// (placement.go), and a follower's wait for its own FSM to hold a write (WaitIndex). It is the
// cluster as internal/forward sees it (Forwarding), the one part it imports: for the interface it
// implements and the not-leader header the forward route and its own routes share.
//
// It proposes through the *raft.Raft it is given and reads the FSM; it may not change raft's
// configuration except to remove a leaving node at that node's own request, and it may not touch
// the public API, the ACLs, trust material beyond reading it (Trust), or the executor. What it
// needs of those comes in as Config's functions.
package internode

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"go.opentelemetry.io/otel/trace"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/pki"
	"github.com/taskworker/taskworker/membership"
)

// requestTimeout bounds one node-to-node HTTP call made with Client (log streams use their
// context).
const requestTimeout = 15 * time.Second

// Trust is the node's trust material as the channel reads it (internal/trust).
type Trust interface {
	// Insecure reports --insecure: plain HTTP, callers not known.
	Insecure() bool
	// Holder holds this node's certificate and the CAs it trusts, reloaded in place.
	Holder() *pki.Holder
	// ServerName is the name every internode certificate carries.
	ServerName() string
	// Cluster is the cluster's name, which a node certificate names its node under.
	Cluster() string
}

// Metrics counts what the channel does.
type Metrics interface {
	// ObserveApply is given how long a raft apply took.
	ObserveApply(d time.Duration)
	// PlacedAtSubmit counts assignments proposed with their submit.
	PlacedAtSubmit(n int)
	// ForwardAbandoned counts forwards given up because raft named another leader meanwhile.
	ForwardAbandoned()
}

// Config is what a Channel works with: this node's raft, FSM and trust, its settings, and
// functions for what lives in the node.
type Config struct {
	Name   string // this node's name
	Raft   *raft.Raft
	FSM    *fsm.FSM
	Trust  Trust
	Logger *slog.Logger
	// Done is closed when the node shuts down: waits on raft give up then.
	Done <-chan struct{}
	// ApplyTimeout bounds an apply for a caller without a deadline.
	ApplyTimeout time.Duration
	Metrics      Metrics

	// Leader is the name of the leader raft names on this node, "" when it names none.
	Leader func() string
	// Members is gossip's view of the members; nil before gossip runs.
	Members func() []membership.Member
	// Alive returns the names of the nodes placement may use.
	Alive func() map[string]bool
	// Announce tells the followers at once that the commit index moved (raft would tell them
	// at its next heartbeat).
	Announce func()
	// ServerIDs returns the raft IDs among servers that belong to the named node.
	ServerIDs func(servers []raft.Server, name string) []raft.ServerID
	// MemberID is the raft server ID a gossip member runs under.
	MemberID func(m membership.Member) raft.ServerID
	// StorageFault is why this node's storage cannot take writes now; "" when it can.
	StorageFault func() string
	// Admission gives the caps a submit is applied under (fsm.PrepareEnv).
	Admission func() *fsm.AdmissionEnv
	// CheckChild validates a child submit a node sends, as the API validates a submit; an
	// *api.Error when it is refused.
	CheckChild func(s *fsm.Submit) error
	// AllowWarning reports whether a refused call of the kind and address in key is logged now,
	// and how many were not since the last one logged.
	AllowWarning func(key string) (ok bool, suppressed int)
	// Tracer, when set, records the commit of a traced submit and the placement of traced tasks
	// as spans; nil is tracing off.
	Tracer trace.Tracer
}

// Channel is this node's end of the node-to-node channel, and its way to raft.
type Channel struct {
	cfg Config
	log *slog.Logger // the node's
	srv *http.Server

	client *http.Client // calls with a deadline
	// streamClient has no deadline: log follows last as long as a task, and the leader may hold
	// a forwarded write as long as a submit's ?wait.
	streamClient *http.Client
	leaderHint   atomic.Value // string: the leader a not-leader reply named

	batch *batcher
	// lastPlaced is the node placeAtSubmit last assigned to (a string): its round-robin tie-break.
	lastPlaced atomic.Value
	leaders    leaderWatch // raft's leader changes, for forwards
	hold       hold        // tests freeze the server side with it
}

// New returns a Channel over cfg. Its batcher runs in Run, its server in Serve.
func New(cfg Config) *Channel {
	c := &Channel{cfg: cfg, log: cfg.Logger}
	c.batch = newBatcher(func(cmd *fsm.Command, timeout time.Duration) (func() (*fsm.Result, error), error) {
		a, err := c.raftStart(cmd, timeout)
		if err != nil {
			return nil, err
		}
		return func() (*fsm.Result, error) { return c.raftFinish(a) }, nil
	}, cfg.ApplyTimeout)
	// Every call to a peer shares one transport, and so one multiplexed HTTP/2 connection per
	// peer (TLS with ALPN "h2", or h2c with prior knowledge when --insecure): no handshake and no
	// connection per call, and a busy follower holds one connection of the peer's gossip port, not
	// dozens. The two clients differ only in their deadline.
	tr := c.transport()
	c.client = &http.Client{Timeout: requestTimeout, Transport: tr}
	c.streamClient = &http.Client{Transport: tr}
	c.srv = c.newServer()
	return c
}

func (c *Channel) isLeader() bool { return c.cfg.Raft.State() == raft.Leader }

// Run runs the leader's batcher until ctx ends.
func (c *Channel) Run(ctx context.Context) { c.batch.run(ctx) }

// Client is the client for internode calls with a deadline.
func (c *Channel) Client() *http.Client { return c.client }

// StreamClient is the client for internode log follows, which have none.
func (c *Channel) StreamClient() *http.Client { return c.streamClient }

// transport is the internode transport: HTTP/2 only, so that every call to a peer shares one
// connection (Go opens a second one only past the peer's limit of concurrent streams). A peer
// that stops answering (frozen, cut off) is found by HTTP/2 pings: after pingAfter without a
// frame the transport pings, and a ping unanswered within pingTimeout closes the connection, so
// the calls on it fail and the next ones dial again instead of queueing behind a dead socket.
func (c *Channel) transport() *http.Transport {
	tr := &http.Transport{
		IdleConnTimeout: 90 * time.Second,
		HTTP2:           &http.HTTP2Config{SendPingTimeout: pingAfter, PingTimeout: pingTimeout},
		Protocols:       new(http.Protocols),
	}
	s := c.cfg.Trust
	if s.Insecure() {
		tr.Protocols.SetUnencryptedHTTP2(true) // h2c with prior knowledge on http:// URLs
		return tr
	}
	tr.Protocols.SetHTTP2(true)
	tr.ForceAttemptHTTP2 = true
	tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		// Made per dial, so a reloaded CA bundle is trusted from the next connection on.
		cfg := pki.InternodeClientConfig(s.Holder(), s.ServerName())
		cfg.NextProtos = []string{alpnH2}
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
		return d.DialContext(ctx, network, addr)
	}
	return tr
}

// HTTP/2 on the internode channel.
const (
	alpnH2      = "h2"
	pingAfter   = 2 * time.Second // no frame from the peer for this long: ping it
	pingTimeout = time.Second     // an unanswered ping closes the connection
)

// Request builds an internode request to the node at addr (its internode address).
func (c *Channel) Request(ctx context.Context, method, addr, path string, body io.Reader) (*http.Request, error) {
	scheme := "https://"
	if c.cfg.Trust.Insecure() {
		scheme = "http://"
	}
	return http.NewRequestWithContext(ctx, method, scheme+addr+path, body)
}

// Get sends a GET to path on the node at addr with Client.
func (c *Channel) Get(ctx context.Context, addr, path string) (*http.Response, error) {
	req, err := c.Request(ctx, http.MethodGet, addr, path, nil)
	if err != nil {
		return nil, err
	}
	return c.client.Do(req)
}

func (c *Channel) members() []membership.Member {
	if c.cfg.Members == nil {
		return nil
	}
	return c.cfg.Members()
}

// Addr is where the named node takes internode calls: its gossip address (or the address its
// gossip metadata names), from gossip, else from its FSM record; "" when unknown.
func (c *Channel) Addr(name string) string {
	for _, m := range c.members() {
		if m.Name == name {
			if m.Meta.Internode != "" {
				return m.Meta.Internode
			}
			return m.GossipAddr
		}
	}
	if nd, ok := c.cfg.FSM.Node(name); ok {
		return nd.GossipAddr
	}
	return ""
}

// LeaderAddr is the internode address of the leader raft names, or of the one a not-leader
// reply named (a node that is not a raft member yet learns the leader that way); "" when
// unknown.
func (c *Channel) LeaderAddr() string {
	name := c.cfg.Leader()
	if name == "" {
		name, _ = c.leaderHint.Load().(string)
	}
	if name == "" || name == c.cfg.Name {
		return ""
	}
	return c.Addr(name)
}

// AnyAddr is the internode address of a random alive member other than this node, to ask who
// leads; "" when there is none.
func (c *Channel) AnyAddr() string {
	var addrs []string
	for _, m := range c.members() {
		if m.Name != c.cfg.Name && m.State == membership.StateAlive {
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

// leaderOrAnyAddr is LeaderAddr, else, between leaders, AnyAddr: any member answers with the
// leader's name (leaderHint).
func (c *Channel) leaderOrAnyAddr() string {
	if addr := c.LeaderAddr(); addr != "" {
		return addr
	}
	return c.AnyAddr()
}
