package node

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/oklog/ulid/v2"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/localcluster"
	"github.com/taskworker/taskworker/internal/raftnode"
	"github.com/taskworker/taskworker/membership"
)

// TestNodeRestartedOnAnEmptyDataDirJoinsAsANewMember: a follower loses its data dir and comes
// back under the same name and addresses. It must get a new raft ID, the leader must put that ID
// in raft's configuration as a voter and drop the old one (whose log, term and vote are gone),
// and the node must catch up and run tasks.
func TestNodeRestartedOnAnEmptyDataDirJoinsAsANewMember(t *testing.T) {
	tc := startCluster(t, 3, clusterOpts{capacity: 1})
	for i := 0; i < 3; i++ {
		submit(t, tc.nodes[i], "calc-square", i, "20s")
	}
	x := tc.follower()
	oldID := raft.ServerID(x.RaftID())
	waitFor(t, "the follower a voter under its first ID", 30*time.Second, func() bool {
		return slices.Contains(voterIDs(tc.leader()), oldID)
	})
	cfg := x.cfg
	cfg.Logger = testLogger(t)
	cfg.GossipAddr, cfg.RaftAddr, cfg.HTTPAddr = x.GossipAddr(), x.RaftAddr(), x.HTTPAddr()
	cfg.Join = []string{tc.leader().GossipAddr()}
	if err := x.Shutdown(); err != nil {
		t.Fatal(err)
	}
	cfg.DataDir = privateTempDir(t) // the disk was replaced
	y := tc.start(cfg)
	newID := raft.ServerID(y.RaftID())
	if newID == oldID || newID == "" {
		t.Fatalf("restarted on an empty dir with raft ID %q, first ID %q", newID, oldID)
	}
	waitFor(t, "the new ID a voter and the old one gone", 30*time.Second, func() bool {
		l := tc.leader()
		return l != nil && slices.Contains(voterIDs(l), newID) && !slices.Contains(raftIDs(l), oldID)
	})
	tc.waitHealthy(3)
	waitFor(t, "the new member caught up", 30*time.Second, func() bool {
		return y.FSM().Index() >= tc.leader().FSM().Index()
	})
	// /v1/cluster shows the node under its name with its new ID and its role.
	var info api.Cluster
	if code := httpCall(t, tc.leader(), "GET", "/v1/cluster", nil, &info); code != 200 {
		t.Fatalf("GET /v1/cluster: %d", code)
	}
	var found bool
	for _, ni := range info.Nodes {
		if ni.Name == cfg.Name {
			found = true
			if ni.ID != string(newID) || ni.RaftRole != api.RoleVoter {
				t.Errorf("/v1/cluster shows %s with id %q role %q, want id %s role voter", ni.Name, ni.ID, ni.RaftRole, newID)
			}
		}
	}
	if !found {
		t.Fatalf("/v1/cluster lacks %s: %+v", cfg.Name, info.Nodes)
	}
	// The new member runs tasks: submit until one lands on it (placement spreads the load).
	var ran bool
	for i := 0; i < 30 && !ran; i++ {
		task := submit(t, tc.nodes[i%2], "calc-square", i, "20s")
		if task.State != api.StateSucceeded || string(task.Result) != fmt.Sprint(i*i) {
			t.Fatalf("task %d: %s %s", i, task.State, task.Result)
		}
		ran = task.Node == cfg.Name
	}
	if !ran {
		t.Fatalf("no task ran on %s after it came back", cfg.Name)
	}
}

