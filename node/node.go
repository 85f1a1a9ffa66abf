// Package node wires one taskworker node together: gossip membership, raft with its stores, the
// FSM, the leader's duties (internal/leader), the executor, and the HTTP API that forwards writes
// to the leader.
package node

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"go.opentelemetry.io/otel/trace"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/endpoint"
	"github.com/taskworker/taskworker/internal/forward"
	"github.com/taskworker/taskworker/internal/gossipmux"
	"github.com/taskworker/taskworker/internal/internode"
	"github.com/taskworker/taskworker/internal/leader"
	"github.com/taskworker/taskworker/internal/limits"
	"github.com/taskworker/taskworker/internal/pki"
	"github.com/taskworker/taskworker/internal/raftls"
	"github.com/taskworker/taskworker/internal/raftnode"
	"github.com/taskworker/taskworker/internal/store"
	"github.com/taskworker/taskworker/internal/telemetry"
	"github.com/taskworker/taskworker/internal/tracing"
	"github.com/taskworker/taskworker/internal/trust"
	"github.com/taskworker/taskworker/internal/worker"
	"github.com/taskworker/taskworker/internal/workerhost"
	"github.com/taskworker/taskworker/membership"
	"github.com/taskworker/taskworker/scheduler"
	"github.com/taskworker/taskworker/tasks"
)

// Node is one running taskworker node.
type Node struct {
	cfg    Config
	log    *slog.Logger
	noisy  *slog.Logger // log with repeated warnings folded (telemetry.RateLimitHandler), for raft and gossip
	bootID string
	// startedAt is when this process made the node; gossiped for uptime in status.
	startedAt time.Time

	fsm      *fsm.FSM
	tracer   trace.Tracer   // nil: tracing off (internal/tracing)
	rn       *raftnode.Node // raft, its transport and stores, their health, raft server IDs
	closers  []func() error
	members  *membership.Membership
	work     *worker.Worker   // the executor and what feeds it, the leave, held clients' release
	workers  *workerhost.Host // the sessions of the workers registered here (docs/workers.md)
	logs     *tasks.LogStore
	http     *http.Server
	httpAddr string
	metrics  *telemetry.Metrics
	ep       *endpoint.API // the public API's backend (internal/endpoint)

	// Trust (internal/trust) and the internode channel with propose (internal/internode).
	trust       *trust.Trust
	internodeLn net.Listener // the gossip port's internode side (or a listener of its own with twins)
	internode   *internode.Channel
	fwd         *forward.Forwarder
	api         http.Handler // the public API's handler, also run for forwarded writes
	// joined: this node belongs to a cluster (it bootstrapped one, resumed its raft state, or its
	// gossip join succeeded). A node that never joined has nothing to drain or hand over.
	joined  atomic.Bool
	failErr atomic.Pointer[error] // why the node stopped on its own (Err)
	up      chan struct{}         // closed when Start has finished (every loop and server set)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	leader *leader.Loop // the duties while this node leads, fed by gossip's events (leader.go)

	fatalOnce  sync.Once // fatal acts once
	shutdownMu sync.Mutex
	shut       bool
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
	var devDir string
	if cfg.Dev {
		// Made before anything takes cfg.DataDir (raft's stores among them): a dev node keeps
		// everything in it, never in the working directory.
		dir, err := os.MkdirTemp("", "taskworker-dev-")
		if err != nil {
			return nil, fmt.Errorf("temporary data dir: %w", err)
		}
		cfg.DataDir, devDir = dir, dir
	}
	n := &Node{
		cfg: cfg, log: cfg.Logger, bootID: newBootID(), startedAt: time.Now(), fsm: fsm.New(),
		up: make(chan struct{}),
	}
	if devDir != "" {
		// The first closer added runs last, after the stores in the directory are closed.
		n.closers = append(n.closers, func() error { return os.RemoveAll(devDir) })
	}
	getenv := cfg.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	traces, err := tracing.New(context.Background(), getenv, cfg.Name, cfg.Version)
	if err != nil {
		n.closeAll()
		return nil, fmt.Errorf("%w: tracing: %w", ErrInvalidConfig, err)
	}
	if n.tracer = traces.Tracer(); n.tracer != nil {
		n.log.Info("tracing on: spans are exported over OTLP/HTTP")
		// Late among the closers: the spans of the shutdown itself go too, within a bound.
		n.closers = append(n.closers, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return traces.Shutdown(ctx)
		})
	}
	n.metrics = telemetry.New(telemetry.Source{FSM: n.fsm, Capacity: cfg.Capacity, Caps: endpoint.AdmissionCaps,
		Raft: func() *raft.Raft { return n.rn.Raft() },
		Members: func() []membership.Member {
			if n.members == nil {
				return nil
			}
			return n.members.Members()
		},
		Running: func() (int, bool) {
			if n.work == nil {
				return 0, false
			}
			return len(n.work.Executor().Running()), true
		},
		DiskFree: func() int64 { return n.rn.DiskFree() }, StorageFault: func() string { return n.rn.StorageFault() }})
	n.noisy = slog.New(telemetry.NewRateLimitHandler(n.log.Handler(), telemetry.LogRepeatWindow, n.metrics.LogSuppressed))
	minFree, _ := parseMinFreeDisk(cfg.MinFreeDisk) // Validate judged it
	n.rn = raftnode.New(raftnode.Config{
		Name: cfg.Name, DataDir: cfg.DataDir, InmemRaft: cfg.InmemRaft, Join: cfg.Join,
		Transport: cfg.RaftTransport, RaftAddr: cfg.RaftAddr,
		AdvertiseHost: func(bind string) (string, error) { return advertiseHost(cfg.Advertise, bind) },

		Heartbeat: cfg.RaftHeartbeat, Election: cfg.RaftElection,
		SnapshotThreshold: cfg.RaftSnapshotThreshold, SnapshotInterval: cfg.RaftSnapshotInterval,
		FSM: n.fsm, Log: n.log, Noisy: n.noisy,
		HCLogger: func(name string) hclog.Logger { return telemetry.NewHCLogger(n.noisy, name, cfg.LogLevel) },

		StorageProbeInterval: cfg.StorageProbeInterval, MinFreeDisk: minFree,
		DescriptorShortage: n.metrics.DescriptorShortage,
		UpdateMeta:         func(f func(*membership.Meta)) error { return n.members.UpdateMeta(f) },
		StorageChanged:     n.membershipChanged,
		OnFatal:            n.fatal,
		Members: func() []membership.Member {
			if n.members == nil { // before gossip runs
				return nil
			}
			return n.members.Members()
		},
	})
	// Before raft starts, so that no applied entry is missed (telemetry.Metrics says why every
	// node counts).
	n.fsm.SetObserver(n.metrics.Observe)
	n.ctx, n.cancel = context.WithCancel(context.Background())
	if err := n.start(); err != nil {
		n.cancel()
		_ = n.rn.Shutdown()
		n.closeAll()
		if errors.Is(err, store.ErrCorrupt) {
			n.log.Error("stopping: " + err.Error()) // the one line that says what and how to recover
		}
		return nil, err
	}
	close(n.up)
	n.rn.Running()
	return n, nil
}

