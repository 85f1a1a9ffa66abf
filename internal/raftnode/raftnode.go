// Package raftnode is one node's raft replica and the plumbing under it. It owns: the data dir's
// preparation (its modes), raft's configuration, the log, stable and snapshot stores (the log
// and stable keys in hashicorp/raft-wal: wal.go; moved there from an earlier release's raft.db:
// migrate.go; wrapped by internal/store and checked before raft replays them), raft's transport
// (mutual TLS through internal/raftls, heartbeats to non-voters thinned: quiet.go), the commit
// notices the leader sends its followers (notice.go), the collector relaxed while a snapshot is
// restored (restore.go), the node's raft server ID and its mapping to node names (identity.go), and the
// storage watchdog with the health of every write to the stores (storage.go).
//
// It may not touch the FSM's contents, gossip, HTTP or trust: it reads gossip's members and sets
// the storage flag through the functions in Config, takes the TLS settings of raft's transport
// from its caller, and reports corruption and failed writes of raft's term or vote through
// Config.OnFatal, whose caller stops the node. Raft itself (Apply, State, configuration changes)
// is reached through Raft.
package raftnode

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/limits"
	"github.com/taskworker/taskworker/internal/raftls"
	"github.com/taskworker/taskworker/internal/store"
	"github.com/taskworker/taskworker/membership"
)

// Config is what a replica is made of: the node's settings for raft, and functions into the rest
// of the node.
type Config struct {
	Name    string // the node's name
	DataDir string // raft's stores live in DataDir/raft; "" only with InmemRaft
	// InmemRaft keeps raft's log and snapshots in memory (tests, --dev without a dir).
	InmemRaft bool
	// Join lists the peers the node joins through; none means it bootstraps a new cluster when it
	// holds no raft state.
	Join []string
	// Transport is a test's raft transport; nil means a network transport on RaftAddr.
	Transport raft.Transport
	RaftAddr  string
	// AdvertiseHost is the host other nodes reach a bind address (host:port) at.
	AdvertiseHost func(bind string) (string, error)

	Heartbeat, Election time.Duration
	SnapshotThreshold   uint64        // 0: raft's default
	SnapshotInterval    time.Duration // 0: raft's default

	FSM *fsm.FSM

	Log *slog.Logger
	// Noisy is Log with repeated warnings folded, for the watchdog's repeated warnings and raft's
	// TLS listener; HCLogger routes a hashicorp logger of that name into it.
	Noisy    *slog.Logger
	HCLogger func(name string) hclog.Logger

	// StorageProbeInterval is how often the watchdog probes the data dir; MinFreeDisk is the free
	// space under which it warns (0: never).
	StorageProbeInterval time.Duration
	MinFreeDisk          uint64
	// DescriptorShortage counts a storage failure for want of file descriptors (a metric).
	DescriptorShortage func()
	// UpdateMeta changes this node's gossip metadata (the storage flag); StorageChanged is called
	// after each storage verdict is published (the node wakes its reconciler and scheduler).
	UpdateMeta     func(func(*membership.Meta)) error
	StorageChanged func()
	// Members lists gossip's members (nil before gossip runs), for raft IDs' node names.
	Members func() []membership.Member

	// OnFatal stops the node: raft's data is corrupt, or raft's term or vote could not be saved.
	OnFatal func(error)
}

