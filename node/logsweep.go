package node

// sweepLogs deletes the local output of tasks the cluster has removed (retention), so task logs
// do not outlive their records. The node runs it every retention sweep interval.
func (n *Node) sweepLogs() {
	ids, err := n.logs.Tasks()
	if err != nil {
		n.log.Warn("sweep task logs", "err", err)
		return
	}
	for _, id := range ids {
		if _, ok := n.fsm.Task(id); !ok {
			if err := n.logs.Delete(id); err != nil {
				n.log.Warn("delete task log", "task", id, "err", err)
			}
		}
	}
}
