package e2e

import (
	"os/exec"
	"syscall"
	"testing"
)

// workerProc is an SDK worker process a test started (the Python and Node.js worker suites).
type workerProc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process exited and its output was read
	err    error         // cmd.Wait's answer, once exited is closed
}

// startWorkerProc starts cmd as the worker name. outputDone, when set, returns once the
// process's output has been read to its end (cmd.Wait closes the pipes). When the test ends the
// process is resumed (a stopped process dies of SIGKILL too, but resume it anyway) and killed,
// and output() is logged if the test failed.
func startWorkerProc(t *testing.T, name string, cmd *exec.Cmd, outputDone func(), output func() string) *workerProc {
	t.Helper()
	w := &workerProc{name: name, cmd: cmd, exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start worker %s: %v", name, err)
	}
	go func() {
		if outputDone != nil {
			outputDone()
		}
		w.err = cmd.Wait()
		close(w.exited)
	}()
	t.Cleanup(func() {
		if w.running() {
			_ = cmd.Process.Signal(syscall.SIGCONT)
			_ = cmd.Process.Kill()
		}
		<-w.exited
		if t.Failed() {
			t.Logf("--- output of worker %s ---\n%s", name, output())
		}
	})
	return w
}

func (w *workerProc) running() bool {
	select {
	case <-w.exited:
		return false
	default:
		return true
	}
}

func (w *workerProc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := w.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s to worker %s: %v", sig, w.name, err)
	}
}
