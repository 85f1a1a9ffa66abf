// Package node wires one taskworker node together: gossip membership, raft with its stores, the
// FSM, the scheduler loop while leader, the executor, and the HTTP API that forwards writes to the
// leader. It reconciles gossip members with raft servers and FSM nodes.
package node

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/gossipmux"
	"github.com/taskworker/taskworker/internal/limits"
	"github.com/taskworker/taskworker/internal/pki"
	"github.com/taskworker/taskworker/internal/raftls"
	"github.com/taskworker/taskworker/internal/store"
	"github.com/taskworker/taskworker/internal/trust"
	"github.com/taskworker/taskworker/membership"
	"github.com/taskworker/taskworker/scheduler"
	"github.com/taskworker/taskworker/tasks"
)

// Node is one running taskworker node.
type Node struct {
	cfg    Config
	log    *slog.Logger
	noisy  *slog.Logger // log with repeated warnings folded (logging.go), for raft and gossip
	bootID string
	// startedAt is when this process made the node; gossiped for uptime in status.
	startedAt time.Time

	fsm      *fsm.FSM
	raft     *raft.Raft
	trans    raft.Transport
	quiet    *quietTransport // trans, when it is a network transport: thins heartbeats to non-voters
	closers  []func() error
	members  *membership.Membership
	exec     *tasks.Executor
	logs     *tasks.LogStore
	http     *http.Server
	httpAddr string
	batch    *batcher
	commits  *commitNotice // the leader's commit notices to followers (notice.go)
	// lastPlaced is the node placeAtSubmit last assigned to (a string): its round-robin tie-break.
	lastPlaced atomic.Value
	metrics    *nodeMetrics

	// Trust (internal/trust) and the internode channel (internode.go).
	trust *trust.Trust
	// callRefusals limits the warnings about refused internode calls and handshakes (warnRefusedCall).
	callRefusals *perAddrLimiter
	internodeLn  net.Listener // the gossip port's internode side (or a listener of its own with twins)
	connCaps     []connCap    // the capped listeners, for /metrics; set before the API serves
	internode    *http.Server
	client       *http.Client // internode calls with a deadline
	streamClient *http.Client // internode log follows
	leaderHint   atomic.Value // string: the leader a not-leader reply named
	resumed      bool         // raft state was found on disk at start
	// joined: this node belongs to a cluster (it bootstrapped one, resumed its raft state, or its
	// gossip join succeeded). A node that never joined has nothing to drain or hand over.
	joined  atomic.Bool
	failErr atomic.Pointer[error] // why the node stopped on its own (Err)
	up      chan struct{}         // closed when Start has finished (every loop and server set)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	kick         chan struct{} // gossip membership changed: wake the leader's reconciler
	schedKick    chan struct{} // gossip membership changed: wake the scheduler (liveness decides placement)
	leaveMu      sync.Mutex
	leaveStarted bool
	leaveDone    chan struct{}
	// Clients of a leaving node (release.go): leaving is set once a leave is accepted (health
	// says draining); closing once held requests are let go (new requests get shutting_down);
	// released is closed then, which answers every held wait and ends every log follow.
	leaving     atomic.Bool
	closing     atomic.Bool
	released    chan struct{}
	releaseOnce sync.Once
	deadMu      sync.Mutex
	deadSince   map[string]time.Time

	// Storage (storage.go): the outcome of every write to raft's stores and of the watchdog's
	// probe; raftDB and raftDBFile identify the raft.db raft writes, to notice it removed.
	storage    *store.Health
	raftDB     string
	raftDBFile os.FileInfo
	diskFree   atomic.Int64 // bytes free on the data dir's file system, -1 when unknown
	minFree    uint64
	// corrupt is the first corruption met (CorruptError) while raft starts; running says
	// start is over, so a corruption met from then on stops the node at once (fatal).
	corrupt   atomic.Pointer[store.CorruptError]
	running   atomic.Bool
	fatalOnce sync.Once
	// raftID is this node's raft server ID (identity.go); idNames remembers the node name each
	// raft ID was gossiped with, for servers whose node no longer gossips that ID.
	raftID     raft.ServerID
	idMu       sync.Mutex
	idNames    map[raft.ServerID]string
	leaders    leaderWatch   // raft's leader changes, for forwards (apply.go)
	hold       internodeHold // tests freeze the internode side with it (internode_routes.go)
	shutdownMu sync.Mutex
	shut       bool
	// memCheck is checkMemory's state (its goroutine alone touches it).
	memCheck memoryCheck
}