func newBootID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (n *Node) start() error {
	cfg := &n.cfg
	var logDir string
	if cfg.DataDir != "" {
		if err := raftnode.PrepareDataDir(cfg.DataDir, n.log); err != nil {
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

	if err := n.startMembership(); err != nil {
		return err
	}
	n.work = newWorker(n)
	n.workers = newWorkerHost(n)
	n.ep = newEndpoints(n)
	n.api = n.routes() // before the internode side serves forwarded writes with it
	n.leader = n.newLeader()
	n.goLoop(n.eventLoop)
	n.goLoop(func(context.Context) { n.internode.Serve(n.internodeLn, internodeRoutes(n)...) })
	n.goLoop(n.trust.Run)
	n.goLoop(n.joinLoop)
	n.goLoop(n.work.RegisterLoop)
	n.goLoop(n.work.WorkLoop)
	n.goLoop(n.workers.Run)
	n.goLoop(n.leader.Run)
	n.goEvery(scheduler.GCInterval(n.cfg.Retention), n.work.SweepLogs)
	n.goLoop(n.internode.Run)
	n.goLoop(n.watchHalt)
	n.goLoop(n.ep.GossipIndexes)
	n.goLoop(n.rn.WatchStorage)
	n.goEvery(telemetry.MemoryCheckInterval, telemetry.NewMemoryCheck(n.log).Run)
	n.goEvery(telemetry.GCPaceInterval, telemetry.NewGCPacer(os.Getenv, raftnode.GCHeld).Run)
	n.http = n.newHTTPServer(n.limitRequests(n.api))
	ln = n.limitConns(ln)
	if l, ok := ln.(*limits.Listener); ok {
		n.metrics.AddListener("api", l.Stats)
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
	n.log.Info("node started", "http", n.httpAddr, "https", cfg.HTTPTLS, "raft", string(n.rn.LocalAddr()),
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

// startRaft opens raft's stores, sets up trust (which needs to know whether this node held raft
// state), then starts raft on a transport secured with it.
func (n *Node) startRaft() error {
	n.closers = append(n.closers, n.rn.Close)
	if err := n.rn.Open(); err != nil {
		return err
	}
	existing := n.rn.Resumed()
	if existing || len(n.cfg.Join) == 0 {
		n.joined.Store(true) // a member already: one it left before, or the cluster it bootstraps
	}
	if err := n.setupTrust(existing); err != nil {
		return err
	}
	var secure *raftls.Config // nil: raft speaks plain TCP (--insecure)
	if sec := n.trust; !sec.Insecure() {
		secure = &raftls.Config{
			Server:     pki.InternodeServerConfig(sec.Holder(), sec.ServerName()),
			Client:     func() *tls.Config { return pki.InternodeClientConfig(sec.Holder(), sec.ServerName()) },
			VerifyPeer: pki.RequireNodeName(sec.Cluster()),
		}
	}
	if err := n.rn.Start(secure); err != nil {
		return err
	}
	n.internode = newInternode(n)
	n.fwd = newForwarder(n)
	if stats := n.rn.ConnStats(); stats != nil {
		n.metrics.AddListener("raft", stats)
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
		n.metrics.AddListener("gossip", mux.Stats)
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
	mc.Logger = slog.New(telemetry.CountProbeFailures(n.noisy.Handler(), n.metrics.ProbeFailed)).With("component", "gossip")
	mc.Meta = membership.Meta{
		RaftAddr: string(n.rn.LocalAddr()), RaftID: string(n.rn.ID()), HTTPAddr: n.httpAddr, BootID: n.bootID,
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
	return nil
}

// joinLoop joins the gossip pool through the configured peers, and, for a node resuming its
// raft state, through the peers it knew before it stopped (like Consul's serf snapshot): a node
// restarted without --join, or after a graceful leave that made the others forget it, finds its
// cluster again. It retries until one answers.
func (n *Node) joinLoop(ctx context.Context) {
	addrs := slices.Clone(n.cfg.Join)
	if n.rn.Resumed() {
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
		err = store.WriteFileAtomic(n.peersFile(), b, 0o600)
	}
	if err != nil {
		n.log.Warn("save gossip peers", "err", err)
	}
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
			if ev.Type == membership.EventUpdate && endpoint.IndexesOnly(lastMeta[ev.Member.Name], ev.Member.Meta) {
				// A node's periodic raft index gossip (GossipIndexes): nothing to save or reconcile.
				lastMeta[ev.Member.Name] = ev.Member.Meta
				continue
			}
			lastMeta[ev.Member.Name] = ev.Member.Meta
			n.leader.NoteMemberEvent(ev)
			n.log.Debug("membership event", "type", ev.Type, "member", ev.Member.Name, "state", ev.Member.State)
			n.savePeers()
			n.membershipChanged()
		}
	}
}

// membershipChanged wakes the leader's reconciler and its scheduler, without waiting.
func (n *Node) membershipChanged() { n.leader.MembershipChanged() }

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
func (n *Node) RaftAddr() string { return string(n.rn.LocalAddr()) }

// RaftID is this node's raft server ID.
func (n *Node) RaftID() string { return string(n.rn.ID()) }

// ErrBadRaftID is returned by Start when the data dir's raft ID file does not hold a usable ID.
var ErrBadRaftID = raftnode.ErrBadRaftID

// BootID identifies this process's incarnation of the node.
func (n *Node) BootID() string { return n.bootID }

// FSM exposes the replicated state (read-only use).
func (n *Node) FSM() *fsm.FSM { return n.fsm }

// IsLeader reports whether this node is the raft leader.
func (n *Node) IsLeader() bool { return n.rn.IsLeader() }

// Leader returns the leader's name, or "".
func (n *Node) Leader() string {
	_, id := n.rn.Raft().LeaderWithID()
	return n.rn.ServerName(id)
}

// Done is closed when the node has shut down after a graceful leave, or after it stopped on its
// own for a reason Err gives.
func (n *Node) Done() <-chan struct{} { return n.work.Done() }

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
		n.work.Stop()
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
	if n.work != nil {
		n.work.Release("node shutting down")
	}
	n.cancel()
	if n.work != nil {
		n.work.Executor().Close()
	}
	if n.workers != nil {
		n.workers.Close()
	}
	var errs []error
	if n.members != nil {
		errs = append(errs, n.members.Shutdown())
	}
	for _, srv := range []*http.Server{n.http, n.internode.Server()} {
		if srv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = srv.Shutdown(ctx)
			cancel()
			_ = srv.Close()
		}
	}
	errs = append(errs, n.rn.Shutdown())
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
