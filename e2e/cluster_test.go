package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/client"
)

func TestProcessClusterExecStatusAndRestart(t *testing.T) {
	pc := startProcCluster(t, 3)

	for _, p := range pc.procs {
		out, errOut, code := pc.cli(p, "exec", "calc-square", "12")
		if code != 0 || strings.TrimSpace(out) != "144" {
			t.Fatalf("exec on %s: code %d out %q err %q", p.Name, code, out, errOut)
		}
	}
	out, _, code := pc.cli(pc.procs[1], "status")
	if code != 0 || strings.Count(out, "alive") != 3 || strings.Count(out, "leader") < 1 {
		t.Fatalf("status: code %d\n%s", code, out)
	}
	var cl client.Cluster
	out, _, _ = pc.cli(pc.procs[2], "status", "--json")
	if err := json.Unmarshal([]byte(out), &cl); err != nil || len(cl.Nodes) != 3 || cl.Leader == "" {
		t.Fatalf("status --json: %v %q", err, out)
	}

	// Kill a follower, restart it on its data dir: it rejoins and sees every task.
	victim := pc.procs[2]
	if cl.Leader == victim.Name {
		victim = pc.procs[1]
	}
	pc.kill(victim)
	ctx := context.Background()
	task, _, err := pc.procs[0].client().Submit(ctx, client.SubmitRequest{Type: "echo", Input: json.RawMessage(`{"while":"down"}`)})
	if err != nil {
		t.Fatal(err)
	}
	pc.restart(victim)
	pc.waitCluster(victim, 3)
	poll(t, "restarted node sees the task it missed", 30*time.Second, func() bool {
		got, err := victim.client().Get(ctx, task.ID)
		return err == nil && got.State == "succeeded"
	})
	out, _, code = pc.cli(victim, "exec", "calc-square", "7")
	if code != 0 || strings.TrimSpace(out) != "49" {
		t.Fatalf("exec after restart: %d %q", code, out)
	}
}
