// Package membership owns gossip membership: joining a cluster, leaving it, the metadata each node
// gossips about itself, and a stream of join/update/leave/fail events. It is a thin layer over
// hashicorp/memberlist and must know nothing of raft, tasks or HTTP: what the metadata means and
// what to do when a node fails is the caller's business.
package membership

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// ErrShutdown is returned by calls made after Shutdown.
var ErrShutdown = errors.New("membership shut down")

// ErrEncryptionMismatch is returned by Join when a seed answered but one side encrypts gossip
// and the other does not: retrying cannot help, the node's configuration must change.
var ErrEncryptionMismatch = errors.New("gossip encryption mismatch")

// ErrNameConflict is returned by Join when the cluster already has a live member of this node's
// name at another address: retrying cannot help, the operator must rename one of them.
var ErrNameConflict = errors.New("duplicate node name")

// State is a member's liveness as seen by this node.
type State string

const (
	StateAlive State = "alive"
	// StateSuspect is never reported with memberlist v0.7.0: it keeps suspicion in a private field
	// (Node.State is shadowed and never written, the cause of hashicorp/memberlist#293), so a
	// suspect member reads alive until it is declared dead or refutes.
	StateSuspect State = "suspect"
	StateDead    State = "dead" // failed without saying goodbye
	StateLeft    State = "left" // left gracefully (it was draining)
)

// Member is one node as seen by this node.
type Member struct {
	Name       string
	GossipAddr string // host:port
	Meta       Meta
	State      State
}

// EventType says what happened to a member.
type EventType int

const (
	EventJoin   EventType = iota // first seen, or back after leaving or failing
	EventUpdate                  // meta changed
	EventLeave                   // gone gracefully: its meta said Draining
	EventFail                    // gone without draining: crashed or cut off
)

