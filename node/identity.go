package node

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/raft"
	"github.com/oklog/ulid/v2"

	"github.com/taskworker/taskworker/membership"
)

// A node's raft server ID is not its name: it is made on the node's first start and kept in its
// data dir, so it names one copy of the raft state rather than a host. A node restarted on an
// empty data dir (disk replaced, dir wiped) comes back with a new ID and joins as a new member;
// the leader then removes the server that held the lost state (reconcileRaft), instead of
// taking the newcomer for the old voter that still has the old one's term and vote.
//
// Names stay what people and the API use. The mapping ID <-> name travels in gossip meta
// (membership.Meta.RaftID), not in the FSM: a new field in an FSM payload would halt replicas of
// the previous release (fsm/encoding.go), while unknown gossip meta keys are ignored.

// raftIDFile holds the node's raft server ID in its data dir: one line, the ID only.
const raftIDFile = "raft-id"

// maxRaftIDLen bounds an ID read from disk: it is gossiped, and gossip meta has 512 bytes in all
// (a generated ID takes 26; an upgraded node's is its name).
const maxRaftIDLen = 128

// ErrBadRaftID is returned when the ID file exists but does not hold a usable ID.
var ErrBadRaftID = errors.New("bad raft ID file")

// loadRaftID returns the node's raft server ID for this start. The ID belongs to the raft state
// beside it: without raft state (a fresh dir, or one whose raft store was lost while an old ID
// file survived) the node is a new member, so it gets a new ID, saved for the next start; a
// node that never got as far as holding state loses nothing by it. With raft state the ID file
// is read, or, when absent, the node's name is taken and saved: a data dir from before raft IDs,
// whose server the cluster knows by name, so an upgraded node keeps its place in raft's
// configuration. In-memory raft (no data dir to keep state in) is a new member at every start;
// --dev nodes get a fresh temporary dir, hence a fresh ID, too.
func loadRaftID(dataDir, name string, inmem, existing bool) (raft.ServerID, error) {
	if dataDir == "" || inmem {
		return raft.ServerID(ulid.Make().String()), nil
	}
	path := filepath.Join(dataDir, raftIDFile)
	id := ulid.Make().String()
	if existing {
		b, err := os.ReadFile(path)
		switch {
		case err == nil:
			id := strings.TrimSpace(string(b))
			if id == "" || len(id) > maxRaftIDLen && id != name || strings.ContainsAny(id, " \t\r\n") {
				return "", fmt.Errorf("%w %s: want one line with the node's raft ID (restore it, or wipe the data dir to rejoin as a new member)", ErrBadRaftID, path)
			}
			return raft.ServerID(id), nil
		case !errors.Is(err, fs.ErrNotExist):
			return "", fmt.Errorf("read raft ID: %w", err)
		}
		id = name
	}
	if err := writeFileAtomic(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("save raft ID: %w", err)
	}
	return raft.ServerID(id), nil
}

// RaftID is this node's raft server ID.
func (n *Node) RaftID() string { return string(n.raftID) }

// memberRaftID is the raft server ID a gossip member runs under. A member of a release before
// raft IDs gossips none: its ID is its name.
func memberRaftID(m membership.Member) raft.ServerID {
	if m.Meta.RaftID != "" {
		return raft.ServerID(m.Meta.RaftID)
	}
	return raft.ServerID(m.Name)
}

// serverName is the node name of a raft server ID: this node's, a gossip member's that runs
// under the ID, else the name last seen with it (a server whose node came back under a new ID,
// or is gone from gossip). An ID nobody ever announced is shown as is: the servers of nodes
// from before raft IDs are named after their node.
func (n *Node) serverName(id raft.ServerID) string {
	return n.raftNames().name(id)
}

// raftNames is a snapshot of the mapping between raft IDs and node names, for code that maps
// many servers at once.
type raftNames struct {
	byID    map[raft.ServerID]string // every ID known, current or past
	current map[string]raft.ServerID // the ID each node runs under now
}

func (n *Node) raftNames() raftNames {
	r := raftNames{byID: map[raft.ServerID]string{}, current: map[string]raft.ServerID{}}
	n.idMu.Lock()
	for id, name := range n.idNames {
		r.byID[id] = name
	}
	n.idMu.Unlock()
	if n.members != nil {
		for _, m := range n.members.Members() {
			id := memberRaftID(m)
			r.byID[id], r.current[m.Name] = m.Name, id
		}
	}
	r.byID[n.raftID], r.current[n.cfg.Name] = n.cfg.Name, n.raftID
	return r
}

func (r raftNames) name(id raft.ServerID) string {
	if name, ok := r.byID[id]; ok {
		return name
	}
	return string(id)
}

// noteRaftID remembers which node a raft ID belonged to, so that the server is still known by
// its name once the node gossips another ID (restarted on an empty dir) or is gone from gossip.
func (n *Node) noteRaftID(m membership.Member) {
	n.idMu.Lock()
	n.idNames[memberRaftID(m)] = m.Name
	n.idMu.Unlock()
}

// serverIDs are the IDs of the servers in raft's configuration that belong to the named node
// (usually one; two for a moment after it came back under a new ID).
func (n *Node) serverIDs(servers []raft.Server, name string) []raft.ServerID {
	names := n.raftNames()
	var ids []raft.ServerID
	for _, s := range servers {
		if names.name(s.ID) == name {
			ids = append(ids, s.ID)
		}
	}
	return ids
}