// Start opens the node's stores and starts raft, gossip, the executor and the HTTP API.
func Start(cfg Config) (*Node, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Logger = cfg.Logger.With("node", cfg.Name)
	if cfg.Dev {
		// A throwaway single node: nothing to join, nothing to protect between nodes.
		cfg.Insecure = true
		if cfg.Advertise == "" {
			cfg.Advertise = "127.0.0.1"
		}
	}
	n := &Node{
		cfg: cfg, log: cfg.Logger, bootID: newBootID(), startedAt: time.Now(), fsm: fsm.New(),
		kick: make(chan struct{}, 1), schedKick: make(chan struct{}, 1), leaveDone: make(chan struct{}),
		released: make(chan struct{}), deadSince: map[string]time.Time{}, idNames: map[raft.ServerID]string{}, metrics: newNodeMetrics(), up: make(chan struct{}),
		storage: store.NewHealth(),
	}
	n.diskFree.Store(-1)
	n.minFree, _ = parseMinFreeDisk(cfg.MinFreeDisk) // Validate judged it
	n.noisy = slog.New(newRateLimitHandler(n.log.Handler(), logRepeatWindow, n.metrics.logsDropped.Inc))
	// Before raft starts, so that no applied entry is missed (metrics.go says why every node counts).
	n.fsm.SetObserver(n.metrics.observe)
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.batch = newBatcher(n.raftApply, cfg.ApplyTimeout)
	n.commits = newCommitNotice()
	if err := n.start(); err != nil {
		n.cancel()
		if n.raft != nil {
			_ = n.raft.Shutdown().Error()
		}
		n.closeAll()
		if errors.Is(err, store.ErrCorrupt) {
			n.log.Error("stopping: " + err.Error()) // the one line that says what and how to recover
		}
		return nil, err
	}
	close(n.up)
	n.running.Store(true)
	if e := n.corrupt.Load(); e != nil { // met between raft's start and now
		n.fatal(e)
	}
	return n, nil
}

