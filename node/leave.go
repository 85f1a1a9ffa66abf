package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/membership"
	"github.com/taskworker/taskworker/tasks"
)

// ErrLeaveRefused is returned when a leave would leave the cluster without a node or a quorum.
var ErrLeaveRefused = errors.New("leave refused")

// checkLeave refuses the leave of the last node, or of a voter whose removal breaks quorum.
func (n *Node) checkLeave() error {
	alive := n.aliveNames()
	delete(alive, n.cfg.Name)
	if len(alive) == 0 {
		return fmt.Errorf("%w: %s is the last node of the cluster (use force to stop it anyway)", ErrLeaveRefused, n.cfg.Name)
	}
	cf := n.rn.Raft().GetConfiguration()
	if err := cf.Error(); err != nil {
		return fmt.Errorf("read raft configuration: %w", err)
	}
	voters, aliveVoters, selfVoter := 0, 0, false
	names := n.rn.Names()
	for _, s := range cf.Configuration().Servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		if s.ID == n.rn.ID() {
			selfVoter = true
			continue
		}
		voters++
		if alive[names.Name(s.ID)] {
			aliveVoters++
		}
	}
	// Non-voters are promoted as voters go, so count alive non-voters as future voters.
	spare := len(alive) - aliveVoters
	if selfVoter && aliveVoters+min(spare, 1) < voters/2+1 {
		return fmt.Errorf("%w: removing %s would leave %d of %d voters alive, below quorum (use force to stop it anyway)",
			ErrLeaveRefused, n.cfg.Name, aliveVoters, voters)
	}
	return nil
}

// Leave drains this node and removes it from the cluster: no new tasks land here, running tasks
// get up to the drain timeout to finish, the rest are handed back to run elsewhere, leadership
// moves away, the node leaves raft and gossip, and it shuts down. Without force, a leave that
// would remove the last node or break quorum is refused; with force it drains and stops anyway.
//
// leaveMu guards only the claim (claimLeave): checkLeave reads raft's configuration and the
// drain is proposed through raft, and a stop (stopFailed) must not wait on either.
func (n *Node) Leave(ctx context.Context, force bool) error {
	if n.leaveClaimed() {
		return nil
	}
	if !n.joined.Load() {
		// Still looking for its cluster: no tasks, no raft membership, nobody to tell. Waiting on
		// a drain record that no leader will take would only delay the exit.
		if !n.claimLeave() {
			return nil
		}
		n.log.Info("stopping at once: this node never joined a cluster")
		go func() {
			if err := n.Shutdown(); err != nil {
				n.log.Warn("shutdown", "err", err)
			}
			close(n.leaveDone)
		}()
		return nil
	}
	if err := n.checkLeave(); err != nil && !force {
		return err
	}
	if !n.claimLeave() {
		return nil // another leave, or a stop, started meanwhile
	}
	n.leaving.Store(true)
	// Record the drain before answering, so nothing new is placed here once the leave is accepted.
	log := n.log.With("phase", "leave")
	log.Info("draining: no new tasks will be placed here", "drain_timeout", n.cfg.DrainTimeout)
	deadline := time.Now().Add(n.cfg.DrainTimeout).UnixMilli()
	if err := n.members.UpdateMeta(func(m *membership.Meta) { m.Draining, m.DrainDeadline = true, deadline }); err != nil {
		log.Warn("gossip draining flag", "err", err)
	}
	cctx, cancel := context.WithTimeout(ctx, proposeTimeout)
	if _, err := n.internode.ProposeNode(cctx, &fsm.Command{Body: &fsm.Drain{Name: n.cfg.Name, Draining: true}}); err != nil {
		log.Warn("record drain", "err", err)
	}
	cancel()
	go func() {
		if err := n.leave(ctx, log); err != nil {
			n.log.Error("leave", "err", err)
		}
		close(n.leaveDone)
	}()
	return nil
}

// leaveClaimed reports whether a leave or a stop has started.
func (n *Node) leaveClaimed() bool {
	n.leaveMu.Lock()
	defer n.leaveMu.Unlock()
	return n.leaveStarted
}

// claimLeave marks the leave started; false when a leave or a stop started first.
func (n *Node) claimLeave() bool {
	n.leaveMu.Lock()
	defer n.leaveMu.Unlock()
	if n.leaveStarted {
		return false
	}
	n.leaveStarted = true
	return true
}

