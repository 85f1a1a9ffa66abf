package node

import (
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/internal/acl"
	"github.com/taskworker/taskworker/internal/limits"
	"github.com/taskworker/taskworker/internal/pki"
	"github.com/taskworker/taskworker/tasks"
)

// Deadlines of the node's internal steps, named so each is chosen in one place.
const (
	defaultApplyTimeout = 10 * time.Second // Config.ApplyTimeout
	barrierTimeout      = 10 * time.Second // a new leader catching up with the log
	proposeTimeout      = 10 * time.Second // an executor report or a drain record reaching the leader
	registerTimeout     = 5 * time.Second  // one attempt to register this node
	nodeDownTimeout     = 5 * time.Second  // recording a gone node
	raftChangeTimeout   = 5 * time.Second  // one raft configuration change (add, promote, remove)
	removeSelfTimeout   = 10 * time.Second // a leaving node asking the leader to drop it from raft
	gossipLeaveTimeout  = 5 * time.Second  // broadcasting a graceful gossip leave
	handBackTimeout     = 15 * time.Second // a drain's stopped runs wrapping up and reporting back
	peerRequestTimeout  = 15 * time.Second // one node-to-node HTTP call (log streams use their context)
)

// DefaultRateLimit is the API's default sustained rate per client address, requests per second:
// far above what an interactive user or a worker pool sends, low enough that one runaway client
// cannot take the node's CPU from the others. Benchmarks from one address turn it off.
const DefaultRateLimit = 1000

// Config is everything a node needs. main.go fills it from flags; tests fill it directly.
type Config struct {
	Name         string
	DataDir      string // raft state and local task logs; required unless InmemRaft
	GossipAddr   string // bind host:port (port 0 picks one)
	RaftAddr     string // bind host:port (port 0 picks one)
	HTTPAddr     string // bind host:port (port 0 picks one)
	Advertise    string // host peers use to reach this node
	Join         []string
	Capacity     int
	DrainTimeout time.Duration
	Voters       int
	Registry     *tasks.Registry
	Logger       *slog.Logger
	LogLevel     slog.Level
	Version      string // build version shown in status
	Token        string // when set, every API call but health and metrics needs it (Bearer); ignored by the API with ACL
	// ACL turns on access control by ACL tokens, policies and JWTs (node/acl.go) for the API.
	ACL bool
	// JWT, with ACL, accepts JWTs signed for this cluster (--acl-jwt-config); nil accepts none.
	JWT *acl.JWTMethod

	// Trust between nodes (security.go). Secure is the default: Insecure turns encryption and
	// authentication between nodes off (tests, --dev).
	Insecure  bool
	JoinToken string // the cluster's join token, for a node that joins with no identity yet
	// Cluster names the cluster in its CA and certificates (pki.DefaultCluster when empty).
	Cluster string
	// Operator certificates (--tls-cert, --tls-key, --tls-ca) instead of the cluster CA.
	TLSCertFile, TLSKeyFile, TLSCAFile string
	// TLSVerifyIncoming: HTTPS API clients must present a certificate from the CA.
	TLSVerifyIncoming bool
	// HTTPTLS serves the public API over HTTPS with the node's certificate.
	HTTPTLS bool
	// GossipKey is the operator's gossip key (--encrypt); a new cluster makes one when it is nil.
	GossipKey []byte
	// CertValidity is how long the node certificates this node issues itself are valid (renewed at
	// two thirds); 0 means pki.DefaultNodeValidity (30 days). Tests shorten it to watch a renewal.
	CertValidity time.Duration
	// InternodeAddr binds a listener of its own for internode calls when GossipTransport is set
	// (test twins, whose gossip port is not a socket); "127.0.0.1:0" when empty.
	InternodeAddr string

	// ApplyTimeout bounds a leader's raft apply when no caller set a deadline, default 10s.
	ApplyTimeout time.Duration

	MaxBodyBytes   int64   // request body cap, default MaxInputBytes + limits.BodyOverheadBytes
	MaxInputBytes  int     // a task's input cap (413 input_too_large), default 256 KiB
	MaxResultBytes int     // a task's result cap (the attempt fails, result_too_large), default 256 KiB
	CheckpointRate float64 // checkpoints per second one run may write, default 10

	// API limits (internal/limits). MaxConnsPerClient 0 means 200, negative no cap; RateLimit is
	// requests per second per client address, 0 means the default, negative turns it off.
	MaxConnsPerClient int
	RateLimit         float64
	RateBurst         int
	Retention         time.Duration // finished tasks kept this long, default 24h
	DeadServerGrace   time.Duration // a crashed raft server is removed after this, default 3s

	// Failure detection and election speed; zero values take fast LAN defaults.
	ProbeInterval time.Duration
	ProbeTimeout  time.Duration
	RaftHeartbeat time.Duration
	RaftElection  time.Duration

	// Test twins: in-memory raft stores and transport, and an in-memory gossip network.
	InmemRaft       bool
	RaftTransport   raft.Transport
	GossipTransport memberlist.NodeAwareTransport
}