func newBootID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (n *Node) start() error {
	cfg := &n.cfg
	if cfg.Dev {
		dir, err := os.MkdirTemp("", "taskworker-dev-")
		if err != nil {
			return fmt.Errorf("temporary data dir: %w", err)
		}
		cfg.DataDir = dir
		// The first closer added runs last, after the stores in the directory are closed.
		n.closers = append(n.closers, func() error { return os.RemoveAll(dir) })
	}
	var logDir string
	if cfg.DataDir != "" {
		if err := prepareDataDir(cfg.DataDir, n.log); err != nil {
			return err
		}
		logDir = filepath.Join(cfg.DataDir, "tasklogs")
	} else {
		dir, err := os.MkdirTemp("", "taskworker-logs-")
		if err != nil {
			return fmt.Errorf("temp log dir: %w", err)
		}
		logDir = dir
		n.closers = append(n.closers, func() error { return os.RemoveAll(dir) })
	}
	logs, err := tasks.OpenLogStoreWith(logDir, tasks.LogStoreOptions{MaxBytesPerTask: 1 << 20, MaxTotalBytes: cfg.OutputMaxBytes})
	if err != nil {
		return fmt.Errorf("open task logs: %w", err)
	}
	n.logs = logs
	n.closers = append(n.closers, logs.Close)

	// HTTP first: its address goes into gossip metadata.
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen http %s: %w", cfg.HTTPAddr, err)
	}
	if host, _, _ := net.SplitHostPort(ln.Addr().String()); !cfg.HTTPTLS && !isLoopback(host) {
		n.log.Warn("the HTTP API listens beyond loopback without HTTPS: bearer tokens and task data cross the network in the clear; use --http-tls",
			"http", ln.Addr().String())
	}
	n.httpAddr, err = n.advertised(ln.Addr().String())
	if err != nil {
		ln.Close()
		return err
	}
	// Requests are served only once raft and gossip run (handlers read both); until then the
	// kernel queues connections. A start that fails before serving closes the listener.
	serving := false
	defer func() {
		if !serving {
			ln.Close()
		}
	}()

	if err := n.startRaft(); err != nil {
		return err
	}

	n.exec = tasks.NewExecutor(tasks.ExecutorConfig{
		Registry: cfg.Registry, Reporter: reporter{n}, Logs: n.logs, NodeName: cfg.Name,
		Logger: n.log.With("component", "executor"), Submit: n.submitChild,
		MaxResultBytes: cfg.MaxResultBytes, CheckpointsPerSecond: cfg.CheckpointRate,
		StartWindow: startWindow,
	})

	if err := n.startMembership(); err != nil {
		return err
	}
	n.serveInternode(n.internodeLn)
	n.goLoop(n.trust.Run)
	n.goLoop(n.joinLoop)
	n.goLoop(n.registerLoop)
	n.goLoop(n.workLoop)
	n.goLoop(n.leadershipLoop)
	n.goEvery(scheduler.GCInterval(n.cfg.Retention), n.sweepLogs)
	n.goLoop(n.batch.run)
	n.goLoop(n.watchHalt)
	n.goLoop(n.indexGossipLoop)
	n.goLoop(n.storageLoop)
	n.goEvery(memoryCheckInterval, n.checkMemory)
	n.http = n.newHTTPServer(n.limitRequests(n.routes()))
	ln = n.limitConns(ln)
	if l, ok := ln.(*limits.Listener); ok {
		n.connCaps = append(n.connCaps, connCap{"api", l.Stats})
	}
	if cfg.HTTPTLS {
		ln = tls.NewListener(ln, pki.APIServerConfig(n.trust.Holder(), cfg.TLSVerifyIncoming))
	}
	serving = true
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("http server", "err", err)
		}
	}()
	n.log.Info("node started", "http", n.httpAddr, "https", cfg.HTTPTLS, "raft", string(n.trans.LocalAddr()),
		"gossip", n.members.GossipAddr(), "boot_id", n.bootID, "capacity", cfg.Capacity, "insecure", cfg.Insecure)
	n.trust.Announce(n.members.GossipAddr())
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (n *Node) goLoop(f func(ctx context.Context)) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f(n.ctx)
	}()
}

// goEvery runs f every d until the node stops.
func (n *Node) goEvery(d time.Duration, f func()) {
	n.goLoop(func(ctx context.Context) {
		tick := time.NewTicker(d)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			f()
		}
	})
}

// advertised rewrites a bound address to use the advertise host.
func (n *Node) advertised(bound string) (string, error) {
	_, port, err := net.SplitHostPort(bound)
	if err != nil {
		return "", err
	}
	host, err := advertiseHost(n.cfg.Advertise, bound)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, port), nil
}

// commitTimeout is raft's CommitTimeout: how often the leader resends the commit index to a
// follower when no entry flows. The commit notices after applies (notice.go) already tell
// followers of every commit of a command at once, so this is only the fallback for entries
// raft writes on its own (configuration changes, the new leader's no-op); followers keep contact
// with the leader through heartbeats (every HeartbeatTimeout/10 to voters, /3 to non-voters:
// quiet.go).
// It sets part of the idle leader's cost per follower: measured with scripts/idlecpu (leader CPU
// at 3 / 5 / 20 nodes), 10 ms gave 7.1 / 12.9 / 25.4 %, 50 ms 3.6 / 6.7 / 15.4 %, 250 ms 3.3 /
// 3.5 / 10.1 %; 1 s with the thinned heartbeats 2.2 / 2.9 / 5.5 % (250 ms without them, the
// same run: 3.1 / 4.2 / 8.9 %).
const commitTimeout = time.Second

