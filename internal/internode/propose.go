package internode

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
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/forward"
	"github.com/taskworker/taskworker/internal/tracing"
	"github.com/taskworker/taskworker/scheduler"
)

// Errors callers branch on.
var (
	ErrNoLeader     = errors.New("no cluster leader")
	ErrShuttingDown = errors.New("node is shutting down")
)

// Propose applies a write of the API on this node, which must be the leader: the API's writes
// reach the leader's handlers through internal/forward, which retries the whole request when raft
// loses leadership under it (a retryable error here is the API's no_leader).
func (c *Channel) Propose(ctx context.Context, cmd *fsm.Command) (*fsm.Result, error) {
	if !c.isLeader() {
		return nil, raft.ErrNotLeader
	}
	return c.Apply(ctx, cmd)
}

// ProposeNode gets a command this node sends about itself (a report, its registration, its
// drain, a running task's child) applied by the leader, wherever it is, retrying across leader
// changes until ctx ends. A follower sends it to the leader's route for its type (CommandPath),
// which checks that the command is this node's.
func (c *Channel) ProposeNode(ctx context.Context, cmd *fsm.Command) (*fsm.Result, error) {
	backoff := 20 * time.Millisecond
	for {
		res, err := c.proposeNodeOnce(ctx, cmd)
		if err == nil || !Retryable(err) {
			return res, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: %w (last error: %v)", cmd.Type(), ctx.Err(), err)
		case <-c.cfg.Done:
			return nil, ErrShuttingDown
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 250*time.Millisecond)
	}
}

// Retryable reports whether err means that no leader took the write and another try may: there
// was none, it lost leadership, or the forward to it failed.
func Retryable(err error) bool {
	return errors.Is(err, ErrNoLeader) || errors.Is(err, raft.ErrNotLeader) ||
		errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrLeadershipTransferInProgress) ||
		errors.Is(err, raft.ErrEnqueueTimeout) || errors.Is(err, errForward)
}

var errForward = errors.New("forward to leader")

func (c *Channel) proposeNodeOnce(ctx context.Context, cmd *fsm.Command) (*fsm.Result, error) {
	if c.isLeader() {
		return c.Apply(ctx, cmd)
	}
	changed := c.leaderChanges() // before the leader is read: a change after that closes it
	target := c.cfg.Leader()
	// Not a raft member yet (a joiner registering), or between leaders: any member answers
	// with the leader's name.
	addr := c.leaderOrAnyAddr()
	if addr == "" {
		return nil, ErrNoLeader
	}
	return c.sendWhileLeader(ctx, changed, target, addr, cmd)
}

