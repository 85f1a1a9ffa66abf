package worker

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
func (w *Worker) checkLeave() error {
	alive := w.cfg.Alive()
	delete(alive, w.cfg.Name)
	if len(alive) == 0 {
		return fmt.Errorf("%w: %s is the last node of the cluster (use force to stop it anyway)", ErrLeaveRefused, w.cfg.Name)
	}
	cf := w.cfg.Raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return fmt.Errorf("read raft configuration: %w", err)
	}
	voters, aliveVoters, selfVoter := 0, 0, false
	name := w.cfg.ServerNames()
	for _, s := range cf.Configuration().Servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		if s.ID == w.cfg.RaftID {
			selfVoter = true
			continue
		}
		voters++
		if alive[name(s.ID)] {
			aliveVoters++
		}
	}
	// Non-voters are promoted as voters go, so count alive non-voters as future voters.
	spare := len(alive) - aliveVoters
	if selfVoter && aliveVoters+min(spare, 1) < voters/2+1 {
		return fmt.Errorf("%w: removing %s would leave %d of %d voters alive, below quorum (use force to stop it anyway)",
			ErrLeaveRefused, w.cfg.Name, aliveVoters, voters)
	}
	return nil
}

// Leave drains this node and removes it from the cluster: no new tasks land here, running tasks
// get up to the drain timeout to finish, the rest are handed back to run elsewhere, leadership
// moves away, the node leaves raft and gossip, and it shuts down. Without force, a leave that
// would remove the last node or break quorum is refused; with force it drains and stops anyway.
//
// Done is closed once the node has shut down.
func (w *Worker) Leave(ctx context.Context, force bool) error {
	if w.leaveClaimed() {
		return nil
	}
	if !w.cfg.Joined() {
		// Still looking for its cluster: no tasks, no raft membership, nobody to tell. Waiting on
		// a drain record that no leader will take would only delay the exit.
		if !w.claimLeave() {
			return nil
		}
		w.log.Info("stopping at once: this node never joined a cluster")
		go func() {
			w.shutdown()
			close(w.done)
		}()
		return nil
	}
	if err := w.checkLeave(); err != nil && !force {
		return err
	}
	if !w.claimLeave() {
		return nil // another leave, or a stop, started meanwhile
	}
	w.leaving.Store(true)
	// Record the drain before answering, so nothing new is placed here once the leave is accepted.
	log := w.log.With("phase", "leave")
	log.Info("draining: no new tasks will be placed here", "drain_timeout", w.cfg.DrainTimeout)
	deadline := time.Now().Add(w.cfg.DrainTimeout).UnixMilli()
	if err := w.cfg.Gossip.UpdateMeta(func(m *membership.Meta) { m.Draining, m.DrainDeadline = true, deadline }); err != nil {
		log.Warn("gossip draining flag", "err", err)
	}
	cctx, cancel := context.WithTimeout(ctx, proposeTimeout)
	if _, err := w.cfg.ProposeNode(cctx, &fsm.Command{Body: &fsm.Drain{Name: w.cfg.Name, Draining: true}}); err != nil {
		log.Warn("record drain", "err", err)
	}
	cancel()
	go func() {
		if err := w.leave(ctx, log); err != nil {
			w.log.Error("leave", "err", err)
		}
		close(w.done)
	}()
	return nil
}

// leaveClaimed reports whether a leave or a stop has started.
func (w *Worker) leaveClaimed() bool {
	w.leaveMu.Lock()
	defer w.leaveMu.Unlock()
	return w.leaveStarted
}

// Leaving reports whether this node has accepted a leave: from then on health says draining.
func (w *Worker) Leaving() bool { return w.leaving.Load() }

// claimLeave marks the leave started; false when a leave or a stop started first.
func (w *Worker) claimLeave() bool {
	w.leaveMu.Lock()
	defer w.leaveMu.Unlock()
	if w.leaveStarted {
		return false
	}
	w.leaveStarted = true
	return true
}

// Stop ends the node as a leave of a node that never joined does, unless a leave or a Stop
// started first: it shuts the node down, then closes Done. It returns once the node is down;
// a Leave called meanwhile waits for it, then does nothing.
func (w *Worker) Stop() {
	w.leaveMu.Lock()
	defer w.leaveMu.Unlock()
	if w.leaveStarted {
		return
	}
	w.leaveStarted = true
	w.shutdown()
	close(w.done)
}

