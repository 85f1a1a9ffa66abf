package leader

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/membership"
)

// fakeGossip is a fixed member list; Ping answers for the names in answers.
type fakeGossip struct {
	members []membership.Member
	answers map[string]bool
}

func (g *fakeGossip) Members() []membership.Member { return g.members }

func (g *fakeGossip) Ping(name string) error {
	if g.answers[name] {
		return nil
	}
	return errors.New("no answer")
}

func member(name string, state membership.State) membership.Member {
	return membership.Member{Name: name, State: state,
		Meta: membership.Meta{RaftID: "id-" + name, RaftAddr: name + ":raft", BootID: "boot-" + name}}
}

// registeredFSM holds an up record for each of the given members, under the boot ID it gossips.
func registeredFSM(t *testing.T, ms ...membership.Member) *fsm.FSM {
	t.Helper()
	f := fsm.New()
	for i, m := range ms {
		c := &fsm.Command{Now: time.Now(), Body: &fsm.Register{Node: fsm.Node{Name: m.Name, BootID: m.Meta.BootID, Capacity: 1}}}
		if r := f.ApplyCommand(uint64(i+1), c); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	return f
}

func testLoop(f *fsm.FSM, g Gossip, voters int) *Loop {
	return New(Config{
		Name: "a", RaftID: "id-a", FSM: f, Gossip: g, Voters: voters, DeadServerGrace: time.Hour,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		MemberID: func(m membership.Member) raft.ServerID { return raft.ServerID(m.Meta.RaftID) },
		NoteID:   func(membership.Member) {},
	})
}

// view is what readRaftView would make of members and servers.
func view(l *Loop, members []membership.Member, servers ...raft.Server) raftView {
	v := raftView{self: l.cfg.RaftID, servers: map[raft.ServerID]raft.Server{}, members: members,
		alive: map[raft.ServerID]membership.Member{}}
	names := map[raft.ServerID]string{}
	for _, s := range servers {
		v.servers[s.ID] = s
		names[s.ID] = string(s.ID)[len("id-"):]
	}
	for _, m := range members {
		names[l.cfg.MemberID(m)] = m.Name
		if m.State == membership.StateAlive && !m.Meta.Draining && m.Meta.RaftAddr != "" {
			v.alive[l.cfg.MemberID(m)] = m
		}
	}
	v.name = func(id raft.ServerID) string { return names[id] }
	return v
}

func voter(name string) raft.Server {
	return raft.Server{ID: raft.ServerID("id-" + name), Address: raft.ServerAddress(name + ":raft"), Suffrage: raft.Voter}
}

func nonvoter(name string) raft.Server {
	s := voter(name)
	s.Suffrage = raft.Nonvoter
	return s
}

func removed(rs []serverRemoval) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.name)
	}
	slices.Sort(out)
	return out
}

func TestPlanRemovals(t *testing.T) {
	alive := func(names ...string) []membership.Member {
		var ms []membership.Member
		for _, n := range names {
			ms = append(ms, member(n, membership.StateAlive))
		}
		return ms
	}
	for _, tc := range []struct {
		name    string
		voters  int
		members []membership.Member
		servers []raft.Server
		gone    map[string]time.Duration // how long each member has been seen gone
		want    []string
	}{{
		name:    "a voter that left goes at once",
		voters:  3,
		members: append(alive("a", "b", "c"), member("d", membership.StateLeft)),
		servers: []raft.Server{voter("a"), voter("b"), voter("c"), voter("d")},
		want:    []string{"d"},
	}, {
		name:    "a crashed voter is kept within the grace",
		voters:  3,
		members: append(alive("a", "b", "c"), member("d", membership.StateDead)),
		servers: []raft.Server{voter("a"), voter("b"), voter("c"), voter("d")},
		gone:    map[string]time.Duration{"d": time.Minute},
	}, {
		name:    "a crashed voter goes after the grace when enough voters stay",
		voters:  5,
		members: append(alive("a", "b", "c"), member("d", membership.StateDead)),
		servers: []raft.Server{voter("a"), voter("b"), voter("c"), voter("d")},
		gone:    map[string]time.Duration{"d": 2 * time.Hour},
		want:    []string{"d"},
	}, {
		name:    "a crashed voter of three stays without a spare",
		voters:  3,
		members: append(alive("a", "b"), member("c", membership.StateDead)),
		servers: []raft.Server{voter("a"), voter("b"), voter("c")},
		gone:    map[string]time.Duration{"c": 2 * time.Hour},
	}, {
		name:    "a crashed voter of three goes when a non-voter can take its place",
		voters:  3,
		members: append(alive("a", "b", "d"), member("c", membership.StateDead)),
		servers: []raft.Server{voter("a"), voter("b"), voter("c"), nonvoter("d")},
		gone:    map[string]time.Duration{"c": 2 * time.Hour},
		want:    []string{"c"},
	}, {
		name:    "a suspect is kept",
		voters:  5,
		members: append(alive("a", "b", "c"), member("d", membership.StateSuspect)),
		servers: []raft.Server{voter("a"), voter("b"), voter("c"), voter("d")},
		gone:    map[string]time.Duration{"d": 2 * time.Hour},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			l := testLoop(registeredFSM(t, tc.members...), &fakeGossip{members: tc.members}, tc.voters)
			for name, d := range tc.gone {
				l.deadSince[name] = time.Now().Add(-d)
			}
			v := view(l, tc.members, tc.servers...)
			got := removed(l.planRemovals(&v))
			if !slices.Equal(got, tc.want) {
				t.Fatalf("removed %v, want %v", got, tc.want)
			}
			for _, name := range got {
				if _, in := v.servers[raft.ServerID("id-"+name)]; in {
					t.Errorf("%s is still in the view after its removal was planned", name)
				}
			}
		})
	}
}