// Node is one node's raft replica: raft, its transport and stores, and their health.
type Node struct {
	cfg     Config
	raft    *raft.Raft
	trans   raft.Transport
	quiet   *quietTransport // trans, when it is a network transport: thins heartbeats to non-voters
	commits *commitNotice   // the leader's commit notices to followers (notice.go)
	closers []func() error
	// connStats counts the raft listener's connections; nil with a test's transport.
	connStats func() limits.ListenerStats

	// The stores Open makes, for Start.
	logs   raft.LogStore
	stable raft.StableStore
	snaps  raft.SnapshotStore
	// resumed: raft state was found on disk at start.
	resumed bool

	// Storage (storage.go): the outcome of every write to raft's stores and of the watchdog's
	// probe; walDir and walDirInfo identify the dir of raft's log, to notice it removed.
	storage    *store.Health
	walDir     string
	walDirInfo os.FileInfo
	diskFree   atomic.Int64 // bytes free on the data dir's file system, -1 when unknown
	// corrupt is the first corruption met (CorruptError) while raft starts; running says
	// start is over, so a corruption met from then on stops the node at once (OnFatal).
	corrupt atomic.Pointer[store.CorruptError]
	running atomic.Bool

	// id is this node's raft server ID (identity.go); idNames remembers the node name each raft
	// ID was gossiped with, for servers whose node no longer gossips that ID.
	id      raft.ServerID
	idMu    sync.Mutex
	idNames map[raft.ServerID]string
}