// startWindow is how long the executor holds an attempt's Started report back: an attempt that
// ends sooner (an echo takes microseconds) reports start and outcome in one raft entry, one
// serial commit fewer per task (4 → 3 with the submit and the assignment); a longer one reports
// Started when the window ends, still promptly.
const startWindow = 10 * time.Millisecond

func (n *Node) startRaft() error {
	cfg := &n.cfg
	rc := raft.DefaultConfig()
	rc.HeartbeatTimeout = cfg.RaftHeartbeat
	rc.ElectionTimeout = cfg.RaftElection
	rc.LeaderLeaseTimeout = cfg.RaftHeartbeat / 2
	// Followers learn of commits from the leader's notices after its applies (notice.go), not
	// from this idle resend of the commit index (see commitTimeout).
	rc.CommitTimeout = commitTimeout
	if cfg.RaftSnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.RaftSnapshotThreshold
	}
	if cfg.RaftSnapshotInterval > 0 {
		rc.SnapshotInterval = cfg.RaftSnapshotInterval
	}
	// A voter removed while it was cut off (frozen, partitioned) must stay able to rejoin: the
	// leader adds it back once it registers again (registerLoop). Raft's default would shut its
	// raft down for good when it applies its own removal. A leaving node shuts raft down itself.
	rc.ShutdownOnRemove = false
	rc.Logger = newHCLogger(n.noisy, "raft", cfg.LogLevel)

	var (
		logs   raft.LogStore
		stable raft.StableStore
		snaps  raft.SnapshotStore
	)
	onCorrupt := func(e *store.CorruptError) {
		if n.corrupt.CompareAndSwap(nil, e) && n.running.Load() {
			n.fatal(e)
		}
	}
	if cfg.InmemRaft {
		mem := raft.NewInmemStore()
		logs = store.NewLogStore(mem, "in-memory log", n.storage, onCorrupt)
		stable = store.NewStableStore(mem, "in-memory log", n.storage, n.fatal)
		snaps = raft.NewInmemSnapshotStore()
	} else {
		raftDir := filepath.Join(cfg.DataDir, "raft")
		if err := os.MkdirAll(raftDir, 0o700); err != nil {
			return fmt.Errorf("create raft dir: %w", err)
		}
		n.raftDB = filepath.Join(raftDir, "raft.db")
		bolt, err := store.OpenBolt(n.raftDB,
			&bbolt.Options{Timeout: 5 * time.Second, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType})
		if err != nil {
			if errors.Is(err, store.ErrCorrupt) {
				return err
			}
			return fmt.Errorf("open raft store (is another node using %s?): %w", cfg.DataDir, err)
		}
		n.closers = append(n.closers, bolt.Close)
		n.raftDBFile, _ = os.Stat(n.raftDB)
		checked := store.NewLogStore(bolt, n.raftDB, n.storage, onCorrupt)
		// Every entry is read once before raft replays any: raft panics on a bad read later.
		if err := checked.Verify(); err != nil {
			return err
		}
		fss, err := raft.NewFileSnapshotStoreWithLogger(raftDir, 2, newHCLogger(n.noisy, "snapshot", cfg.LogLevel))
		if err != nil {
			return fmt.Errorf("open snapshot store: %w", err)
		}
		logs = checked
		stable = store.NewStableStore(bolt, n.raftDB, n.storage, n.fatal)
		snaps = store.NewSnapshotStore(fss, raftDir, n.storage, onCorrupt)
	}

	existing, err := raft.HasExistingState(logs, stable, snaps)
	if err != nil {
		return fmt.Errorf("check raft state: %w", err)
	}
	n.resumed = existing
	if n.raftID, err = loadRaftID(cfg.DataDir, cfg.Name, cfg.InmemRaft, existing); err != nil {
		return err
	}
	rc.LocalID = n.raftID
	if existing || len(cfg.Join) == 0 {
		n.joined.Store(true) // a member already: one it left before, or the cluster it bootstraps
	}
	if err := n.setupTrust(existing); err != nil {
		return err
	}
	n.newInternodeClients()

	trans := cfg.RaftTransport
	if trans == nil {
		host, err := advertiseHost(cfg.Advertise, cfg.RaftAddr)
		if err != nil {
			return err
		}
		_, port, _ := net.SplitHostPort(cfg.RaftAddr)
		var adv net.Addr
		if p, _ := strconv.Atoi(port); p != 0 {
			adv = &net.TCPAddr{IP: net.ParseIP(host), Port: p}
		}
		// With port 0 the listener's own address is advertised, which needs a specific bind host.
		// MaxRPCsInFlight 1 turns raft's pipelined replication off. With it on (the default, 2),
		// a follower that answers one append with Success=false (a failed log write: a full
		// disk; a log gap after a restart) can deadlock the leader's pipeline to it for good
		// while heartbeats go on, so the follower never gets another entry and never calls an
		// election (hashicorp/raft#612; found by scripts/chaos). Raft's own measurements (#541)
		// show pipelining gains little once appends are batched, as ours are.
		tcfg := func(stream raft.StreamLayer) *raft.NetworkTransportConfig {
			return &raft.NetworkTransportConfig{Stream: stream, MaxPool: 3, MaxRPCsInFlight: 1, Timeout: 10 * time.Second,
				Logger: newHCLogger(n.noisy, "raft-net", cfg.LogLevel)}
		}
		if n.trust.Insecure() {
			// No authentication (--insecure), but the same connection caps as with TLS.
			stream, err := raftls.ListenPlain(cfg.RaftAddr, adv, nil, 0)
			if err != nil {
				return fmt.Errorf("raft transport on %s: %w", cfg.RaftAddr, err)
			}
			n.connCaps = append(n.connCaps, connCap{"raft", stream.Stats})
			trans = raft.NewNetworkTransportWithConfig(tcfg(stream))
		} else {
			// Mutual TLS: a peer without a node certificate of the cluster is closed before raft
			// reads a byte.
			sec := n.trust
			stream, err := raftls.Listen(cfg.RaftAddr, raftls.Config{
				Server:     pki.InternodeServerConfig(sec.Holder(), sec.ServerName()),
				Client:     func() *tls.Config { return pki.InternodeClientConfig(sec.Holder(), sec.ServerName()) },
				Advertise:  adv,
				VerifyPeer: pki.RequireNodeName(sec.Cluster()),
				Logger:     n.noisy.With("component", "raft-tls"),
			})
			if err != nil {
				return fmt.Errorf("raft transport on %s: %w", cfg.RaftAddr, err)
			}
			n.connCaps = append(n.connCaps, connCap{"raft", func() limits.ListenerStats { return stream.Stats().Conns }})
			trans = raft.NewNetworkTransportWithConfig(tcfg(stream))
		}
		n.closers = append(n.closers, trans.(io.Closer).Close)
		if nt, ok := trans.(*raft.NetworkTransport); ok {
			n.quiet = newQuietTransport(nt, cfg.RaftHeartbeat)
			n.quiet.onAck = n.commits.acked
			n.commits.send = nt.AppendEntries
			trans = n.quiet
		}
	} else if it, ok := trans.(*raft.InmemTransport); ok {
		trans = &watchedInmem{InmemTransport: it, onAck: n.commits.acked}
		n.commits.send = it.AppendEntries
	}
	// Another transport is not watched: no acknowledgement reaches the notices, so none is sent
	// (send stays nil) and followers learn of commits from raft alone.
	n.commits.header = raft.RPCHeader{ProtocolVersion: rc.ProtocolVersion, ID: []byte(rc.LocalID),
		Addr: trans.EncodePeer(rc.LocalID, trans.LocalAddr())}
	n.trans = trans

	r, err := raft.NewRaft(rc, gcDuringRestore{n.fsm}, logs, stable, snaps, trans)
	if e := n.corrupt.Load(); e != nil {
		// A snapshot failed its CRC: raft may have fallen back to an older one, whose log
		// entries are compacted away; either way this replica is not the cluster's.
		if err == nil {
			_ = r.Shutdown().Error()
		}
		return e
	}
	if err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	n.raft = r
	n.commits.raft.Store(r)
	switch {
	case existing:
		n.log.Info("resuming raft state", "dir", cfg.DataDir)
	case len(cfg.Join) == 0:
		n.log.Info("bootstrapping a new cluster")
		f := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
			ID: rc.LocalID, Address: trans.LocalAddr(), Suffrage: raft.Voter,
		}}})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("bootstrap: %w", err)
		}
	default:
		n.log.Info("waiting to be added to the cluster", "join", cfg.Join)
	}
	return nil
}

