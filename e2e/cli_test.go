package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/internal/localcluster"
)

// The binary's exit statuses and messages against real nodes: the build version in `version` and
// in every node's `status` row, an unknown command, an unreachable node, a dead node's load, and
// no leader once quorum is gone.
func TestProcessCLIVersionStatusAndExitCodes(t *testing.T) {
	pc := startProcCluster(t, 3)
	p0 := pc.procs[0]

	// version talks to no node, so it takes no --addr: run the binary itself.
	b, err := exec.Command(pc.c.Bin, "version").Output()
	want := "taskworker version " + localcluster.BuildVersion() + "\n"
	if err != nil || string(b) != want {
		t.Fatalf("version: %v, stdout %q; want %q", err, b, want)
	}
	version := strings.TrimSpace(strings.TrimPrefix(string(b), "taskworker version "))

	_, errOut, code := pc.cli(p0, "stauts")
	if code != 2 || !strings.Contains(errOut, `did you mean "status"?`) {
		t.Fatalf("unknown command: code %d stderr %q; want 2 and a suggestion", code, errOut)
	}
	_, errOut, code = pc.cli(p0, "exec", "--timeout", "5", "echo")
	if code != 2 || !strings.Contains(errOut, "--timeout needs a unit, e.g. 5s") {
		t.Fatalf("exec --timeout 5: code %d stderr %q", code, errOut)
	}

	var out string
	poll(t, "every node's row with version, uptime and lag", 30*time.Second, func() bool {
		out, _, code = pc.cli(p0, "status")
		rows := 0
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) == 13 && strings.HasPrefix(f[0], "n") && f[4] == "alive" &&
				f[8] == version && f[9] != "-" && f[12] != "-" {
				rows++
			}
		}
		return code == 0 && rows == 3
	})

	_, errOut, code = pc.cli(p0, "status", "--addr", "http://127.0.0.1:1")
	if code != 2 || !strings.Contains(errOut, "cannot reach the node at http://127.0.0.1:1") {
		t.Fatalf("status of an unreachable node: code %d stderr %q; want 2", code, errOut)
	}

	// A dead node shows - for its load; with two of three voters gone there is no leader: exit 1.
	victims := pc.procs[1:]
	pc.kill(victims[0])
	poll(t, "the dead node's load shown as -", 30*time.Second, func() bool {
		out, _, _ = pc.cli(p0, "status")
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) == 13 && f[0] == victims[0].Name {
				return f[4] == "dead" && f[6] == "-"
			}
		}
		return false
	})
	pc.kill(victims[1])
	poll(t, "status exits 1 for no leader", 30*time.Second, func() bool {
		_, errOut, code = pc.cli(p0, "status")
		return code == 1 && strings.Contains(errOut, "no leader")
	})
}
