package membership

import (
	"fmt"
	"sync"

	"github.com/hashicorp/memberlist"
)

// delegate is the face Membership shows memberlist. memberlist calls it with its node lock held,
// so every method only records and returns.
type delegate Membership

func (d *delegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.meta // Encode keeps it within memberlist.MetaMaxSize, which is the limit asked for
}

func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// NotifyMerge refuses a state exchange (a join's, or a periodic push/pull) that would put two
// live nodes under one name: a peer in the remote state that is alive at one address while this
// node knows a live member of that name at another. memberlist alone keeps the first and logs
// "Conflicting address" every push/pull, forever, while the newcomer believes it has joined.
// Refusing on both sides keeps the newcomer out; a Join of ours that meets it fails for good
// with ErrNameConflict. A member that is suspect or dead does not block its name: that is a node
// restarted at a new address, which memberlist lets reclaim the name.
func (d *delegate) NotifyMerge(peers []*memberlist.Node) error {
	m := (*Membership)(d)
	if m.created.Load() == nil {
		return nil // still starting: it knows no member yet, itself aside
	}
	// From our own record of the members, not memberlist's: the nodes list.Members() returns are
	// memberlist's live records, which its packet handler rewrites while we would read them.
	live := map[string]string{}
	m.mu.Lock()
	for _, mem := range m.known {
		if mem.State == StateAlive {
			live[mem.Name] = mem.GossipAddr
		}
	}
	m.mu.Unlock()
	for _, p := range peers {
		mine, ok := live[p.Name]
		if !ok || p.State != memberlist.StateAlive || p.Address() == mine {
			continue
		}
		err := fmt.Errorf("%w: %q is a live member at %s and at %s", ErrNameConflict, p.Name, mine, p.Address())
		if p.Name == m.name && m.joining.Load() > 0 {
			// We are the newcomer: the other one holds the name in the cluster we are joining.
			err = fmt.Errorf("%w: another live node named %q is in the cluster at %s (this node: %s); give each node a unique --name",
				ErrNameConflict, p.Name, p.Address(), mine)
			m.conflict.Store(&err)
		}
		m.log.Warn("refused gossip state with a duplicate node name", "err", err)
		return err
	}
	return nil
}

func (d *delegate) NotifyJoin(n *memberlist.Node)   { d.record(EventJoin, d.member(n, StateAlive)) }
func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.record(EventUpdate, d.member(n, StateAlive)) }

// NotifyLeave cannot trust n.State (it reads alive, hashicorp/memberlist#293), so a graceful leave
// is recognised by the node's own last word: it gossiped Draining before leaving.
func (d *delegate) NotifyLeave(n *memberlist.Node) {
	mem, t := d.member(n, StateDead), EventFail
	if mem.Meta.Draining {
		mem.State, t = StateLeft, EventLeave
	}
	d.record(t, mem)
}

func (d *delegate) member(n *memberlist.Node, s State) Member {
	meta, err := DecodeMeta(n.Meta)
	if err != nil {
		d.log.Warn("peer gossips undecodable meta, using zero meta", "node", n.Name, "err", err)
	}
	return Member{Name: n.Name, GossipAddr: n.Address(), Meta: meta, State: s}
}

func (d *delegate) record(t EventType, mem Member) {
	d.mu.Lock()
	d.known[mem.Name] = mem
	d.mu.Unlock()
	d.queue.push(Event{Type: t, Member: mem})
}

// eventQueue is unbounded so that memberlist's callbacks never wait for the consumer of Events.
type eventQueue struct {
	mu    sync.Mutex
	items []Event
	wake  chan struct{} // capacity 1: "items is not empty"
}

func (q *eventQueue) push(e Event) {
	q.mu.Lock()
	q.items = append(q.items, e)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *eventQueue) take() []Event {
	q.mu.Lock()
	defer q.mu.Unlock()
	items := q.items
	q.items = nil
	return items
}

// pump moves queued events to the Events channel until Shutdown.
func (m *Membership) pump() {
	defer m.wg.Done()
	defer close(m.events)
	for {
		for _, e := range m.queue.take() {
			select {
			case m.events <- e:
			case <-m.done:
				return
			}
		}
		select {
		case <-m.queue.wake:
		case <-m.done:
			return
		}
	}
}
