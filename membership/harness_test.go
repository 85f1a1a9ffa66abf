package membership_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/taskworker/taskworker/membership"
	"github.com/taskworker/taskworker/membership/memnet"
)

// cluster starts nodes on real loopback UDP/TCP, or on a memnet.Network when net is set.
type cluster struct {
	tb  testing.TB
	net *memnet.Network
	log *slog.Logger
}

func newCluster(tb testing.TB, net *memnet.Network) *cluster {
	return &cluster{tb: tb, net: net, log: testLogger()}
}

// testLogger keeps memberlist's expected warnings (refuted suspicions, failed probes) out of the
// output unless -v.
func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// forEachNet runs a scenario over loopback and over memnet.
func forEachNet(t *testing.T, scenario func(t *testing.T, c *cluster)) {
	t.Run("loopback", func(t *testing.T) { t.Parallel(); scenario(t, newCluster(t, nil)) })
	t.Run("memnet", func(t *testing.T) { t.Parallel(); scenario(t, newCluster(t, &memnet.Network{})) })
}

// node is a started Membership whose events are recorded.
type node struct {
	*membership.Membership
	mu     sync.Mutex
	events []membership.Event
	closed chan struct{} // closed once Events is closed and drained
}

func (c *cluster) config(name string) membership.Config {
	cfg := membership.Config{
		Name:     name,
		BindAddr: "127.0.0.1",
		Meta:     membership.Meta{RaftAddr: name + ":raft", BootID: "boot-1", Capacity: 4, Version: "test"},
		Logger:   c.log,
	}
	if c.net != nil {
		cfg.Transport = c.net.NewTransport(name)
	}
	return cfg
}

func (c *cluster) start(name string) *node { return c.startWith(c.config(name)) }

func (c *cluster) startWith(cfg membership.Config) *node {
	c.tb.Helper()
	m, err := membership.New(cfg)
	if err != nil {
		c.tb.Fatalf("start %s: %v", cfg.Name, err)
	}
	drained := make(chan struct{})
	n := &node{Membership: m, closed: drained}
	go func() {
		defer close(drained)
		for e := range m.Events() {
			n.mu.Lock()
			n.events = append(n.events, e)
			n.mu.Unlock()
		}
	}()
	c.tb.Cleanup(func() {
		if err := m.Shutdown(); err != nil {
			c.tb.Errorf("shutdown %s: %v", cfg.Name, err)
		}
		<-drained
	})
	return n
}

// startJoined starts nodes, joins them through the first and waits until all see all alive.
func (c *cluster) startJoined(names ...string) []*node {
	c.tb.Helper()
	nodes := make([]*node, len(names))
	for i, name := range names {
		nodes[i] = c.start(name)
		if i > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := nodes[i].Join(ctx, []string{nodes[0].GossipAddr()})
			cancel()
			if err != nil {
				c.tb.Fatalf("join %s: %v", name, err)
			}
		}
	}
	for _, n := range nodes {
		for _, name := range names {
			waitFor(c.tb, n.Local().Name+" sees "+name+" alive", func() bool {
				m, ok := n.member(name)
				return ok && m.State == membership.StateAlive
			})
		}
	}
	return nodes
}

func (n *node) member(name string) (membership.Member, bool) {
	for _, m := range n.Members() {
		if m.Name == name {
			return m, true
		}
	}
	return membership.Member{}, false
}

// saw returns the last recorded event of type typ about member name.
func (n *node) saw(typ membership.EventType, name string) (membership.Event, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for i := len(n.events) - 1; i >= 0; i-- {
		if e := n.events[i]; e.Type == typ && e.Member.Name == name {
			return e, true
		}
	}
	return membership.Event{}, false
}

// waitEvent waits for an event of type typ about member name and returns it.
func (n *node) waitEvent(tb testing.TB, typ membership.EventType, name string) membership.Event {
	tb.Helper()
	var e membership.Event
	waitFor(tb, n.Local().Name+" gets "+typ.String()+" of "+name, func() bool {
		var ok bool
		e, ok = n.saw(typ, name)
		return ok
	})
	return e
}

// waitFor polls cond until it holds, failing after a deadline generous enough for slow CI.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting until %s", what)
		}
		<-tick.C
	}
}

// logBuffer collects log output written from memberlist's goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) Contains(s string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Contains(b.buf.Bytes(), []byte(s))
}