// New makes a replica; Open and Start bring it up.
func New(cfg Config) *Node {
	r := &Node{cfg: cfg, commits: newCommitNotice(), storage: store.NewHealth(), idNames: map[raft.ServerID]string{}}
	r.diskFree.Store(-1)
	return r
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

// logCacheEntries is how many of the newest log entries are kept in memory for raft's reads:
// enough for the entries in flight, few enough that large entries (batches of up to a few MB)
// cannot hold much memory.
const logCacheEntries = 64

// Open opens raft's stores, checks every log entry, and loads the node's raft server ID. Close
// closes what it opened, also after an error.
func (r *Node) Open() error {
	cfg := &r.cfg
	if cfg.InmemRaft {
		mem := raft.NewInmemStore()
		r.logs = store.NewLogStore(mem, "in-memory log", r.storage, r.onCorrupt)
		r.stable = store.NewStableStore(mem, "in-memory log", r.storage, cfg.OnFatal)
		r.snaps = raft.NewInmemSnapshotStore()
	} else {
		raftDir := filepath.Join(cfg.DataDir, "raft")
		if err := os.MkdirAll(raftDir, 0o700); err != nil {
			return fmt.Errorf("create raft dir: %w", err)
		}
		moved, err := migrateBolt(raftDir, cfg.HCLogger("wal"), migrateAll)
		if err != nil {
			return err
		}
		if moved > 0 {
			cfg.Log.Info("moved raft's log from raft.db to the write-ahead log; raft.db is kept as raft.db.migrated",
				"entries", moved, "dir", raftDir)
		}
		r.walDir = filepath.Join(raftDir, walDirName)
		meta, wl, err := openWAL(r.walDir, cfg.HCLogger("wal"))
		if err != nil {
			if errors.Is(err, store.ErrCorrupt) {
				return err
			}
			return fmt.Errorf("open raft's log (is another node using %s?): %w", cfg.DataDir, err)
		}
		r.closers = append(r.closers, meta.closeDB, wl.Close)
		r.walDirInfo, _ = os.Stat(r.walDir)
		checked := store.NewLogStore(wl, r.walDir, r.storage, r.onCorrupt)
		// Every entry is read once before raft replays any: raft panics on a bad read later.
		if err := checked.Verify(); err != nil {
			return err
		}
		fss, err := raft.NewFileSnapshotStoreWithLogger(raftDir, 2, cfg.HCLogger("snapshot"))
		if err != nil {
			return fmt.Errorf("open snapshot store: %w", err)
		}
		// Recent entries are read from memory: raft reads each entry back once per follower
		// (replication) and once to apply it on a follower, and raft-wal reads with a system
		// call where bbolt read its memory map.
		if r.logs, err = raft.NewLogCache(logCacheEntries, checked); err != nil {
			return err
		}
		r.stable = store.NewStableStore(meta, meta.path, r.storage, cfg.OnFatal)
		r.snaps = store.NewSnapshotStore(fss, raftDir, r.storage, r.onCorrupt)
	}

	existing, err := raft.HasExistingState(r.logs, r.stable, r.snaps)
	if err != nil {
		return fmt.Errorf("check raft state: %w", err)
	}
	r.resumed = existing
	if r.id, err = loadRaftID(cfg.DataDir, cfg.Name, cfg.InmemRaft, existing); err != nil {
		return err
	}
	return nil
}

// onCorrupt records a corruption met by a store; once start is over it stops the node at once.
func (r *Node) onCorrupt(e *store.CorruptError) {
	if r.corrupt.CompareAndSwap(nil, e) && r.running.Load() {
		r.cfg.OnFatal(e)
	}
}

// Start makes raft's transport and starts raft on the stores Open opened, bootstrapping a new
// cluster when the node holds no raft state and has no peers to join. secure is the mutual TLS
// of raft's network transport (its Advertise and Logger are set here); nil means plain TCP
// (--insecure). A test's Transport ignores it.
func (r *Node) Start(secure *raftls.Config) error {
	cfg := &r.cfg
	rc := raft.DefaultConfig()
	rc.HeartbeatTimeout = cfg.Heartbeat
	rc.ElectionTimeout = cfg.Election
	rc.LeaderLeaseTimeout = cfg.Heartbeat / 2
	// Followers learn of commits from the leader's notices after its applies (notice.go), not
	// from this idle resend of the commit index (see commitTimeout).
	rc.CommitTimeout = commitTimeout
	// The FSM applies committed entries in batches of up to MaxAppendEntries (raft.BatchingFSM).
	// raft's default of 64 is well above what flows at once: each entry carries up to 512 tasks
	// (internode's batcher) and a leader has a few in flight. BatchApplyCh stays off: the leader's
	// loop already gathers the proposals waiting to be sent into one write, and a buffered
	// channel would let an entry wait in it past its caller's apply timeout.
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
	}
	if cfg.SnapshotInterval > 0 {
		rc.SnapshotInterval = cfg.SnapshotInterval
	}
	// A voter removed while it was cut off (frozen, partitioned) must stay able to rejoin: the
	// leader adds it back once it registers again. Raft's default would shut its raft down for
	// good when it applies its own removal. A leaving node shuts raft down itself.
	rc.ShutdownOnRemove = false
	rc.Logger = cfg.HCLogger("raft")
	rc.LocalID = r.id

	trans := cfg.Transport
	if trans == nil {
		nt, err := r.listen(secure)
		if err != nil {
			return err
		}
		r.closers = append(r.closers, nt.Close)
		r.quiet = newQuietTransport(nt, cfg.Heartbeat)
		r.quiet.onAck = r.commits.acked
		r.commits.send = nt.AppendEntries
		trans = r.quiet
	} else if it, ok := trans.(*raft.InmemTransport); ok {
		trans = &watchedInmem{InmemTransport: it, onAck: r.commits.acked}
		r.commits.send = it.AppendEntries
	}
	// Another transport is not watched: no acknowledgement reaches the notices, so none is sent
	// (send stays nil) and followers learn of commits from raft alone.
	r.commits.header = raft.RPCHeader{ProtocolVersion: rc.ProtocolVersion, ID: []byte(rc.LocalID),
		Addr: trans.EncodePeer(rc.LocalID, trans.LocalAddr())}
	r.trans = trans

	rf, err := raft.NewRaft(rc, gcDuringRestore{cfg.FSM}, r.logs, r.stable, r.snaps, trans)
	if e := r.corrupt.Load(); e != nil {
		// A snapshot failed its CRC: raft may have fallen back to an older one, whose log
		// entries are compacted away; either way this replica is not the cluster's.
		if err == nil {
			_ = rf.Shutdown().Error()
		}
		return e
	}
	if err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	r.raft = rf
	r.commits.raft.Store(rf)
	switch {
	case r.resumed:
		cfg.Log.Info("resuming raft state", "dir", cfg.DataDir)
	case len(cfg.Join) == 0:
		cfg.Log.Info("bootstrapping a new cluster")
		f := rf.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
			ID: rc.LocalID, Address: trans.LocalAddr(), Suffrage: raft.Voter,
		}}})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("bootstrap: %w", err)
		}
	default:
		cfg.Log.Info("waiting to be added to the cluster", "join", cfg.Join)
	}
	return nil
}