func (n *Node) startMembership() error {
	cfg := &n.cfg
	mc := membership.DefaultConfig()
	mc.Name = cfg.Name
	if cfg.GossipTransport == nil {
		host, port, err := net.SplitHostPort(cfg.GossipAddr)
		if err != nil {
			return fmt.Errorf("gossip address %q: %w", cfg.GossipAddr, err)
		}
		mc.BindAddr = host
		mc.BindPort, _ = strconv.Atoi(port)
		if adv, err := advertiseHost(cfg.Advertise, cfg.GossipAddr); err == nil && adv != host {
			mc.AdvertiseAddr = adv
			mc.AdvertisePort = mc.BindPort
		}
	}
	mc.Transport = cfg.GossipTransport
	if cfg.GossipTransport == nil {
		// One port for gossip, the join exchange and internode calls (gossipmux's doc says why).
		bind := mc.BindAddr
		if bind == "" {
			bind = "0.0.0.0"
		}
		mux, err := gossipmux.New(gossipmux.Config{
			BindAddr: bind, BindPort: mc.BindPort, AllowPlainHTTP: n.trust.Insecure(),
			Logger: n.log.With("component", "gossipmux"),
		})
		if err != nil {
			return fmt.Errorf("gossip port %s: %w", cfg.GossipAddr, err)
		}
		mc.Transport = mux
		n.internodeLn = mux.Internode()
		n.connCaps = append(n.connCaps, connCap{"gossip", mux.Stats})
	} else {
		addr := cfg.InternodeAddr
		if addr == "" {
			addr = "127.0.0.1:0"
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("internode listener %s: %w", addr, err)
		}
		n.closers = append(n.closers, func() error { _ = ln.Close(); return nil })
		n.internodeLn = ln
	}
	mc.Keyring = n.trust.Keyring()
	if cfg.ProbeInterval > 0 {
		mc.ProbeInterval = cfg.ProbeInterval
	}
	if cfg.ProbeTimeout > 0 {
		mc.ProbeTimeout = cfg.ProbeTimeout
	}
	mc.Logger = slog.New(probeCountHandler{inner: n.noisy.Handler(), count: n.metrics.probeFails.Inc}).With("component", "gossip")
	mc.Meta = membership.Meta{
		RaftAddr: string(n.trans.LocalAddr()), RaftID: string(n.raftID), HTTPAddr: n.httpAddr, BootID: n.bootID,
		Capacity: cfg.Capacity, Version: cfg.Version, Insecure: n.trust.Insecure(), StartedAt: n.startedAt.Unix(),
	}
	if cfg.GossipTransport != nil {
		mc.Meta.Internode = n.internodeLn.Addr().String()
	}
	mc.Meta.Keys = n.trust.KeyIDs()
	m, err := membership.New(mc)
	if err != nil {
		if mux, ok := mc.Transport.(*gossipmux.Transport); ok && cfg.GossipTransport == nil {
			_ = mux.Shutdown()
		}
		return fmt.Errorf("start gossip: %w", err)
	}
	n.members = m
	n.goLoop(n.eventLoop)
	return nil
}