// A node that came back on an empty data dir gossips a new raft ID at the old address: once it
// registered, the old server goes at once, with no grace.
func TestPlanRemovalsDropsTheServerOfANodeThatCameBack(t *testing.T) {
	back := member("c", membership.StateAlive)
	back.Meta.RaftID, back.Meta.BootID = "id-c2", "boot-c2"
	members := []membership.Member{member("a", membership.StateAlive), member("b", membership.StateAlive), back}
	servers := []raft.Server{voter("a"), voter("b"), voter("c")}

	l := testLoop(fsm.New(), &fakeGossip{members: members}, 3)
	v := view(l, members, servers...)
	if rs := l.planRemovals(&v); len(rs) != 0 {
		t.Fatalf("removed %v for a newcomer that has not registered", removed(rs))
	}

	l = testLoop(registeredFSM(t, members...), &fakeGossip{members: members}, 3)
	v = view(l, members, servers...)
	rs := l.planRemovals(&v)
	if len(rs) != 1 || rs[0].id != "id-c" || rs[0].replacedBy != "id-c2" {
		t.Fatalf("removals %+v, want the old server of c, replaced by id-c2", rs)
	}
}

func TestNoteMemberEventCountsFromTheFirstFailure(t *testing.T) {
	l := testLoop(fsm.New(), &fakeGossip{}, 3)
	m := member("d", membership.StateDead)
	l.NoteMemberEvent(membership.Event{Type: membership.EventFail, Member: m})
	first := l.deadSince["d"]
	l.NoteMemberEvent(membership.Event{Type: membership.EventLeave, Member: m})
	if !l.deadSince["d"].Equal(first) {
		t.Fatal("a second failure event restarted the count")
	}
	l.NoteMemberEvent(membership.Event{Type: membership.EventJoin, Member: m})
	if _, ok := l.deadSince["d"]; ok {
		t.Fatal("a member that joined again is still counted as gone")
	}
}

func TestReconcileNodesTakesBackTheTasksOfGoneNodesOnly(t *testing.T) {
	storage := member("f", membership.StateAlive)
	storage.Meta.StorageFault = true
	members := []membership.Member{
		member("a", membership.StateAlive), member("b", membership.StateAlive),
		member("c", membership.StateDead), member("d", membership.StateDead), member("e", membership.StateLeft), storage,
	}
	gone := member("g", membership.StateAlive) // registered long ago, unknown to gossip now
	f := fsm.New()
	for i, m := range append(slices.Clone(members), gone) {
		c := &fsm.Command{Now: time.Now().Add(-time.Hour), Body: &fsm.Register{Node: fsm.Node{Name: m.Name, BootID: m.Meta.BootID, Capacity: 1}}}
		if r := f.ApplyCommand(uint64(i+1), c); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	l := testLoop(f, &fakeGossip{members: members, answers: map[string]bool{"d": true}}, 3)
	var downs []fsm.Down
	l.cfg.Apply = func(_ context.Context, c *fsm.Command) (*fsm.Result, error) {
		downs = append(downs, *c.Body.(*fsm.Down))
		return &fsm.Result{}, nil
	}
	l.reconcileNodes(context.Background())
	got := map[string]bool{}
	for _, d := range downs {
		got[d.Name] = d.Left
	}
	// c is dead and does not answer; d is reported dead but answers a ping; e left; f cannot
	// persist; g is gone from gossip.
	want := map[string]bool{"c": false, "e": true, "f": false, "g": false}
	if len(got) != len(want) {
		t.Fatalf("downs %+v, want %v (name: left)", downs, want)
	}
	for name, left := range want {
		if l, ok := got[name]; !ok || l != left {
			t.Errorf("down of %s: %t %t, want left %t", name, ok, l, left)
		}
	}
}