func (t EventType) String() string {
	switch t {
	case EventJoin:
		return "join"
	case EventUpdate:
		return "update"
	case EventLeave:
		return "leave"
	case EventFail:
		return "fail"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is a change of one member; Member is its state after the change.
type Event struct {
	Type   EventType
	Member Member
}

// Config configures New. A zero BindAddr, duration or multiplier means the DefaultConfig value.
type Config struct {
	Name          string
	BindAddr      string // host
	BindPort      int    // 0 = pick a free port (GossipAddr reports it)
	AdvertiseAddr string // optional
	AdvertisePort int
	Meta          Meta

	// Failure detection. The defaults detect a crashed node in about a second on a LAN.
	ProbeInterval  time.Duration
	ProbeTimeout   time.Duration
	SuspicionMult  int
	GossipInterval time.Duration

	// ReconnectInterval is how often this node tries to reach members it saw fail, so that
	// both sides of a healed partition find each other again (memberlist never probes dead nodes).
	ReconnectInterval time.Duration

	// Keyring, when set, encrypts and authenticates every gossip message with its primary key and
	// accepts any of its keys (memberlist's keyring); the caller keeps it and rotates keys in it.
	// nil gossips in plain text (--insecure).
	Keyring *memberlist.Keyring

	// Resolve looks up the host of a seed given by name; nil is the system resolver
	// (net.DefaultResolver.LookupHost: every A and AAAA record). An answer is an IP, joined to
	// the seed's port, or an "ip:port", used as it is. Tests replace it.
	Resolve func(ctx context.Context, host string) ([]string, error)

	Logger    *slog.Logger                  // nil = slog.Default()
	Transport memberlist.NodeAwareTransport // nil = UDP/TCP on BindAddr:BindPort; memnet in tests
}

// DefaultConfig returns a Config named after the host, bound to 0.0.0.0:7946.
func DefaultConfig() Config {
	name, _ := os.Hostname()
	return Config{
		Name:     name,
		BindAddr: "0.0.0.0",
		BindPort: 7946,
		// A probe every 250ms reaches a dead peer within (n-1)*250ms; 100ms is ample for an ack.
		ProbeInterval: 250 * time.Millisecond,
		ProbeTimeout:  100 * time.Millisecond,
		// Suspicion lasts SuspicionMult*max(1, log10(n))*ProbeInterval, 500ms below ten nodes. With
		// 2, memberlist expects no confirmations (k = mult-2), so the timeout never starts at its
		// 6x maximum waiting for peers that a small cluster does not have.
		SuspicionMult:     2,
		GossipInterval:    100 * time.Millisecond,
		ReconnectInterval: time.Second,
		Logger:            slog.Default(),
	}
}

// broadcastTimeout bounds how long a meta update or leave waits for memberlist to send it.
const broadcastTimeout = 5 * time.Second

// Membership is this node's membership in the gossip cluster. Its methods are safe for concurrent use.
type Membership struct {
	name string
	log  *slog.Logger
	list *memberlist.Memberlist
	// addr is this node's gossip host:port, read once at start: memberlist rewrites its local
	// node record on every meta update, so reading it later races with UpdateMeta.
	addr string

	resolve func(ctx context.Context, host string) ([]string, error)

	opMu sync.Mutex // serializes UpdateMeta, Leave and Shutdown; memberlist panics on Leave after Shutdown

	mu    sync.Mutex
	meta  []byte            // encoded local meta, served to memberlist
	local Meta              // decoded local meta
	known map[string]Member // every member ever seen, by name
	left  bool              // Leave was called: stop reconnecting

	joining  atomic.Int32          // Join calls in progress (the newcomer's side of a name conflict)
	conflict atomic.Pointer[error] // set when a Join of ours met a live member of our name
	// created is list for the delegate: memberlist serves state exchanges before Create returns.
	created  atomic.Pointer[memberlist.Memberlist]
	shutdown bool
	// stopping is set by Leave and Shutdown: from then on memberlist's goroutines may still write
	// to sockets being closed, which is the shutdown itself and not an error (see logWriter).
	stopping atomic.Bool

	queue  eventQueue
	events chan Event
	done   chan struct{}
	wg     sync.WaitGroup
}

// New starts gossiping on the configured address. The node is alone until Join.
func New(cfg Config) (*Membership, error) {
	cfg = cfg.withDefaults()
	if cfg.Name == "" {
		return nil, errors.New("new membership: empty node name")
	}
	meta, err := cfg.Meta.Encode()
	if err != nil {
		return nil, fmt.Errorf("new membership %s: %w", cfg.Name, err)
	}
	m := &Membership{
		name:   cfg.Name,
		log:    cfg.Logger,
		meta:   meta,
		local:  cfg.Meta,
		known:  make(map[string]Member),
		queue:  eventQueue{wake: make(chan struct{}, 1)},
		events: make(chan Event, 64),
		done:   make(chan struct{}),
	}

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr = cfg.BindAddr
	mc.BindPort = cfg.BindPort
	mc.AdvertiseAddr = cfg.AdvertiseAddr
	mc.AdvertisePort = cfg.AdvertisePort
	mc.ProbeInterval = cfg.ProbeInterval
	mc.ProbeTimeout = cfg.ProbeTimeout
	mc.SuspicionMult = cfg.SuspicionMult
	mc.GossipInterval = cfg.GossipInterval
	// A node restarted on a new port must be accepted as soon as its old self is dead, not after
	// memberlist forgets the dead one (GossipToTheDeadTime, 30s).
	mc.DeadNodeReclaimTime = time.Nanosecond
	// Full state syncs repair what a lost broadcast missed, such as a node that restarted on a new
	// address before its old self was declared dead; 30s (the LAN default) is too slow for us and
	// a sync is cheap at our cluster sizes.
	mc.PushPullInterval = 5 * time.Second
	mc.Delegate = (*delegate)(m)
	mc.Events = (*delegate)(m)
	mc.Merge = (*delegate)(m)
	mc.Logger = memberlistLogger(cfg.Logger, &m.stopping)
	if cfg.Transport != nil {
		mc.Transport = cfg.Transport
	}
	if cfg.Keyring != nil {
		mc.Keyring = cfg.Keyring
		// Both on (memberlist's defaults, stated here because they are the point): a plain or
		// wrongly keyed message is dropped, and this node never sends plain text.
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}

	m.list, err = memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("new membership %s: start memberlist: %w", cfg.Name, err)
	}
	m.created.Store(m.list)
	m.addr = m.list.LocalNode().Address()
	m.resolve = cfg.Resolve
	if m.resolve == nil {
		m.resolve = net.DefaultResolver.LookupHost
	}
	m.wg.Add(2)
	go m.pump()
	go m.reconnect(cfg.ReconnectInterval)
	return m, nil
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.BindAddr == "" {
		c.BindAddr = d.BindAddr
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = d.ProbeInterval
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = d.ProbeTimeout
	}
	if c.SuspicionMult == 0 {
		c.SuspicionMult = d.SuspicionMult
	}
	if c.GossipInterval == 0 {
		c.GossipInterval = d.GossipInterval
	}
	if c.ReconnectInterval == 0 {
		c.ReconnectInterval = d.ReconnectInterval
	}
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	return c
}

// Join contacts addrs (host:port) until at least one answers or ctx is done, backing off from
// 200ms to 2s between rounds. A seed given by name is resolved again in every round and every
// address it resolves to is tried, so one name can stand for all members (a Kubernetes headless
// service, a DNS round robin) and a changed answer is seen on the next round. This node's own
// address is skipped, so every node can be given the same seed list; with nothing left to
// contact, Join returns nil at once (the first node). A name that resolves to nothing but this
// node is a failed round, retried: the others may not be in DNS yet.
func (m *Membership) Join(ctx context.Context, addrs []string) error {
	self := m.GossipAddr()
	addrs = slices.DeleteFunc(slices.Clone(addrs), func(a string) bool { return a == self })
	if len(addrs) == 0 {
		return nil
	}
	backoff := 200 * time.Millisecond
	for {
		var n int
		seeds, err := m.resolveSeeds(ctx, addrs)
		if len(seeds) > 0 {
			var jerr error
			m.joining.Add(1)
			n, jerr = m.list.Join(seeds)
			m.joining.Add(-1)
			err = errors.Join(err, jerr)
		} else if err == nil {
			err = errors.New("the seeds resolve to no address but this node's")
		}
		if c := m.conflict.Load(); c != nil {
			return *c
		}
		if n > 0 {
			m.log.Debug("joined cluster", "contacted", n, "seeds", addrs, "resolved", seeds)
			return nil
		}
		if mm := encryptionMismatch(err); mm != "" {
			return fmt.Errorf("%w: %s", ErrEncryptionMismatch, mm)
		}
		// WARN, with the wait: a seed that never answers is the operator's to fix (wrong address,
		// node down, firewall, wrong gossip key), not a detail.
		m.log.Warn(fmt.Sprintf("join failed, retrying in %s", backoff), "seeds", addrs, "err", oneLine(err))
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("join %s: %w (last attempt: %w)", strings.Join(addrs, ","), ctx.Err(), err)
		case <-m.done:
			t.Stop()
			return fmt.Errorf("join %s: %w", strings.Join(addrs, ","), ErrShutdown)
		case <-t.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// resolveTimeout bounds one lookup, so a slow DNS server cannot hold a join round forever.
const resolveTimeout = 5 * time.Second

// resolveSeeds turns seeds into the addresses to contact this round: an IP seed as it is, a
// named one as every address its name resolves to now. This node's address and repeats are
// dropped. A name that does not resolve is an error in the result; the other seeds are still
// returned, to be tried.
func (m *Membership) resolveSeeds(ctx context.Context, seeds []string) ([]string, error) {
	var out []string
	var errs []error
	add := func(a string) {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	for _, s := range seeds {
		host, port, err := net.SplitHostPort(s)
		if err != nil || strings.Contains(s, "/") || net.ParseIP(host) != nil {
			add(s) // an IP (Join dropped this node's), or a form memberlist parses itself ("name/host:port", no port)
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, resolveTimeout)
		answers, err := m.resolve(lctx, host)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("resolve %s: %w", host, err))
			continue
		}
		if len(answers) == 0 {
			errs = append(errs, fmt.Errorf("resolve %s: no addresses", host))
		}
		for _, a := range answers {
			if _, _, err := net.SplitHostPort(a); err != nil {
				if net.ParseIP(a) == nil {
					errs = append(errs, fmt.Errorf("resolve %s: %q is not an address", host, a))
					continue
				}
				a = net.JoinHostPort(a, port)
			}
			if a != m.addr {
				add(a)
			}
		}
	}
	return out, errors.Join(errs...)
}

// memberlist's words (net.go, v0.7.0) for a push/pull with a node that encrypts gossip
// differently; they reach Join inside a multierror, one per seed.
const (
	remoteEncrypted = "remote state is encrypted and encryption is not configured"
	remotePlain     = "encryption is configured but remote state is not encrypted"
)

// encryptionMismatch names the mismatch in a failed join, or returns "" when err is another
// failure (a seed down, a timeout), which is worth retrying.
func encryptionMismatch(err error) string {
	if err == nil {
		return ""
	}
	seed := func(s string) string {
		// "failed to join 127.0.0.1:7946: remote state ..." names the seed.
		if _, rest, ok := strings.Cut(s, "failed to join "); ok {
			if addr, _, ok := strings.Cut(rest, ": "); ok {
				return addr
			}
		}
		return "a seed"
	}
	for _, line := range strings.Split(err.Error(), "\n") {
		switch {
		case strings.Contains(line, remoteEncrypted):
			return fmt.Sprintf("the member at %s encrypts its gossip and this node has no gossip key (it runs --insecure; a secure cluster is joined with its join token)", seed(line))
		case strings.Contains(line, remotePlain):
			return fmt.Sprintf("the member at %s gossips in plain text and this node encrypts (that cluster runs --insecure; join it with --insecure)", seed(line))
		}
	}
	return ""
}

// oneLine flattens memberlist's multierror ("1 error occurred:\n\t* failed to join ...") into
// one line, so a log line stays one line.
func oneLine(err error) string {
	if err == nil {
		return ""
	}
	var parts []string
	for _, l := range strings.Split(err.Error(), "\n") {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "* "))
		if l == "" || strings.HasSuffix(l, "error occurred:") || strings.HasSuffix(l, "errors occurred:") {
			continue
		}
		parts = append(parts, l)
	}
	return strings.Join(parts, "; ")
}

