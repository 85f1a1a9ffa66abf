package node

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/internal/acl"
	"github.com/taskworker/taskworker/internal/endpoint"
	"github.com/taskworker/taskworker/internal/limits"
	"github.com/taskworker/taskworker/internal/pki"
	"github.com/taskworker/taskworker/internal/tracing"
	"github.com/taskworker/taskworker/tasks"
)

// Deadlines of the node's internal steps, named so each is chosen in one place.
const (
	defaultApplyTimeout = 10 * time.Second // Config.ApplyTimeout
	barrierTimeout      = 10 * time.Second // a new leader catching up with the log
	nodeDownTimeout     = 5 * time.Second  // recording a gone node
)

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
	// ACL turns on access control by ACL tokens, policies and JWTs (internal/endpoint/acl.go) for the API.
	ACL bool
	// JWT, with ACL, accepts JWTs signed for this cluster (--acl-jwt-config); nil accepts none.
	JWT *acl.JWTMethod
	// AllowAnonymousAPI lets the API listen beyond loopback with neither ACL nor Token
	// (--allow-anonymous-api): anyone who reaches it may submit, read and cancel tasks.
	AllowAnonymousAPI bool
	// Pprof serves Go's profiler (/debug/pprof/) for benchmarks and profiling: "" off (the
	// default), PprofOnAPI on the HTTP API listener, otherwise a loopback host:port of its own.
	Pprof string

	// Trust between nodes (internal/trust). Secure is the default: Insecure turns encryption and
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
	// RaftSnapshotThreshold and RaftSnapshotInterval: raft snapshots the FSM when this many log
	// entries were written since the last snapshot, checked at this interval (raft's defaults,
	// 8192 and 2m, when zero). Lower values keep raft's log smaller and restarts shorter.
	RaftSnapshotThreshold uint64
	RaftSnapshotInterval  time.Duration

	MaxBodyBytes  int64 // request body cap, default MaxInputBytes + limits.BodyOverheadBytes
	MaxInputBytes int   // a task's input cap (413 input_too_large), default 256 KiB
	// OutputMaxBytes bounds the task output this node keeps (tasks.LogStore), default
	// tasks.DefaultOutputBytes; each task keeps at most 1 MiB within it.
	OutputMaxBytes int64
	MaxResultBytes int     // a task's result cap (the attempt fails, result_too_large), default 256 KiB
	CheckpointRate float64 // checkpoints per second one run may write, default 10
	// MaxWorkerSessions caps the worker sessions this node hosts (503 too_many_workers past it),
	// default workerhost.DefaultMaxSessions (1,024).
	MaxWorkerSessions int

	// API limits (internal/limits). MaxConnsPerClient 0 means 200, negative no cap; RateLimit is
	// requests per second per client address, 0 or negative (the default) for none: as in Consul
	// and Nomad, a node does not cap a client's rate unless told to; the connection cap stays.
	MaxConnsPerClient int
	RateLimit         float64
	RateBurst         int
	Retention         time.Duration // finished tasks kept this long, default 24h
	// Quota is admission control: the cluster's cap on waiting tasks and each principal's
	// default caps (internal/endpoint/quota.go).
	Quota           endpoint.QuotaConfig
	DeadServerGrace time.Duration // a crashed raft server is removed after this, default 3s

	// Failure detection and election speed; zero values take fast LAN defaults.
	ProbeInterval time.Duration
	ProbeTimeout  time.Duration
	RaftHeartbeat time.Duration
	RaftElection  time.Duration

	// MinFreeDisk is the free space on the data dir's file system below which the node warns
	// (--min-free-disk, a size such as "256MiB"; "0" turns the warning off); empty means
	// DefaultMinFreeDisk. Below it nothing fails yet: it is the warning before a full disk.
	MinFreeDisk string
	// StorageProbeInterval is how often the storage watchdog writes, syncs and removes a file in
	// the data dir and reads its free space (raftnode.WatchStorage); default 1s.
	StorageProbeInterval time.Duration
	// OnFatal, when set, is called once with the error that stops a node which cannot go on
	// (a corrupt raft log or snapshot, a raft term or vote it cannot save), after the node logged
	// it at ERROR. The agent exits the process there: raft panics on a log entry it cannot read,
	// so the process must end before raft sees the error. When nil the node shuts itself down
	// (Done, Err) as on a name conflict.
	OnFatal func(error)

	// Getenv is the environment tracing reads (OTEL_*, internal/tracing): nil is the process's.
	// Tests give each in-process node its own.
	Getenv func(string) string
	// TraceURLTemplate is the console's link from a task to its trace (--trace-url-template):
	// an http or https URL with {trace_id} in it; "" shows no link.
	TraceURLTemplate string

	// Protocol is the command protocol the node registers; 0 is this build's (fsm.Protocol).
	// Tests set an older one to stand for a node of an older release in a mixed cluster.
	Protocol int

	// Dev is a throwaway single node (--dev): Start gives it a temporary data dir, removed at
	// shutdown, and runs it insecure on loopback; DataDir and Join must be empty.
	Dev bool

	// Test twins: in-memory raft stores and transport, and an in-memory gossip network.
	InmemRaft       bool
	RaftTransport   raft.Transport
	GossipTransport memberlist.NodeAwareTransport
}

