package membership_test

import (
	"context"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/taskworker/taskworker/internal/localcluster"
	"github.com/taskworker/taskworker/membership"
	"github.com/taskworker/taskworker/membership/memnet"
)

func TestJoinedNodesSeeEachOtherWithMeta(t *testing.T) {
	forEachNet(t, func(t *testing.T, c *cluster) {
		nodes := c.startJoined("a", "b", "c")
		for _, n := range nodes {
			got := n.Members()
			if len(got) != 3 {
				t.Fatalf("%s sees %d members, want 3: %+v", n.Local().Name, len(got), got)
			}
			for i, name := range []string{"a", "b", "c"} {
				m := got[i]
				want := membership.Meta{RaftAddr: name + ":raft", BootID: "boot-1", Capacity: 4, Version: "test"}
				if m.Name != name || m.Meta != want || m.State != membership.StateAlive || m.GossipAddr != nodes[i].GossipAddr() {
					t.Errorf("%s sees %+v, want %s alive at %s with %+v", n.Local().Name, m, name, nodes[i].GossipAddr(), want)
				}
			}
			for _, name := range []string{"a", "b", "c"} {
				n.waitEvent(t, membership.EventJoin, name) // Members can run ahead of Events
			}
		}
	})
}

func TestMetaUpdatePropagates(t *testing.T) {
	forEachNet(t, func(t *testing.T, c *cluster) {
		nodes := c.startJoined("a", "b", "c")
		if err := nodes[1].UpdateMeta(func(m *membership.Meta) { m.Capacity = 16 }); err != nil {
			t.Fatal(err)
		}
		if got := nodes[1].Local().Meta.Capacity; got != 16 {
			t.Errorf("local capacity = %d, want 16", got)
		}
		for _, n := range []*node{nodes[0], nodes[2]} {
			waitFor(t, n.Local().Name+" sees b's new capacity", func() bool {
				e, ok := n.saw(membership.EventUpdate, "b")
				return ok && e.Member.Meta.Capacity == 16
			})
			if m, _ := n.member("b"); m.Meta.Capacity != 16 || m.Meta.RaftAddr != "b:raft" {
				t.Errorf("%s: Members has b with %+v", n.Local().Name, m.Meta)
			}
		}
	})
}

func TestGracefulLeaveIsLeaveNotFail(t *testing.T) {
	forEachNet(t, func(t *testing.T, c *cluster) {
		nodes := c.startJoined("a", "b", "c")
		if err := nodes[1].Leave(5 * time.Second); err != nil {
			t.Fatal(err)
		}
		if err := nodes[1].Shutdown(); err != nil {
			t.Fatal(err)
		}
		for _, n := range []*node{nodes[0], nodes[2]} {
			e := n.waitEvent(t, membership.EventLeave, "b")
			if e.Member.State != membership.StateLeft || !e.Member.Meta.Draining {
				t.Errorf("%s: leave event %+v", n.Local().Name, e.Member)
			}
			if m, _ := n.member("b"); m.State != membership.StateLeft {
				t.Errorf("%s: Members has b %s, want left", n.Local().Name, m.State)
			}
			if _, ok := n.saw(membership.EventFail, "b"); ok {
				t.Errorf("%s: graceful leave reported as failure", n.Local().Name)
			}
		}
	})
}

func TestShutdownWithoutLeaveIsFail(t *testing.T) {
	forEachNet(t, func(t *testing.T, c *cluster) {
		nodes := c.startJoined("a", "b", "c")
		if err := nodes[1].Shutdown(); err != nil {
			t.Fatal(err)
		}
		for _, n := range []*node{nodes[0], nodes[2]} {
			if e := n.waitEvent(t, membership.EventFail, "b"); e.Member.State != membership.StateDead {
				t.Errorf("%s: fail event %+v", n.Local().Name, e.Member)
			}
			if m, _ := n.member("b"); m.State != membership.StateDead || m.Meta.RaftAddr != "b:raft" {
				t.Errorf("%s: Members has b %+v, want dead with its last meta", n.Local().Name, m)
			}
		}
	})
}

func TestJoinRetriesUntilSeedStartsLate(t *testing.T) {
	port := freePort(t)
	c := newCluster(t, nil)
	logs := &logBuffer{}
	cfg := c.config("b")
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b := c.startWith(cfg)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	joined := make(chan error, 1)
	go func() { joined <- b.Join(ctx, []string{net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}) }()
	waitFor(t, "b's first join attempt fails", func() bool { return logs.Contains("join failed") })

	cfg = c.config("a")
	cfg.BindPort = port
	a := c.startWith(cfg)
	if err := <-joined; err != nil {
		t.Fatalf("join: %v", err)
	}
	a.waitEvent(t, membership.EventJoin, "b")
}

func TestJoinGivesUpWhenContextEnds(t *testing.T) {
	c := newCluster(t, &memnet.Network{})
	a, b := c.start("a"), c.start("b")
	c.net.Isolate("a")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := b.Join(ctx, []string{a.GossipAddr()}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("join an unreachable seed: %v, want deadline exceeded", err)
	}
}