// Events delivers member changes in order, including this node's own join, updates and leave. It
// is closed by Shutdown. Events queue up without bound while nobody reads, so gossip never waits
// for a slow consumer.
func (m *Membership) Events() <-chan Event { return m.events }

// Members returns every node this node has seen, sorted by name: alive ones, and dead or left ones
// until they come back.
func (m *Membership) Members() []Member {
	m.mu.Lock()
	out := make([]Member, 0, len(m.known))
	for _, mem := range m.known {
		out = append(out, mem)
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Local returns this node as the cluster sees it.
func (m *Membership) Local() Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.known[m.name] // memberlist announces the local node during Create
}

// Ping probes a member directly over gossip's own protocol, without the verdicts other members
// spread: nil if it acked within the probe timeout. Callers use it as a second opinion before
// acting on a death that may be stale (a healed partition spreads the dead messages it made).
func (m *Membership) Ping(name string) error {
	m.mu.Lock()
	mem, ok := m.known[name]
	down := m.shutdown
	m.mu.Unlock()
	switch {
	case down:
		return ErrShutdown
	case !ok:
		return fmt.Errorf("ping %s: unknown member", name)
	}
	if _, err := m.list.Ping(name, gossipAddr(mem.GossipAddr)); err != nil {
		return fmt.Errorf("ping %s: %w", name, err)
	}
	return nil
}

// gossipAddr is a host:port as the net.Addr memberlist's Ping takes.
type gossipAddr string

func (a gossipAddr) Network() string { return "udp" }
func (a gossipAddr) String() string  { return string(a) }

// GossipAddr is the host:port other nodes reach this one at.
func (m *Membership) GossipAddr() string { return m.addr }

// UpdateMeta changes the local meta with fn and gossips it, waiting until it has been sent. If the
// result does not encode (ErrMetaTooLarge), nothing changes.
func (m *Membership) UpdateMeta(fn func(*Meta)) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	return m.updateMeta(fn, broadcastTimeout)
}