// Defaults of the settings that have a flag, shared by the flags (agent.go) and setDefaults, so
// that a node started from Go and one started from the command line run alike.
const (
	DefaultDrainTimeout = 30 * time.Second
	DefaultVoters       = 3
	DefaultRetention    = 24 * time.Hour
	DefaultMinFreeDisk  = "256MiB"
)

// DefaultCapacity is the number of tasks a node runs at once unless told: one per CPU.
func DefaultCapacity() int { return runtime.NumCPU() }

// ErrInvalidConfig marks every problem Validate reports.
var ErrInvalidConfig = errors.New("invalid config")

// setDefaults fills the fields left zero (tests and embedders set only what they need); the
// agent's flags carry the same defaults, so there a zero is the user's and Validate refuses it.
// It never fails: Validate judges the result.
func (c *Config) setDefaults() {
	if c.Capacity == 0 {
		c.Capacity = DefaultCapacity()
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.Voters == 0 {
		c.Voters = DefaultVoters
	}
	if c.OutputMaxBytes == 0 {
		c.OutputMaxBytes = tasks.DefaultOutputBytes
	}
	if c.MaxInputBytes == 0 {
		c.MaxInputBytes = limits.DefaultMaxPayloadBytes
	}
	if c.MaxResultBytes == 0 {
		c.MaxResultBytes = limits.DefaultMaxPayloadBytes
	}
	if c.CheckpointRate == 0 {
		c.CheckpointRate = limits.DefaultCheckpointsPerSecond
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = int64(c.MaxInputBytes) + limits.BodyOverheadBytes
	}
	if c.RateBurst == 0 && c.RateLimit > 0 {
		c.RateBurst = int(2 * max(c.RateLimit, 1))
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	c.Quota.SetDefaults()
	if c.ApplyTimeout == 0 {
		c.ApplyTimeout = defaultApplyTimeout
	}
	if c.DeadServerGrace == 0 {
		c.DeadServerGrace = 3 * time.Second
	}
	if c.RaftHeartbeat == 0 {
		c.RaftHeartbeat = 500 * time.Millisecond
	}
	if c.RaftElection == 0 {
		c.RaftElection = 500 * time.Millisecond
	}
	if c.MinFreeDisk == "" {
		c.MinFreeDisk = DefaultMinFreeDisk
	}
	if c.StorageProbeInterval == 0 {
		c.StorageProbeInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.Cluster == "" {
		c.Cluster = pki.DefaultCluster
	}
}

// Validate reports every problem of the configuration at once, one error a line (errors.Join),
// each wrapping ErrInvalidConfig and naming the flag, so an operator fixes them in one go. It
// judges the config as it will run: Start calls it after setDefaults, the agent on its flags
// (whose defaults are setDefaults'). So a setting with a flag (capacity, voters, drain timeout,
// retention, size caps, checkpoint rate) must be positive here, and a zero from the command line
// is refused; a setting without one (timeouts, body cap, burst) must only not be negative, zero
// standing for its default.
//
// An even number of voters is accepted: it tolerates no more failures than the odd number below
// it, which README says; refusing it would break a cluster that grows one node at a time.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, a...)...))
	}
	if c.TraceURLTemplate != "" {
		if err := tracing.CheckURLTemplate(c.TraceURLTemplate); err != nil {
			bad("--trace-url-template: %v", err)
		}
	}
	if c.Name == "" {
		bad("--name is required")
	}
	if c.Dev {
		if c.DataDir != "" {
			bad("--dev does not go with --data-dir (a dev node keeps its data in a temporary directory)")
		}
		if len(c.Join) > 0 {
			bad("--dev does not go with --join (a dev node is a cluster of its own)")
		}
		if c.JoinToken != "" || c.TLSCertFile != "" || c.GossipKey != nil || c.HTTPTLS {
			bad("--dev runs without node-to-node security: it does not go with --join-token, --tls-cert, --encrypt or --http-tls")
		}
	} else if c.DataDir == "" && !c.InmemRaft {
		bad("--data-dir is required (or --dev for a throwaway node)")
	}
	if c.Registry == nil {
		bad("a task registry is required")
	}
	if err := checkPprof(c.Pprof, c.ACL); err != nil {
		bad("%v", err)
	}
	if c.Capacity < 1 {
		bad("--capacity must be at least 1, got %d", c.Capacity)
	}
	if c.Voters < 1 {
		bad("--voters must be at least 1, got %d", c.Voters)
	}
	if c.DrainTimeout <= 0 {
		bad("--drain-timeout must be positive, got %s", c.DrainTimeout)
	}
	if c.Retention <= 0 {
		bad("--retention must be positive, got %s", c.Retention)
	}
	for _, p := range c.Quota.Problems() {
		bad("%s", p)
	}
	if c.OutputMaxBytes < 1<<20 {
		bad("--output-max-bytes must be at least 1 MiB (one task's output), got %d", c.OutputMaxBytes)
	}
	if c.MaxInputBytes < 1 {
		bad("--max-input-bytes must be positive, got %d", c.MaxInputBytes)
	}
	if c.MaxResultBytes < 1 {
		bad("--max-result-bytes must be positive, got %d", c.MaxResultBytes)
	}
	if c.MaxBodyBytes < 0 {
		bad("request body cap must not be negative, got %d", c.MaxBodyBytes)
	}
	if !(c.CheckpointRate > 0) {
		bad("--checkpoint-rate must be positive, got %v", c.CheckpointRate)
	}
	if _, err := parseMinFreeDisk(c.MinFreeDisk); err != nil {
		bad("--min-free-disk: %v", err)
	}
	if c.RateBurst < 0 {
		bad("rate burst must not be negative, got %d", c.RateBurst)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"apply timeout", c.ApplyTimeout}, {"dead server grace", c.DeadServerGrace},
		{"probe interval", c.ProbeInterval}, {"probe timeout", c.ProbeTimeout},
		{"raft heartbeat", c.RaftHeartbeat}, {"raft election timeout", c.RaftElection},
		{"storage probe interval", c.StorageProbeInterval},
		{"--raft-snapshot-interval", c.RaftSnapshotInterval},
	} {
		if d.v < 0 {
			bad("%s must not be negative, got %s", d.name, d.v)
		}
	}
	addrs := []struct {
		flag, v string
		check   bool
	}{
		{"--gossip-addr", c.GossipAddr, c.GossipTransport == nil},
		{"--raft-addr", c.RaftAddr, c.RaftTransport == nil},
		{"--http-addr", c.HTTPAddr, true},
	}
	for _, a := range addrs {
		if a.check {
			if err := checkHostPort(a.v); err != nil {
				bad("%s %q: %v", a.flag, a.v, err)
			}
		}
	}
	for _, j := range c.Join {
		if err := checkHostPort(j); err != nil {
			bad("--join %q: %v", j, err)
		}
	}
	if c.Advertise != "" {
		if _, _, err := net.SplitHostPort(c.Advertise); err == nil || strings.ContainsAny(c.Advertise, "/ ") {
			bad("--advertise %q: want a host or IP, without a port", c.Advertise)
		}
	}
	if c.Insecure && (c.JoinToken != "" || c.TLSCertFile != "" || c.GossipKey != nil || c.HTTPTLS) {
		bad("--insecure does not go with --join-token, --tls-cert, --encrypt or --http-tls")
	}
	if (c.TLSCertFile != "" || c.TLSKeyFile != "" || c.TLSCAFile != "") && (c.TLSCertFile == "" || c.TLSKeyFile == "" || c.TLSCAFile == "") {
		bad("--tls-cert, --tls-key and --tls-ca go together")
	}
	if c.TLSVerifyIncoming && !c.HTTPTLS {
		bad("--tls-verify-incoming needs --http-tls")
	}
	if c.JWT != nil && !c.ACL {
		bad("--acl-jwt-config needs --acl")
	}
	if host, _, err := net.SplitHostPort(c.HTTPAddr); err == nil && c.anonymousAPI() && !isLoopback(host) {
		bad("--http-addr %q is reachable beyond this machine and the API has no access control: anyone who reaches it "+
			"could submit, read and cancel tasks. Use --acl (or --token), bind 127.0.0.1, or pass --allow-anonymous-api to accept that", c.HTTPAddr)
	}
	return errors.Join(errs...)
}

