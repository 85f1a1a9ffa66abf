package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/scheduler"
)

// Errors the HTTP layer branches on.
var (
	ErrNoLeader     = errors.New("no cluster leader")
	ErrShuttingDown = errors.New("node is shutting down")
)

// propose applies a write of the API on this node, which must be the leader: the API's writes
// reach the leader's handlers through internal/forward, which retries the whole request when raft
// loses leadership under it (a retryable error here is the API's no_leader).
func (n *Node) propose(ctx context.Context, c *fsm.Command) (*fsm.Result, error) {
	if n.rn.Raft().State() != raft.Leader {
		return nil, raft.ErrNotLeader
	}
	return n.applyLocal(ctx, c)
}

// proposeNode gets a command this node sends about itself (a report, its registration, its
// drain, a running task's child) applied by the leader, wherever it is, retrying across leader
// changes until ctx ends. A follower sends it to the leader's internode route for its type
// (nodePath), which checks that the command is this node's.
func (n *Node) proposeNode(ctx context.Context, c *fsm.Command) (*fsm.Result, error) {
	backoff := 20 * time.Millisecond
	for {
		res, err := n.proposeNodeOnce(ctx, c)
		if err == nil || !retryable(err) {
			return res, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: %w (last error: %v)", c.Type(), ctx.Err(), err)
		case <-n.ctx.Done():
			return nil, ErrShuttingDown
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 250*time.Millisecond)
	}
}

func retryable(err error) bool {
	return errors.Is(err, ErrNoLeader) || errors.Is(err, raft.ErrNotLeader) ||
		errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrLeadershipTransferInProgress) ||
		errors.Is(err, raft.ErrEnqueueTimeout) || errors.Is(err, errForward)
}

var errForward = errors.New("forward to leader")

func (n *Node) proposeNodeOnce(ctx context.Context, c *fsm.Command) (*fsm.Result, error) {
	if n.rn.Raft().State() == raft.Leader {
		return n.applyLocal(ctx, c)
	}
	changed := n.leaderChanges() // before the leader is read: a change after that closes it
	target := n.Leader()
	addr := n.leaderInternodeAddr()
	if addr == "" {
		// Not a raft member yet (a joiner registering), or between leaders: any member answers
		// with the leader's name.
		if addr = n.anyInternodeAddr(); addr == "" {
			return nil, ErrNoLeader
		}
	}
	return n.forwardWhileLeader(ctx, changed, target, addr, c)
}

// errLeaderChanged is the cause of a forward given up because raft stopped naming its leader.
var errLeaderChanged = errors.New("leader changed")

// forwardWhileLeader forwards c to addr, the node of target (the leader raft named when the
// forward began; "" when it named none), and gives the forward up as soon as raft on this node
// names another leader, or none (internal/forward does the same for the API's writes). The error
// is errForward, so proposeNode retries against the new leader.
//
// Retrying is safe because a node's commands are idempotent when the first copy did commit: a
// child submit carries the task ID chosen before it is sent, so its second copy meets
// fsm.ErrDuplicateID, which submitTask takes as success; executor reports are fenced by (node,
// boot ID, attempt): Started and Checkpoint applied twice change nothing, and an outcome applied
// twice is stale the second time (tasks.ErrFenced, the attempt is settled); a registration and a
// drain set state.
func (n *Node) forwardWhileLeader(ctx context.Context, changed <-chan struct{}, target, addr string, c *fsm.Command) (*fsm.Result, error) {
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		for {
			select {
			case <-fctx.Done():
				return
			case <-changed:
			}
			changed = n.leaderChanges()
			if now := n.Leader(); now != target {
				cancel(fmt.Errorf("%w: raft names %q now, not %q", errLeaderChanged, now, target))
				return
			}
		}
	}()
	res, err := n.forward(fctx, addr, c)
	if cause := context.Cause(fctx); res == nil && errors.Is(err, errForward) && ctx.Err() == nil && errors.Is(cause, errLeaderChanged) {
		n.metrics.ForwardAbandoned()
		n.log.Info("gave up a forward to a leader raft no longer names; retrying against the new one",
			"command", c.Type().String(), "to", target, "leader", n.Leader())
		return nil, fmt.Errorf("%w %s: %w", errForward, addr, cause)
	}
	return res, err
}

// leaderWatch tells forwards that raft's view of the leader changed on this node.
type leaderWatch struct {
	once sync.Once
	mu   sync.Mutex
	ch   chan struct{} // closed at the next change, then replaced
}

// leaderChanges returns a channel closed at raft's next leader change on this node (a new
// leader, or none after a heartbeat timeout).
func (n *Node) leaderChanges() <-chan struct{} {
	w := &n.leaders
	w.once.Do(func() {
		w.ch = make(chan struct{})
		// raft calls the filter on its own goroutine for every observation: it only closes and
		// replaces a channel, which never blocks, and queues nothing (the observer has no channel).
		n.rn.Raft().RegisterObserver(raft.NewObserver(nil, false, func(o *raft.Observation) bool {
			if _, ok := o.Data.(raft.LeaderObservation); ok {
				w.mu.Lock()
				close(w.ch)
				w.ch = make(chan struct{})
				w.mu.Unlock()
			}
			return false
		}))
	})
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ch
}

