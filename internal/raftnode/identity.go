package raftnode

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/raft"
	"github.com/oklog/ulid/v2"

	"github.com/taskworker/taskworker/internal/store"
	"github.com/taskworker/taskworker/membership"
)

// A node's raft server ID is not its name: it is made on the node's first start and kept in its
// data dir, so it names one copy of the raft state rather than a host. A node restarted on an
// empty data dir (disk replaced, dir wiped) comes back with a new ID and joins as a new member;
// the leader then removes the server that held the lost state, instead of taking the newcomer for
// the old voter that still has the old one's term and vote.
//
// Names stay what people and the API use. The mapping ID <-> name travels in gossip meta
// (membership.Meta.RaftID), not in the FSM: a new field in an FSM payload would halt replicas of
// the previous release (fsm/encoding.go), while unknown gossip meta keys are ignored.

// IDFile holds the node's raft server ID in its data dir: one line, the ID only.
const IDFile = "raft-id"

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
	path := filepath.Join(dataDir, IDFile)
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
	if err := store.WriteFileAtomic(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("save raft ID: %w", err)
	}
	return raft.ServerID(id), nil
}

// ID is this node's raft server ID.
func (r *Node) ID() raft.ServerID { return r.id }

// MemberID is the raft server ID a gossip member runs under. A member of a release before raft
// IDs gossips none: its ID is its name.
func MemberID(m membership.Member) raft.ServerID {
	if m.Meta.RaftID != "" {
		return raft.ServerID(m.Meta.RaftID)
	}
	return raft.ServerID(m.Name)
}

// ServerName is the node name of a raft server ID: this node's, a gossip member's that runs
// under the ID, else the name last seen with it (a server whose node came back under a new ID,
// or is gone from gossip). An ID nobody ever announced is shown as is: the servers of nodes
// from before raft IDs are named after their node.
func (r *Node) ServerName(id raft.ServerID) string {
	return r.Names().Name(id)
}

// Names is a snapshot of the mapping between raft IDs and node names, for code that maps many
// servers at once.
type Names struct {
	byID    map[raft.ServerID]string // every ID known, current or past
	current map[string]raft.ServerID // the ID each node runs under now
}

// Names takes a snapshot of the mapping between raft IDs and node names.
func (r *Node) Names() Names {
	ns := Names{byID: map[raft.ServerID]string{}, current: map[string]raft.ServerID{}}
	r.idMu.Lock()
	for id, name := range r.idNames {
		ns.byID[id] = name
	}
	r.idMu.Unlock()
	if r.cfg.Members != nil {
		for _, m := range r.cfg.Members() {
			id := MemberID(m)
			ns.byID[id], ns.current[m.Name] = m.Name, id
		}
	}
	ns.byID[r.id], ns.current[r.cfg.Name] = r.cfg.Name, r.id
	return ns
}

// Name is the node name of raft server ID id (as ServerName says).
func (ns Names) Name(id raft.ServerID) string {
	if name, ok := ns.byID[id]; ok {
		return name
	}
	return string(id)
}

// Current is the raft ID the named node runs under now (this node's, or the one gossip carries),
// "" when unknown.
func (ns Names) Current(name string) raft.ServerID { return ns.current[name] }

// NoteMember remembers which node a raft ID belonged to, so that the server is still known by its
// name once the node gossips another ID (restarted on an empty dir) or is gone from gossip.
func (r *Node) NoteMember(m membership.Member) {
	r.idMu.Lock()
	r.idNames[MemberID(m)] = m.Name
	r.idMu.Unlock()
}

// ServerIDs are the IDs of the servers in raft's configuration that belong to the named node
// (usually one; two for a moment after it came back under a new ID).
func (r *Node) ServerIDs(servers []raft.Server, name string) []raft.ServerID {
	names := r.Names()
	var ids []raft.ServerID
	for _, s := range servers {
		if names.Name(s.ID) == name {
			ids = append(ids, s.ID)
		}
	}
	return ids
}