// anonymousAPI reports whether the API would serve callers without any credential on a secure
// node whose operator has not said that is wanted. Insecure and dev nodes are open on purpose.
func (c *Config) anonymousAPI() bool {
	return !c.ACL && c.Token == "" && !c.Insecure && !c.Dev && !c.AllowAnonymousAPI
}

// checkHostPort accepts host:port with a port from 0 to 65535 (0 picks a free one); the host may
// be empty (every interface).
func checkHostPort(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("want host:port")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
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

// PprofOnAPI is the Config.Pprof value that serves /debug/pprof/ on the HTTP API listener.
const PprofOnAPI = "api"

// checkPprof judges Config.Pprof. The profiler has no access control of its own (and
// /debug/pprof/cmdline shows the agent's command line), so a listener of its own must be a
// loopback one, and with ACLs, whose checks it would bypass, it cannot share the API listener.
func checkPprof(v string, aclOn bool) error {
	switch v {
	case "":
		return nil
	case PprofOnAPI:
		if aclOn {
			return errors.New("--pprof on the API listener does not go with --acl (the profiler would bypass it): give a loopback host:port, --pprof=127.0.0.1:6060")
		}
		return nil
	}
	host, _, err := net.SplitHostPort(v)
	if err != nil {
		return fmt.Errorf("--pprof %q: want true (the API listener) or a loopback host:port: %w", v, err)
	}
	if !isLoopback(host) {
		return fmt.Errorf("--pprof %q: the profiler listens on loopback only (it has no access control)", v)
	}
	return nil
}

// parseMinFreeDisk reads --min-free-disk: a size in bytes with an optional unit, SI or IEC
// ("256MiB", "1GB", "0"), by go-humanize, which reads every spelling an operator may use. Empty
// is the default.
func parseMinFreeDisk(v string) (uint64, error) {
	if v == "" {
		v = DefaultMinFreeDisk
	}
	b, err := humanize.ParseBytes(v)
	if err != nil {
		return 0, fmt.Errorf("want a size such as 256MiB or 1GB, got %q", v)
	}
	return b, nil
}