// shutdown stops the node abruptly (Config.Shutdown), logging what failed.
func (w *Worker) shutdown() {
	if err := w.cfg.Shutdown(); err != nil {
		w.log.Warn("shutdown", "err", err)
	}
}

func (w *Worker) leave(ctx context.Context, log *slog.Logger) error {
	w.drainTasks(ctx, log)

	if w.isLeader() {
		log.Info("transferring leadership")
		if err := w.transferLeadership(); err != nil {
			log.Warn("leadership transfer", "err", err)
		}
	}
	// Held requests are answered while this node still follows raft, so a wait gets a current
	// record and its client can carry on elsewhere before the node leaves.
	w.Release("leaving the cluster")
	switch err := w.checkLeave(); {
	case w.isLeader():
		log.Warn("no other node could take leadership; staying in the raft configuration")
	case err != nil:
		log.Warn("staying in the raft configuration", "reason", err)
	default:
		cctx, cancel := context.WithTimeout(ctx, removeSelfTimeout)
		if err := w.askLeaderRemove(cctx); err != nil {
			log.Warn("removal from raft", "err", err)
		}
		cancel()
	}
	log.Info("leaving gossip")
	if err := w.cfg.Gossip.Leave(gossipLeaveTimeout); err != nil {
		log.Warn("gossip leave", "err", err)
	}
	log.Info("left the cluster")
	return w.cfg.Shutdown()
}

// transferLeadership asks raft to hand leadership to another voter, waiting at most a few
// election timeouts: raft's transfer has been seen to wait forever when the leader steps down
// meanwhile (hashicorp/raft#696), and a leave must end.
func (w *Worker) transferLeadership() error {
	done := make(chan error, 1)
	go func() { done <- w.cfg.Raft.LeadershipTransfer().Error() }()
	limit := 4*w.cfg.RaftElection + 2*time.Second
	select {
	case err := <-done:
		return err
	case <-time.After(limit):
		return fmt.Errorf("no answer from raft within %s; leaving anyway", limit)
	}
}

// drainTasks lets running tasks finish within the drain timeout, then hands the rest back.
func (w *Worker) drainTasks(ctx context.Context, log *slog.Logger) {
	deadline := time.Now().Add(w.cfg.DrainTimeout)
	var logged time.Time
	for {
		changed := w.cfg.FSM.Changed()
		running, held := w.exec.Running(), w.cfg.FSM.Active(w.cfg.Name)
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
	log.Warn("drain timeout: handing back tasks still running", "count", len(w.exec.Running()))
	w.exec.StopAll(tasks.StopDrain)
	wctx, cancel := context.WithTimeout(context.Background(), handBackTimeout)
	defer cancel()
	_ = w.exec.Wait(wctx)
	// Assignments that never started here go back too.
	for _, t := range w.cfg.FSM.Active(w.cfg.Name) {
		if t.BootID != w.cfg.BootID {
			continue
		}
		w.finishUnstarted(wctx, w.Reporter(), tasks.RunRef{TaskID: t.ID, Attempt: t.Attempt}, tasks.OutcomeInterrupted,
			&tasks.TaskError{Type: "interrupted", Message: "node " + w.cfg.Name + " drained"})
	}
}

// askLeaderRemove has the leader drop this node from raft's configuration.
func (w *Worker) askLeaderRemove(ctx context.Context) error {
	for {
		if w.isLeader() {
			return errors.New("this node leads again: nobody to remove it")
		}
		if addr := w.cfg.LeaderAddr(); addr != "" {
			req, _ := w.cfg.Request(ctx, http.MethodPost, addr, RemovePath(w.cfg.Name), nil)
			resp, err := w.cfg.Client.Do(req)
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

// RemovePath is the leader's internode route that removes the named node from raft. The name is
// escaped: a node name may hold "/", "?" or "%", which would otherwise change the route.
func RemovePath(name string) string { return "/v1/internode/remove/" + url.PathEscape(name) }

// isLeader reports whether raft on this node is the leader.
func (w *Worker) isLeader() bool { return w.cfg.Raft.State() == raft.Leader }