// joinLoop joins the gossip pool through the configured peers, and, for a node resuming its
// raft state, through the peers it knew before it stopped (like Consul's serf snapshot): a node
// restarted without --join, or after a graceful leave that made the others forget it, finds its
// cluster again. It retries until one answers.
func (n *Node) joinLoop(ctx context.Context) {
	addrs := slices.Clone(n.cfg.Join)
	if n.resumed {
		for _, a := range n.loadPeers() {
			if !slices.Contains(addrs, a) {
				addrs = append(addrs, a)
			}
		}
	}
	if len(addrs) == 0 {
		n.joined.Store(true)
		return
	}
	if err := n.members.Join(ctx, addrs); err != nil {
		if (errors.Is(err, membership.ErrNameConflict) || errors.Is(err, membership.ErrEncryptionMismatch)) && !n.joined.Load() {
			// Not ours to fix by retrying: stop, and say why in one line.
			n.stopFailed(err)
			return
		}
		if ctx.Err() == nil {
			n.log.Error("join gossip", "err", err)
		}
		return
	}
	n.joined.Store(true)
	n.log.Info("joined gossip", "via", addrs)
}

// peersFile remembers the gossip addresses of the other members, for joinLoop after a restart.
func (n *Node) peersFile() string {
	if n.cfg.DataDir == "" {
		return ""
	}
	return filepath.Join(n.cfg.DataDir, "gossip-peers.json")
}