// A node's own address in its seed list is no seed: reaching itself is not joining a cluster.
// The first node of a cluster, given only itself, is done at once; a node whose only other seed
// is unreachable keeps trying instead of returning as if it had joined.
func TestJoinSkipsOwnAddress(t *testing.T) {
	c := newCluster(t, &memnet.Network{})
	a := c.start("a")
	if err := a.Join(context.Background(), []string{a.GossipAddr()}); err != nil {
		t.Fatalf("first node joining only itself: %v", err)
	}
	b := c.start("b")
	c.net.Isolate("b")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := a.Join(ctx, []string{a.GossipAddr(), b.GossipAddr()})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("join with itself and an unreachable seed: %v, want the deadline (it reached nobody else)", err)
	}
	if _, ok := a.member("b"); ok {
		t.Fatal("a sees b, which was unreachable")
	}
	c.net.Heal("b")
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if err := a.Join(ctx2, []string{a.GossipAddr(), b.GossipAddr()}); err != nil {
		t.Fatalf("join once b is reachable: %v", err)
	}
	b.waitEvent(t, membership.EventJoin, "a")
}

func TestMemnetJoinSucceedsOnceSeedIsReachable(t *testing.T) {
	c := newCluster(t, &memnet.Network{})
	logs := &logBuffer{}
	a := c.start("a")
	cfg := c.config("b")
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b := c.startWith(cfg)
	c.net.Isolate("a")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	joined := make(chan error, 1)
	go func() { joined <- b.Join(ctx, []string{a.GossipAddr()}) }()
	waitFor(t, "b's first join attempt fails", func() bool { return logs.Contains("join failed") })
	c.net.Heal("a")
	if err := <-joined; err != nil {
		t.Fatalf("join: %v", err)
	}
	a.waitEvent(t, membership.EventJoin, "b")
}

func TestOversizedMetaIsAnErrorNotAPanic(t *testing.T) {
	huge := strings.Repeat("x", memberlist.MetaMaxSize)
	if _, err := (membership.Meta{Version: huge}).Encode(); !errors.Is(err, membership.ErrMetaTooLarge) {
		t.Errorf("Encode: %v, want ErrMetaTooLarge", err)
	}

	c := newCluster(t, &memnet.Network{})
	cfg := c.config("a")
	cfg.Meta.HTTPAddr = huge
	if _, err := membership.New(cfg); !errors.Is(err, membership.ErrMetaTooLarge) {
		t.Errorf("New: %v, want ErrMetaTooLarge", err)
	}

	nodes := c.startJoined("b", "c")
	if err := nodes[0].UpdateMeta(func(m *membership.Meta) { m.HTTPAddr = huge }); !errors.Is(err, membership.ErrMetaTooLarge) {
		t.Errorf("UpdateMeta: %v, want ErrMetaTooLarge", err)
	}
	if got := nodes[0].Local().Meta.HTTPAddr; got != "" {
		t.Errorf("rejected update changed local meta: HTTPAddr %q", got)
	}
}

func TestMetaRoundTrip(t *testing.T) {
	want := membership.Meta{RaftAddr: "10.0.0.1:7000", HTTPAddr: "10.0.0.1:8080", BootID: "01J0000000000000000000000", Capacity: 64, Draining: true, Version: "v1.2.3"}
	b, err := want.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 128 {
		t.Errorf("typical meta encodes to %d bytes; keep it far below %d", len(b), memberlist.MetaMaxSize)
	}
	if got, err := membership.DecodeMeta(b); err != nil || got != want {
		t.Errorf("DecodeMeta = %+v, %v; want %+v", got, err, want)
	}
}

func FuzzDecodeMetaNeverPanics(f *testing.F) {
	b, _ := membership.Meta{RaftAddr: "r", Capacity: 3, Draining: true}.Encode()
	f.Add(b)
	f.Add([]byte{})
	f.Add([]byte{0xc1})
	f.Add([]byte{0xdb, 0xff, 0xff, 0xff, 0xff}) // a str claiming 4 GiB
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := membership.DecodeMeta(b); err != nil && m != (membership.Meta{}) {
			t.Errorf("failed decode returned %+v, want zero Meta", m)
		}
	})
}

// junkMeta is a memberlist delegate of a peer that gossips garbage meta.
type junkMeta struct{}

func (junkMeta) NodeMeta(int) []byte                 { return []byte{0xc1, 0xff, 0x00} }
func (junkMeta) NotifyMsg([]byte)                    {}
func (junkMeta) GetBroadcasts(int, int) [][]byte     { return nil }
func (junkMeta) LocalState(bool) []byte              { return nil }
func (junkMeta) MergeRemoteState(buf []byte, _ bool) {}