func (c *Config) setDefaults() error {
	if c.Name == "" {
		return fmt.Errorf("config: name is required")
	}
	if c.DataDir == "" && !c.InmemRaft {
		return fmt.Errorf("config: data dir is required")
	}
	if c.Capacity <= 0 {
		c.Capacity = runtime.NumCPU()
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 30 * time.Second
	}
	if c.Voters <= 0 {
		c.Voters = 3
	}
	if c.MaxInputBytes <= 0 {
		c.MaxInputBytes = limits.DefaultMaxPayloadBytes
	}
	if c.MaxResultBytes <= 0 {
		c.MaxResultBytes = limits.DefaultMaxPayloadBytes
	}
	if c.CheckpointRate <= 0 {
		c.CheckpointRate = limits.DefaultCheckpointsPerSecond
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = int64(c.MaxInputBytes) + limits.BodyOverheadBytes
	}
	if c.RateLimit == 0 {
		c.RateLimit = DefaultRateLimit
	}
	if c.RateBurst <= 0 {
		c.RateBurst = int(2 * max(c.RateLimit, 1))
	}
	if c.Retention <= 0 {
		c.Retention = 24 * time.Hour
	}
	if c.ApplyTimeout <= 0 {
		c.ApplyTimeout = defaultApplyTimeout
	}
	if c.DeadServerGrace <= 0 {
		c.DeadServerGrace = 3 * time.Second
	}
	if c.RaftHeartbeat <= 0 {
		c.RaftHeartbeat = 500 * time.Millisecond
	}
	if c.RaftElection <= 0 {
		c.RaftElection = 500 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Logger = c.Logger.With("node", c.Name)
	if c.Registry == nil {
		return fmt.Errorf("config: a task registry is required")
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.Cluster == "" {
		c.Cluster = pki.DefaultCluster
	}
	if c.Insecure && (c.JoinToken != "" || c.TLSCertFile != "" || c.GossipKey != nil || c.HTTPTLS) {
		return fmt.Errorf("config: --insecure does not go with --join-token, --tls-cert, --encrypt or --http-tls")
	}
	if (c.TLSCertFile != "" || c.TLSKeyFile != "" || c.TLSCAFile != "") && (c.TLSCertFile == "" || c.TLSKeyFile == "" || c.TLSCAFile == "") {
		return fmt.Errorf("config: --tls-cert, --tls-key and --tls-ca go together")
	}
	return nil
}

// advertiseHost picks the host peers should use: the explicit advertise address, the bind host
// when it is specific, or the first private IP of this machine.
func advertiseHost(advertise, bind string) (string, error) {
	if advertise != "" {
		return advertise, nil
	}
	host, _, err := net.SplitHostPort(bind)
	if err != nil {
		return "", fmt.Errorf("bind address %q: %w", bind, err)
	}
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		return host, nil
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", fmt.Errorf("list interface addresses: %w", err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.IsPrivate() {
			return ipn.IP.String(), nil
		}
	}
	return "", fmt.Errorf("no private IP found to advertise; set --advertise")
}