// applyLocal applies a command on the leader. The leader's clock stamps it and the command's
// Prepare hook decides what must be decided once (retry backoff), so Apply stays deterministic.
func (n *Node) applyLocal(ctx context.Context, c *fsm.Command) (*fsm.Result, error) {
	n.fsm.Prepare(c, time.Now().UTC(), fsm.PrepareEnv{Backoff: retryBackoff, Admission: n.admissionEnv()})
	if c.Batchable() {
		// Refused alone, before it is merged: its fields must not fail the other callers' items.
		if err := n.fsm.CheckContentProtocol(c); err != nil {
			return nil, err
		}
		return n.batch.propose(ctx, c)
	}
	timeout := n.cfg.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	return n.raftApply(c, timeout)
}

func retryBackoff(failures int) time.Duration {
	return scheduler.DefaultBackoff.Delay(failures, scheduler.Jitter)
}

// raftApply encodes a command as every up node can read it, applies it through raft and returns
// the FSM's result. A command type some up node is too old for fails with fsm.ErrProtocolTooOld.
func (n *Node) raftApply(c *fsm.Command, timeout time.Duration) (*fsm.Result, error) {
	b, err := n.fsm.Emit(c)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	f := n.rn.Raft().Apply(b, timeout)
	n.placeAtSubmit(c, timeout) // queued right behind it, before it commits
	if err := n.await(f); err != nil {
		return nil, fmt.Errorf("apply %s: %w", c.Type(), err)
	}
	n.metrics.ObserveApply(time.Since(start))
	n.rn.Announce()
	res, _ := f.Response().(*fsm.Result)
	if res == nil {
		return nil, fmt.Errorf("apply %s: no result", c.Type())
	}
	return res, res.Err
}

// await waits for a raft future as its Error method does, but gives up when the node shuts down.
// hashicorp/raft (v1.8.0) never answers the future of an entry it had committed and queued for
// its FSM goroutine when it shut down: runFSM returns with batches still queued, and command and
// barrier futures carry no ShutdownCh. A loop waiting on one held Shutdown forever (found by CI:
// a node test cluster's cleanup waited 13 minutes on its scheduler loop's apply).
func (n *Node) await(f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-n.ctx.Done():
		select {
		case err := <-done: // answered meanwhile: the answer, not the shutdown
			return err
		default:
			return raft.ErrRaftShutdown
		}
	}
}

// wireResult is fsm.Result on the wire between a follower and the leader. Errors travel as fsm's
// stable code plus the message; a leader of the previous release sends the message alone, and
// fsm.FromWire matches it by text then.
type wireResult struct {
	Index uint64     `msgpack:"index"`
	Items []wireItem `msgpack:"items"`
	Err   string     `msgpack:"err"`
	Code  string     `msgpack:"code,omitempty"`
}

type wireItem struct {
	ID       string `msgpack:"id"`
	Existing bool   `msgpack:"existing"`
	Err      string `msgpack:"err"`
	Code     string `msgpack:"code,omitempty"`
}

func encodeErr(err error) (msg, code string) {
	if err == nil {
		return "", ""
	}
	return err.Error(), fsm.ErrorCode(err)
}

func toWire(r *fsm.Result) *wireResult {
	w := &wireResult{Index: r.Index}
	w.Err, w.Code = encodeErr(r.Err)
	for _, it := range r.Items {
		wi := wireItem{ID: it.ID, Existing: it.Existing}
		wi.Err, wi.Code = encodeErr(it.Err)
		w.Items = append(w.Items, wi)
	}
	return w
}

func fromWire(w *wireResult) *fsm.Result {
	r := &fsm.Result{Index: w.Index, Err: fsm.FromWire(w.Code, w.Err)}
	for _, it := range w.Items {
		r.Items = append(r.Items, fsm.ItemResult{ID: it.ID, Existing: it.Existing, Err: fsm.FromWire(it.Code, it.Err)})
	}
	return r
}

func (n *Node) forward(ctx context.Context, addr string, c *fsm.Command) (*fsm.Result, error) {
	b, err := n.fsm.Emit(c) // the leader may be a node of an older release
	if err != nil {
		return nil, err
	}
	path, ok := nodePaths[c.Type()]
	if !ok {
		return nil, fmt.Errorf("a node does not send %s commands", c.Type())
	}
	req, err := n.internodeRequest(ctx, http.MethodPost, addr, path, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/msgpack")
	resp, err := n.client.Do(req)
	if err != nil {
		n.leaderHint.Store("")
		return nil, fmt.Errorf("%w %s: %v", errForward, addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%w %s: %v", errForward, addr, err)
	}
	if resp.StatusCode == http.StatusServiceUnavailable {
		n.leaderHint.Store(resp.Header.Get(leaderHeader))
		return nil, fmt.Errorf("%w %s: leader unavailable", errForward, addr)
	}
	r, err := decodeForwardReply(resp.StatusCode, body)
	if err != nil {
		return nil, fmt.Errorf("forward %s to %s: %w", c.Type(), addr, err)
	}
	return r, r.Err
}

// decodeForwardReply reads the leader's answer to a forward: the applied result with its per-item
// errors rebuilt from their codes, or the refusal it was. It is fuzzed (FuzzInternodeEnvelope).
func decodeForwardReply(status int, body []byte) (*fsm.Result, error) {
	if err := forwardRefusal(status, body); err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("%d: %s", status, api.Truncate(string(bytes.TrimSpace(body))))
	}
	var w wireResult
	if err := fsm.Unmarshal(body, &w); err != nil {
		return nil, fmt.Errorf("decode reply: %w", err)
	}
	return fromWire(&w), nil
}

// waitIndex blocks until the local FSM has applied index, so a follower reads its own writes.
func (n *Node) waitIndex(ctx context.Context, index uint64) error {
	for {
		ch := n.fsm.Changed()
		if n.fsm.Index() >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