func (n *Node) loadPeers() []string {
	var addrs []string
	if p := n.peersFile(); p != "" {
		if b, err := os.ReadFile(p); err == nil {
			_ = json.Unmarshal(b, &addrs)
		}
	}
	return addrs
}

// savePeers records the alive members' gossip addresses, atomically.
func (n *Node) savePeers() {
	p := n.peersFile()
	if p == "" {
		return
	}
	var addrs []string
	for _, m := range n.members.Members() {
		if m.Name != n.cfg.Name && m.State == membership.StateAlive {
			addrs = append(addrs, m.GossipAddr)
		}
	}
	if len(addrs) == 0 {
		return // keep the last known peers: they are the way back
	}
	n.storePeers(addrs)
}

// storePeers writes the peers file. A failure is logged, not fatal: the file is only a way back
// into the cluster after a restart, and the old one (if any) is left whole.
func (n *Node) storePeers(addrs []string) {
	b, err := json.Marshal(addrs)
	if err == nil {
		err = writeFileAtomic(n.peersFile(), b, 0o600)
	}
	if err != nil {
		n.log.Warn("save gossip peers", "err", err)
	}
}

// writeFileAtomic replaces path with data: it writes and syncs a temporary file beside it, renames
// it over path and syncs the directory, so a crash leaves the old file or the new one, never a
// torn one. On failure the temporary file is removed.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync() // makes the rename durable; not every platform can sync a directory
		d.Close()
	}
	return nil
}

// eventLoop tracks when members died (for raft removal grace) and wakes the leader's reconciler.
func (n *Node) eventLoop(ctx context.Context) {
	lastMeta := map[string]membership.Meta{}
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-n.members.Events():
			if !ok {
				return
			}
			if ev.Type == membership.EventUpdate && indexesOnly(lastMeta[ev.Member.Name], ev.Member.Meta) {
				// A node's periodic raft index gossip (indexGossipLoop): nothing to save or reconcile.
				lastMeta[ev.Member.Name] = ev.Member.Meta
				continue
			}
			lastMeta[ev.Member.Name] = ev.Member.Meta
			n.noteMemberEvent(ev)
			n.log.Debug("membership event", "type", ev.Type, "member", ev.Member.Name, "state", ev.Member.State)
			n.savePeers()
			n.membershipChanged()
		}
	}
}