// UpdateMetaWithin is UpdateMeta for frequent, unimportant changes (raft indexes): it waits at
// most timeout for the broadcast, so it never holds up a Leave or Shutdown for long.
func (m *Membership) UpdateMetaWithin(fn func(*Meta), timeout time.Duration) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	return m.updateMeta(fn, timeout)
}

func (m *Membership) updateMeta(fn func(*Meta), timeout time.Duration) error {
	m.mu.Lock()
	if m.shutdown {
		m.mu.Unlock()
		return fmt.Errorf("update meta: %w", ErrShutdown)
	}
	meta := m.local
	fn(&meta)
	b, err := meta.Encode()
	if err != nil {
		m.mu.Unlock()
		return fmt.Errorf("update meta: %w", err)
	}
	m.local, m.meta = meta, b
	m.mu.Unlock()
	// UpdateNode reads the meta back through the delegate, so m.mu must be free.
	if err := m.list.UpdateNode(timeout); err != nil {
		return fmt.Errorf("update meta: gossip: %w", err)
	}
	return nil
}

// Leave marks this node Draining, gossips that, then announces its departure, so peers report it
// as left (EventLeave) rather than failed. Shutdown must still be called.
func (m *Membership) Leave(timeout time.Duration) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	left := m.left
	m.mu.Unlock()
	if left {
		return nil
	}
	m.stopping.Store(true)
	deadline := time.Now().Add(timeout)
	if err := m.updateMeta(func(meta *Meta) { meta.Draining = true }, timeout); err != nil {
		return fmt.Errorf("leave: %w", err)
	}
	m.mu.Lock()
	m.left = true
	m.mu.Unlock()
	if err := m.list.Leave(max(time.Until(deadline), time.Millisecond)); err != nil {
		return fmt.Errorf("leave: %w", err)
	}
	return nil
}

// Shutdown stops gossiping without saying goodbye: to peers it looks like a crash unless Leave
// came first. It closes Events. Calling it again does nothing.
func (m *Membership) Shutdown() error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	was := m.shutdown
	m.shutdown = true
	m.mu.Unlock()
	if was {
		return nil
	}
	m.stopping.Store(true)
	close(m.done)
	m.wg.Wait()
	if err := m.list.Shutdown(); err != nil {
		return fmt.Errorf("shutdown memberlist: %w", err)
	}
	return nil
}

// reconnect periodically joins members that failed. Once a partition heals, memberlist alone would
// never notice: it only probes nodes it believes alive.
func (m *Membership) reconnect(every time.Duration) {
	defer m.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-t.C:
		}
		var addrs []string
		m.mu.Lock()
		for _, mem := range m.known {
			if mem.State == StateDead && !m.left { // a node that left wants no one back
				addrs = append(addrs, mem.GossipAddr)
			}
		}
		m.mu.Unlock()
		if len(addrs) > 0 {
			if n, _ := m.list.Join(addrs); n > 0 {
				m.log.Info("reconnected to failed members", "contacted", n)
			}
		}
	}
}