// listen makes raft's network transport on RaftAddr, with mutual TLS when secure is set.
func (r *Node) listen(secure *raftls.Config) (*raft.NetworkTransport, error) {
	cfg := &r.cfg
	host, err := cfg.AdvertiseHost(cfg.RaftAddr)
	if err != nil {
		return nil, err
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
			Logger: cfg.HCLogger("raft-net")}
	}
	if secure == nil {
		// No authentication (--insecure), but the same connection caps as with TLS.
		stream, err := raftls.ListenPlain(cfg.RaftAddr, adv, nil, 0)
		if err != nil {
			return nil, fmt.Errorf("raft transport on %s: %w", cfg.RaftAddr, err)
		}
		r.connStats = stream.Stats
		return raft.NewNetworkTransportWithConfig(tcfg(stream)), nil
	}
	// Mutual TLS: a peer without a node certificate of the cluster is closed before raft reads a
	// byte.
	tc := *secure
	tc.Advertise = adv
	tc.Logger = cfg.Noisy.With("component", "raft-tls")
	stream, err := raftls.Listen(cfg.RaftAddr, tc)
	if err != nil {
		return nil, fmt.Errorf("raft transport on %s: %w", cfg.RaftAddr, err)
	}
	r.connStats = func() limits.ListenerStats { return stream.Stats().Conns }
	return raft.NewNetworkTransportWithConfig(tcfg(stream)), nil
}

// Running marks the start over: a corruption met from now on stops the node at once, and one met
// while it started (between raft's start and now) stops it now.
func (r *Node) Running() {
	r.running.Store(true)
	if e := r.corrupt.Load(); e != nil {
		r.cfg.OnFatal(e)
	}
}

// Raft is the running raft, nil before Start has started it.
func (r *Node) Raft() *raft.Raft { return r.raft }

// Entry reads the log entry at index from this node's log store (an error once a snapshot has
// compacted it away).
func (r *Node) Entry(index uint64) (*raft.Log, error) {
	var l raft.Log
	if err := r.logs.GetLog(index, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// IsLeader reports whether this node is the raft leader.
func (r *Node) IsLeader() bool { return r.raft.State() == raft.Leader }

// LocalAddr is raft's address, as other nodes reach it.
func (r *Node) LocalAddr() raft.ServerAddress { return r.trans.LocalAddr() }

// Resumed says whether raft state was found on disk at start.
func (r *Node) Resumed() bool { return r.resumed }

// ConnStats counts the raft listener's connections; nil with a test's transport.
func (r *Node) ConnStats() func() limits.ListenerStats { return r.connStats }

// NoteConfiguration tells the transport which servers are non-voters (quiet.go); the leader calls
// it with every configuration it reads.
func (r *Node) NoteConfiguration(c raft.Configuration) {
	if r.quiet != nil {
		r.quiet.setConfiguration(c)
	}
}

// Announce tells every follower of the leader's commit index (notice.go); the leader calls it
// after a commit.
func (r *Node) Announce() { r.commits.announce() }

// Shutdown stops raft, if it started.
func (r *Node) Shutdown() error {
	if r.raft == nil {
		return nil
	}
	return r.raft.Shutdown().Error()
}

// Close closes the transport and the stores, in the reverse order of their opening; raft must be
// shut down first.
func (r *Node) Close() error {
	var errs []error
	for i := len(r.closers) - 1; i >= 0; i-- {
		errs = append(errs, r.closers[i]())
	}
	r.closers = nil
	return errors.Join(errs...)
}