func (n *Node) leave(ctx context.Context, log *slog.Logger) error {
	n.drainTasks(ctx, log)

	if n.IsLeader() {
		log.Info("transferring leadership")
		if err := n.transferLeadership(); err != nil {
			log.Warn("leadership transfer", "err", err)
		}
	}
	// Held requests are answered while this node still follows raft, so a wait gets a current
	// record and its client can carry on elsewhere before the node leaves.
	n.releaseClients("leaving the cluster")
	switch err := n.checkLeave(); {
	case n.IsLeader():
		log.Warn("no other node could take leadership; staying in the raft configuration")
	case err != nil:
		log.Warn("staying in the raft configuration", "reason", err)
	default:
		cctx, cancel := context.WithTimeout(ctx, removeSelfTimeout)
		if err := n.askLeaderRemove(cctx); err != nil {
			log.Warn("removal from raft", "err", err)
		}
		cancel()
	}
	log.Info("leaving gossip")
	if err := n.members.Leave(gossipLeaveTimeout); err != nil {
		log.Warn("gossip leave", "err", err)
	}
	log.Info("left the cluster")
	return n.Shutdown()
}

// transferLeadership asks raft to hand leadership to another voter, waiting at most a few
// election timeouts: raft's transfer has been seen to wait forever when the leader steps down
// meanwhile (hashicorp/raft#696), and a leave must end.
func (n *Node) transferLeadership() error {
	done := make(chan error, 1)
	go func() { done <- n.rn.Raft().LeadershipTransfer().Error() }()
	limit := 4*n.cfg.RaftElection + 2*time.Second
	select {
	case err := <-done:
		return err
	case <-time.After(limit):
		return fmt.Errorf("no answer from raft within %s; leaving anyway", limit)
	}
}

// drainTasks lets running tasks finish within the drain timeout, then hands the rest back.
func (n *Node) drainTasks(ctx context.Context, log *slog.Logger) {
	deadline := time.Now().Add(n.cfg.DrainTimeout)
	var logged time.Time
	for {
		changed := n.fsm.Changed()
		running, held := n.exec.Running(), n.fsm.Active(n.cfg.Name)
		if len(running) == 0 && len(held) == 0 {
			log.Info("drained: no tasks left on this node")
			return
		}
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil {
			break
		}
		if time.Since(logged) >= 2*time.Second {
			log.Info("waiting for tasks to finish", "running", len(running), "held", len(held), "left", left.Round(time.Second))
			logged = time.Now()
		}
		// Runs end with a report, which changes the FSM; the timer bounds the wait.
		select {
		case <-ctx.Done():
		case <-changed:
		case <-time.After(min(left, 250*time.Millisecond)):
		}
	}
	log.Warn("drain timeout: handing back tasks still running", "count", len(n.exec.Running()))
	n.exec.StopAll(tasks.StopDrain)
	wctx, cancel := context.WithTimeout(context.Background(), handBackTimeout)
	defer cancel()
	_ = n.exec.Wait(wctx)
	// Assignments that never started here go back too.
	for _, t := range n.fsm.Active(n.cfg.Name) {
		if t.BootID != n.bootID {
			continue
		}
		n.finishUnstarted(wctx, tasks.RunRef{TaskID: t.ID, Attempt: t.Attempt}, tasks.OutcomeInterrupted,
			&tasks.TaskError{Type: "interrupted", Message: "node " + n.cfg.Name + " drained"})
	}
}

// askLeaderRemove has the leader drop this node from raft's configuration.
func (n *Node) askLeaderRemove(ctx context.Context) error {
	for {
		if n.IsLeader() {
			return errors.New("this node leads again: nobody to remove it")
		}
		if addr := n.internode.LeaderAddr(); addr != "" {
			req, _ := n.internode.Request(ctx, http.MethodPost, addr, removePath(n.cfg.Name), nil)
			resp, err := n.internode.Client().Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// removePath is the leader's internode route that removes the named node from raft. The name is
// escaped: a node name may hold "/", "?" or "%", which would otherwise change the route.
func removePath(name string) string { return "/v1/internode/remove/" + url.PathEscape(name) }
