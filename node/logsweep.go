package node

import (
	"context"
	"time"

	"github.com/taskworker/taskworker/scheduler"
)

// logSweepLoop deletes the local output of tasks the cluster has removed (retention), so task
// logs do not outlive their records.
func (n *Node) logSweepLoop(ctx context.Context) {
	tick := time.NewTicker(scheduler.GCInterval(n.cfg.Retention))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		ids, err := n.logs.Tasks()
		if err != nil {
			n.log.Warn("sweep task logs", "err", err)
			continue
		}
		for _, id := range ids {
			if _, ok := n.fsm.Task(id); !ok {
				if err := n.logs.Delete(id); err != nil {
					n.log.Warn("delete task log", "task", id, "err", err)
				}
			}
		}
	}
}
