package worker

// SweepLogs deletes the local output of tasks the cluster has removed (retention), so task logs
// do not outlive their records. The node runs it every retention sweep interval.
func (w *Worker) SweepLogs() {
	logs := w.cfg.Executor.Logs
	ids, err := logs.Tasks()
	if err != nil {
		w.log.Warn("sweep task logs", "err", err)
		return
	}
	for _, id := range ids {
		if _, ok := w.cfg.FSM.Task(id); !ok {
			if err := logs.Delete(id); err != nil {
				w.log.Warn("delete task log", "task", id, "err", err)
			}
		}
	}
}