// membershipChanged wakes the leader's reconciler and its scheduler, without waiting: each holds
// at most one pending wake-up, and one pass sees every change before it.
func (n *Node) membershipChanged() {
	for _, ch := range []chan struct{}{n.kick, n.schedKick} {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// watchHalt reports, once, that the FSM stopped applying the log (health answers 503 from then).
func (n *Node) watchHalt(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-n.fsm.HaltedCh():
		n.log.Error("stopped applying the raft log; this node serves stale state until upgraded", "err", n.fsm.Halted())
	}
}

// Name is the node's name.
func (n *Node) Name() string { return n.cfg.Name }

// HTTPAddr is the node's advertised HTTP host:port.
func (n *Node) HTTPAddr() string { return n.httpAddr }

// GossipAddr is the node's gossip host:port.
func (n *Node) GossipAddr() string { return n.members.GossipAddr() }

// RaftAddr is the node's raft address.
func (n *Node) RaftAddr() string { return string(n.trans.LocalAddr()) }

// BootID identifies this process's incarnation of the node.
func (n *Node) BootID() string { return n.bootID }

// FSM exposes the replicated state (read-only use).
func (n *Node) FSM() *fsm.FSM { return n.fsm }

// IsLeader reports whether this node is the raft leader.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader returns the leader's name, or "".
func (n *Node) Leader() string {
	_, id := n.raft.LeaderWithID()
	return n.serverName(id)
}

// Done is closed when the node has shut down after a graceful leave, or after it stopped on its
// own for a reason Err gives.
func (n *Node) Done() <-chan struct{} { return n.leaveDone }

// Err is why the node stopped on its own (such as membership.ErrNameConflict), or nil.
func (n *Node) Err() error {
	if p := n.failErr.Load(); p != nil {
		return *p
	}
	return nil
}

// stopFailed stops a node that cannot go on (its name is taken): one ERROR line, then the same
// end as a leave of a node that never joined. It runs Shutdown outside the node's loops, which
// Shutdown waits for.
func (n *Node) stopFailed(err error) {
	n.failErr.Store(&err)
	n.log.Error("stopping: " + err.Error())
	go func() {
		select {
		case <-n.up: // Shutdown reads what start is still setting up
		case <-n.ctx.Done():
			return
		}
		n.leaveMu.Lock()
		defer n.leaveMu.Unlock()
		if n.leaveStarted {
			return
		}
		n.leaveStarted = true
		if err := n.Shutdown(); err != nil {
			n.log.Warn("shutdown", "err", err)
		}
		close(n.leaveDone)
	}()
}

// fatal stops a node that cannot go on (corrupt raft data, a raft term or vote it cannot save):
// one ERROR line, then cfg.OnFatal (the agent exits there), or else the same end as stopFailed.
func (n *Node) fatal(err error) {
	n.fatalOnce.Do(func() {
		if n.cfg.OnFatal != nil {
			n.failErr.Store(&err)
			n.log.Error("stopping: " + err.Error())
			n.cfg.OnFatal(err)
			return
		}
		n.stopFailed(err)
	})
}

// Shutdown stops the node abruptly, as a crash would: no leave, no reports, no handback. Its
// tasks are recovered by the cluster as after a crash. Leave is the graceful way.
func (n *Node) Shutdown() error {
	n.shutdownMu.Lock()
	defer n.shutdownMu.Unlock()
	if n.shut {
		return nil
	}
	n.shut = true
	// Answer held requests before anything stops, so the HTTP server's graceful shutdown below
	// finds them done instead of cutting their connections.
	n.releaseClients("node shutting down")
	n.cancel()
	if n.exec != nil {
		n.exec.Close()
	}
	var errs []error
	if n.members != nil {
		errs = append(errs, n.members.Shutdown())
	}
	for _, srv := range []*http.Server{n.http, n.internode} {
		if srv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = srv.Shutdown(ctx)
			cancel()
			_ = srv.Close()
		}
	}
	if n.raft != nil {
		errs = append(errs, n.raft.Shutdown().Error())
	}
	n.wg.Wait()
	errs = append(errs, n.closeAll())
	return errors.Join(errs...)
}

func (n *Node) closeAll() error {
	var errs []error
	for i := len(n.closers) - 1; i >= 0; i-- {
		errs = append(errs, n.closers[i]())
	}
	n.closers = nil
	return errors.Join(errs...)
}

func (n *Node) stopped() bool {
	n.shutdownMu.Lock()
	defer n.shutdownMu.Unlock()
	return n.shut
}