// TestDataDirFromBeforeRaftIDsKeepsItsName: n1's data dir comes from a release before raft IDs
// (raft state whose configuration names the server after the node, no ID file). n1 must take its
// name as its ID and write it down, lead its cluster as before, take in new nodes (under their
// generated IDs), and keep the name across a restart.
func TestDataDirFromBeforeRaftIDsKeepsItsName(t *testing.T) {
	dir := privateTempDir(t)
	raftAddr := freeAddr(t)
	bootstrapNamedServer(t, dir, "n1", raftAddr)
	tc := startCluster(t, 3, clusterOpts{tweak: func(i int, c *Config) {
		if i == 0 {
			c.DataDir, c.RaftAddr = dir, raftAddr
		}
	}})
	n1 := tc.nodes[0]
	if n1.RaftID() != "n1" {
		t.Fatalf("n1 resumed under raft ID %q, want its name", n1.RaftID())
	}
	waitFor(t, "n1 and the newcomers voters", 30*time.Second, func() bool {
		ids := voterIDs(tc.leader())
		return len(ids) == 3 && slices.Contains(ids, "n1") &&
			slices.Contains(ids, raft.ServerID(tc.nodes[1].RaftID())) && slices.Contains(ids, raft.ServerID(tc.nodes[2].RaftID()))
	})
	done := submit(t, tc.nodes[1], "calc-square", 7, "20s")

	c := n1.cfg
	c.Logger = testLogger(t)
	c.GossipAddr, c.RaftAddr, c.HTTPAddr = n1.GossipAddr(), n1.RaftAddr(), n1.HTTPAddr()
	c.Join = []string{tc.nodes[1].GossipAddr()}
	if err := n1.Shutdown(); err != nil {
		t.Fatal(err)
	}
	back := tc.start(c)
	if back.RaftID() != "n1" {
		t.Fatalf("n1 restarted under raft ID %q, want its name", back.RaftID())
	}
	if b, err := os.ReadFile(filepath.Join(dir, raftnode.IDFile)); err != nil || string(b) != "n1\n" {
		t.Fatalf("n1's ID file: %q, %v", b, err)
	}
	tc.waitHealthy(3)
	waitFor(t, "n1 back as a voter under its name", 30*time.Second, func() bool {
		ids := voterIDs(tc.leader())
		return len(ids) == 3 && slices.Contains(ids, "n1")
	})
	waitFor(t, "n1 replayed its log", 20*time.Second, func() bool { return back.FSM().Index() >= tc.leader().FSM().Index() })
	if got, ok := back.FSM().Task(done.ID); !ok || got.State != fsm.Succeeded {
		t.Fatalf("n1 lost task %s: %v %s", done.ID, ok, got.State)
	}
	if task := submit(t, back, "calc-square", 12, "20s"); string(task.Result) != "144" {
		t.Fatalf("after the restart: %s %s", task.State, task.Result)
	}
}

// bootstrapNamedServer writes raft state into dir as a node of the release before raft IDs did on
// its first start: a one-server configuration whose server ID is the node's name.
func bootstrapNamedServer(t *testing.T, dir, name, addr string) {
	t.Helper()
	raftDir := filepath.Join(dir, "raft")
	if err := os.MkdirAll(raftDir, 0o700); err != nil {
		t.Fatal(err)
	}
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(raftDir, "raft.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	snaps, err := raft.NewFileSnapshotStore(raftDir, 2, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(name)
	_, trans := raft.NewInmemTransport(raft.ServerAddress(addr))
	cf := raft.Configuration{Servers: []raft.Server{{ID: raft.ServerID(name), Address: raft.ServerAddress(addr), Suffrage: raft.Voter}}}
	if err := raft.BootstrapCluster(rc, store, store, snaps, trans, cf); err != nil {
		t.Fatal(err)
	}
}

// freeAddr is a 127.0.0.1 address with a port nothing listens on at the moment, for a node to
// bind later. It comes from localcluster.FreePorts, below the kernel's ephemeral range: a port
// picked with :0 and released goes back to the kernel, which hands it to the next :0 listener
// (a node this test starts) or dial as readily as any other.
func freeAddr(t *testing.T) string {
	t.Helper()
	ports, err := localcluster.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", ports[0])
}

func TestMetaWithARaftIDFitsTheGossipBudget(t *testing.T) {
	// The largest meta a node sends: every field at its realistic maximum, plus a full keyring.
	m := membership.Meta{
		RaftAddr: "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535", RaftID: ulid.Make().String(),
		HTTPAddr: "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535", BootID: newBootID(), Capacity: 1 << 20,
		Draining: true, Version: "v10.20.30-rc.1+abcdef0", Insecure: true, Internode: "[2001:db8::1]:65535",
		Keys: strings.Repeat("0123456789ab,", 8), StartedAt: time.Now().Unix(), CommitIndex: 1 << 62, AppliedIndex: 1 << 62,
		StorageFault: true, DrainDeadline: time.Now().UnixMilli(),
	}
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 400 {
		t.Errorf("meta takes %d of memberlist's 512 bytes: little room left for the next field", len(b))
	}
}

func voterIDs(n *Node) []raft.ServerID {
	if n == nil {
		return nil
	}
	var ids []raft.ServerID
	for _, s := range rawRaftServers(n) {
		if s.Suffrage == raft.Voter {
			ids = append(ids, s.ID)
		}
	}
	return ids
}