// sendWhileLeader sends cmd to addr, the node of target (the leader raft named when the forward
// began; "" when it named none), and gives the forward up as soon as raft on this node names
// another leader, or none (internal/forward does the same for the API's writes). The error is
// errForward, so ProposeNode retries against the new leader.
//
// Retrying is safe because a node's commands are idempotent when the first copy did commit: a
// child submit carries the task ID chosen before it is sent, so its second copy meets
// fsm.ErrDuplicateID, which the submit takes as success; executor reports are fenced by (node,
// boot ID, attempt): Started and Checkpoint applied twice change nothing, and an outcome applied
// twice is stale the second time (tasks.ErrFenced, the attempt is settled); a registration and a
// drain set state.
func (c *Channel) sendWhileLeader(ctx context.Context, changed <-chan struct{}, target, addr string, cmd *fsm.Command) (*fsm.Result, error) {
	fctx, cancel := forward.WhileLeader(ctx, changed, c.leaderChanges, c.cfg.Leader, target)
	defer cancel()
	res, err := c.Send(fctx, addr, cmd)
	if cause := context.Cause(fctx); res == nil && errors.Is(err, errForward) && ctx.Err() == nil && errors.Is(cause, forward.ErrLeaderChanged) {
		c.cfg.Metrics.ForwardAbandoned()
		c.log.Info("gave up a forward to a leader raft no longer names; retrying against the new one",
			"command", cmd.Type().String(), "to", target, "leader", c.cfg.Leader())
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
func (c *Channel) leaderChanges() <-chan struct{} {
	w := &c.leaders
	w.once.Do(func() {
		w.ch = make(chan struct{})
		// raft calls the filter on its own goroutine for every observation: it only closes and
		// replaces a channel, which never blocks, and queues nothing (the observer has no channel).
		c.cfg.Raft.RegisterObserver(raft.NewObserver(nil, false, func(o *raft.Observation) bool {
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

// Apply applies a command on this node, which leads. The leader's clock stamps it and the
// command's Prepare hook decides what must be decided once (retry backoff), so Apply stays
// deterministic.
func (c *Channel) Apply(ctx context.Context, cmd *fsm.Command) (res *fsm.Result, err error) {
	if tr := c.cfg.Tracer; tr != nil && trace.SpanContextFromContext(ctx).IsValid() {
		// The commit of a traced request (a submit): its span covers the wait for raft.
		var span trace.Span
		ctx, span = tr.Start(ctx, "raft.apply", trace.WithAttributes(
			tracing.AttrCommand.String(cmd.Type().String()), tracing.AttrNode.String(c.cfg.Name)))
		defer func() {
			if err == nil && res != nil {
				span.SetAttributes(attribute.Int64("taskworker.raft.index", int64(res.Index)))
			}
			if err != nil {
				span.SetStatus(codes.Error, err.Error())
			}
			span.End()
		}()
	}
	c.cfg.FSM.Prepare(cmd, time.Now().UTC(), fsm.PrepareEnv{Backoff: retryBackoff, Admission: c.cfg.Admission()})
	if ab, ok := cmd.Body.(*fsm.AssignBatch); ok && len(ab.Items) > 0 {
		defer func() {
			if err == nil {
				c.placed(ab.Items, cmd.Now)
			}
		}()
	}
	if cmd.Batchable() {
		// Refused alone, before it is merged: its fields must not fail the other callers' items.
		if err := c.cfg.FSM.CheckContentProtocol(cmd); err != nil {
			return nil, err
		}
		return c.batch.propose(ctx, cmd)
	}
	timeout := c.cfg.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	return c.raftApply(cmd, timeout)
}

func retryBackoff(failures int) time.Duration {
	return scheduler.DefaultBackoff.Delay(failures, scheduler.Jitter)
}

// raftApply encodes a command as every up node can read it, applies it through raft and returns
// the FSM's result. A command type some up node is too old for fails with fsm.ErrProtocolTooOld.
func (c *Channel) raftApply(cmd *fsm.Command, timeout time.Duration) (*fsm.Result, error) {
	a, err := c.raftStart(cmd, timeout)
	if err != nil {
		return nil, err
	}
	return c.raftFinish(a)
}

// applying is a command handed to raft whose result is not in yet.
type applying struct {
	cmd   *fsm.Command
	f     raft.ApplyFuture
	start time.Time
	// placed are the assignments its entry carries (a submit's Place), for placed once it applied.
	placed []fsm.Assign
}

// raftStart encodes cmd and hands it to raft without waiting: raft writes and replicates entries
// handed to it together as one batch, in the order they were handed. A submit carries the
// assignments of its tasks placeAtSubmit makes (fsm.SubmitBatch.Place) while every up node
// speaks fsm.PlaceProtocol; with an older node up they follow it in an entry of their own.
func (c *Channel) raftStart(cmd *fsm.Command, timeout time.Duration) (applying, error) {
	as := c.placeAtSubmit(cmd)
	sb, _ := cmd.Body.(*fsm.SubmitBatch)
	if sb != nil {
		sb.Place = as // the leader's placements only, whatever the command carried
	}
	b, err := c.cfg.FSM.Emit(cmd)
	if err != nil && len(as) > 0 && errors.Is(err, fsm.ErrProtocolTooOld) {
		sb.Place = nil // a node older than PlaceProtocol is up (or the items need more than it speaks)
		b, err = c.cfg.FSM.Emit(cmd)
	}
	if err != nil {
		return applying{}, err
	}
	a := applying{cmd: cmd, start: time.Now()}
	a.f = c.cfg.Raft.Apply(b, timeout)
	switch {
	case len(as) == 0:
	case len(sb.Place) > 0:
		a.placed = as
		c.proposedAtSubmit(as)
	default:
		c.placeBehind(as, cmd.Now, timeout) // queued right behind it, before it commits
	}
	return a, nil
}

// raftFinish waits for a command raftStart handed to raft and returns the FSM's result.
func (c *Channel) raftFinish(a applying) (*fsm.Result, error) {
	if err := c.Await(a.f); err != nil {
		return nil, fmt.Errorf("apply %s: %w", a.cmd.Type(), err)
	}
	c.cfg.Metrics.ObserveApply(time.Since(a.start))
	c.cfg.Announce()
	res, _ := a.f.Response().(*fsm.Result)
	if res == nil {
		return nil, fmt.Errorf("apply %s: no result", a.cmd.Type())
	}
	if len(a.placed) > 0 {
		c.placed(a.placed, a.cmd.Now)
	}
	return res, res.Err
}

// Await waits for a raft future as its Error method does, but gives up when the node shuts down.
// hashicorp/raft (v1.8.0) never answers the future of an entry it had committed and queued for
// its FSM goroutine when it shut down: runFSM returns with batches still queued, and command and
// barrier futures carry no ShutdownCh. A loop waiting on one held Shutdown forever (found by CI:
// a node test cluster's cleanup waited 13 minutes on its scheduler loop's apply).
func (c *Channel) Await(f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-c.cfg.Done:
		select {
		case err := <-done: // answered meanwhile: the answer, not the shutdown
			return err
		default:
			return raft.ErrRaftShutdown
		}
	}
}

// Send sends a command this node makes about itself to the node at addr, on the route for its
// type (CommandPath), and returns the result that node applied, or its refusal.
func (c *Channel) Send(ctx context.Context, addr string, cmd *fsm.Command) (*fsm.Result, error) {
	b, err := c.cfg.FSM.Emit(cmd) // the leader may be a node of an older release
	if err != nil {
		return nil, err
	}
	path, ok := nodePaths[cmd.Type()]
	if !ok {
		return nil, fmt.Errorf("a node does not send %s commands", cmd.Type())
	}
	req, err := c.Request(ctx, http.MethodPost, addr, path, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/msgpack")
	resp, err := c.client.Do(req)
	if err != nil {
		c.leaderHint.Store("")
		return nil, fmt.Errorf("%w %s: %v", errForward, addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%w %s: %v", errForward, addr, err)
	}
	if resp.StatusCode == http.StatusServiceUnavailable {
		c.leaderHint.Store(resp.Header.Get(headerLeader))
		return nil, fmt.Errorf("%w %s: leader unavailable", errForward, addr)
	}
	r, err := decodeForwardReply(resp.StatusCode, body)
	if err != nil {
		return nil, fmt.Errorf("forward %s to %s: %w", cmd.Type(), addr, err)
	}
	return r, r.Err
}

// WaitIndex blocks until the local FSM has applied index, so a follower reads its own writes.
func (c *Channel) WaitIndex(ctx context.Context, index uint64) error {
	for {
		ch := c.cfg.FSM.Changed()
		if c.cfg.FSM.Index() >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// decodeForwardReply reads the leader's answer to a node's command: the applied result with its
// per-item errors rebuilt from their codes, or the refusal it was. It is fuzzed
// (FuzzInternodeEnvelope).
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