func TestPeerWithGarbageMetaIsTrackedWithZeroMeta(t *testing.T) {
	c := newCluster(t, &memnet.Network{})
	a := c.start("a")
	mc := memberlist.DefaultLANConfig()
	mc.Name = "junk"
	mc.Transport = c.net.NewTransport("junk")
	mc.Delegate = junkMeta{}
	mc.Logger = log.New(io.Discard, "", 0)
	junk, err := memberlist.Create(mc)
	if err != nil {
		t.Fatal(err)
	}
	defer junk.Shutdown()
	if _, err := junk.Join([]string{a.GossipAddr()}); err != nil {
		t.Fatal(err)
	}
	if e := a.waitEvent(t, membership.EventJoin, "junk"); e.Member.Meta != (membership.Meta{}) || e.Member.State != membership.StateAlive {
		t.Errorf("junk peer seen as %+v, want alive with zero meta", e.Member)
	}
}

func TestIsolatedNodeFailsThenRejoinsAfterHeal(t *testing.T) {
	c := newCluster(t, &memnet.Network{})
	nodes := c.startJoined("a", "b", "c")
	c.net.Isolate("b")
	for _, n := range []*node{nodes[0], nodes[2]} {
		n.waitEvent(t, membership.EventFail, "b")
	}
	nodes[1].waitEvent(t, membership.EventFail, "a") // the cut is symmetric

	c.net.Heal("b")
	for _, n := range nodes {
		for _, name := range []string{"a", "b", "c"} {
			waitFor(t, n.Local().Name+" sees "+name+" alive again", func() bool {
				m, _ := n.member(name)
				return m.State == membership.StateAlive
			})
		}
	}
	if e := nodes[0].waitEvent(t, membership.EventJoin, "b"); e.Member.Meta.RaftAddr != "b:raft" {
		t.Errorf("rejoined b has meta %+v", e.Member.Meta)
	}
}

func TestKilledNodeRestartedElsewhereJoinsAgain(t *testing.T) {
	c := newCluster(t, &memnet.Network{})
	nodes := c.startJoined("a", "b", "c")
	c.net.Kill("b")
	nodes[0].waitEvent(t, membership.EventFail, "b")

	cfg := c.config("b") // a new transport: same name, new address
	cfg.Meta.BootID = "boot-2"
	b2 := c.startWith(cfg)
	if err := b2.Join(context.Background(), []string{nodes[0].GossipAddr()}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*node{nodes[0], nodes[2]} {
		waitFor(t, n.Local().Name+" sees the restarted b", func() bool {
			e, ok := n.saw(membership.EventJoin, "b")
			return ok && e.Member.Meta.BootID == "boot-2" && e.Member.GossipAddr == b2.GossipAddr()
		})
	}
}

func TestCallsAfterShutdownFail(t *testing.T) {
	c := newCluster(t, &memnet.Network{})
	a := c.start("a")
	if err := a.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := a.Shutdown(); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if err := a.Leave(time.Second); !errors.Is(err, membership.ErrShutdown) {
		t.Errorf("Leave after Shutdown: %v, want ErrShutdown", err)
	}
	if err := a.UpdateMeta(func(*membership.Meta) {}); !errors.Is(err, membership.ErrShutdown) {
		t.Errorf("UpdateMeta after Shutdown: %v, want ErrShutdown", err)
	}
	// The harness reads Events; the channel must end once the queued events are delivered.
	select {
	case <-a.closed:
	case <-time.After(10 * time.Second):
		t.Error("Events still open 10s after Shutdown")
	}
}

// BenchmarkCrashDetection measures, over loopback with the default config, the time from a
// node's Shutdown (no Leave) to a peer's EventFail in a three-node cluster.
func BenchmarkCrashDetection(b *testing.B) {
	for range b.N {
		b.StopTimer()
		c := newCluster(b, nil)
		nodes := c.startJoined("a", "b", "c")
		b.StartTimer()
		if err := nodes[2].Shutdown(); err != nil {
			b.Fatal(err)
		}
		nodes[0].waitEvent(b, membership.EventFail, "c")
		b.StopTimer()
		for _, n := range nodes {
			_ = n.Shutdown()
		}
	}
}

// freePort is a loopback port free for TCP and UDP, for a node to bind later. It comes from
// localcluster.FreePorts, below the kernel's ephemeral range: a port picked with :0 and released
// goes back to the kernel, which may hand it to the next :0 bind (another node of the test).
func freePort(t *testing.T) int {
	t.Helper()
	ports, err := localcluster.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	return ports[0]
}

func TestPingAnswersForLiveMembersOnly(t *testing.T) {
	forEachNet(t, func(t *testing.T, c *cluster) {
		nodes := c.startJoined("a", "b", "c")
		if err := nodes[0].Ping("b"); err != nil {
			t.Fatalf("ping live b: %v", err)
		}
		if err := nodes[0].Ping("nobody"); err == nil {
			t.Fatal("ping of an unknown member succeeded")
		}
		if err := nodes[1].Shutdown(); err != nil {
			t.Fatal(err)
		}
		if err := nodes[0].Ping("b"); err == nil {
			t.Fatal("ping of a shut-down member succeeded")
		}
	})
}
