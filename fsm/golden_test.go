package fsm

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/taskworker/taskworker/internal/acl"
)

// updateGolden rewrites fsm/testdata/golden.* from the code under test. Do it only when the
// snapshot format or the digest changes on purpose: replicas of other releases read these bytes.
var updateGolden = flag.Bool("update-golden", false, "rewrite fsm/testdata/golden.snapshot and golden.digest")

// goldenFSM builds, by commands only, a state in which every table is non-empty: tasks (live
// and finished, hence frozen), nodes (one draining), idempotency keys, a unique lock, a queue's
// settings and a type limit, a schedule and a task it fired, ACL policies, tokens and the
// bootstrap flag, the join secret, management hash and gossip keyring, and a workflow part run.
func goldenFSM(t *testing.T) *FSM {
	t.Helper()
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 4))
	h.must(registerCmd("n2", "b2", 2))
	h.must(drainCmd("n2", true))

	idem := sub("g-idem", "echo")
	idem.IdempotencyKey = "key-1"
	idem.Input = json.RawMessage(`{"x":1}`)
	uniq := sub("g-unique", "echo")
	uniq.UniqueKey, uniq.UniqueFor = "only-one", Duration(time.Hour)
	later := sub("g-later", "echo")
	runAt := t0.Add(24 * time.Hour)
	later.RunAt = &runAt
	queued := sub("g-queued", "echo")
	queued.Queue, queued.Priority, queued.SubmittedBy = "q1", 3, "alice"
	h.must(submitCmd(sub("g-done", "echo"), sub("g-failed", "echo"), idem, uniq, later, queued))

	h.must(assignCmd("g-done", "n1", "b1"))
	h.must(reportCmd(rep("g-done", 1, "n1", "b1", ReportStarted)))
	h.must(&Command{Body: &ReportBatch{Items: []Report{{TaskID: "g-done", Attempt: 1, Node: "n1", BootID: "b1",
		Kind: ReportSucceeded, Result: json.RawMessage(`{"ok":true}`)}}}})
	h.must(assignCmd("g-failed", "n1", "b1"))
	h.must(&Command{Body: &ReportBatch{Items: []Report{{TaskID: "g-failed", Attempt: 1, Node: "n1", BootID: "b1",
		Kind: ReportFailed, Error: &TaskError{Type: "boom", Message: "no", Final: true}}}}})
	h.must(assignCmd("g-idem", "n1", "b1"))

	h.must(&Command{Body: &QueueSet{Name: "q1", Limit: ptr(2), Paused: ptr(true)}})
	h.must(&Command{Body: &TypeLimitSet{Type: "echo", Limit: 3}})

	h.must(&Command{Body: &SchedulePut{Schedule: Schedule{Name: "nightly", Spec: "0 3 * * *", Type: "echo",
		Input: json.RawMessage(`{}`), MaxAttempts: 2, Overlap: OverlapBufferOne, CatchUp: 1, SubmittedBy: "bob"}}})
	h.must(&Command{Body: &ScheduleFire{Name: "nightly", Tick: t0.Add(time.Hour), TaskID: "g-fired"}})

	boot := acl.Token{AccessorID: "00000000-0000-4000-8000-000000000001", SecretHash: acl.HashSecret("boot"),
		Description: "bootstrap", Management: true}
	team := acl.Token{AccessorID: "00000000-0000-4000-8000-000000000002", SecretHash: acl.HashSecret("team"),
		Description: "team", Policies: []string{"reports"}}
	h.must(&Command{Body: &ACLBootstrap{Token: boot}})
	h.must(&Command{Body: &ACLPolicySet{Policy: mustPolicy(t, `{"name": "reports", "rules": [{"task_type": "report-*", "capabilities": ["submit", "read"]}]}`)}})
	h.must(&Command{Body: &ACLTokenCreate{Token: team, TTL: Duration(time.Hour)}})

	h.must(&Command{Body: &JoinSecret{Secret: HashSecret("join")}})
	h.must(&Command{Body: &Management{Hash: HashSecret("manage")}})
	h.must(&Command{Body: &KeyringOp{Op: KeyInstall, Key: "a2V5LW9uZQ=="}})
	h.must(&Command{Body: &KeyringOp{Op: KeyInstall, Key: "a2V5LXR3bw=="}})

	next := wfStep("next", "first")
	next.InputFrom = []string{"first#/v"}
	h.must(wfCmd("g-wf", OnFailureContinue, wfStep("first"), next, wfStep("other")))
	h.run(StepTaskID("g-wf", "first"), `{"v":[1]}`)
	return h.f
}

func goldenSnapshot(t *testing.T, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	var sink digestSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	return sink.Bytes()
}

// The snapshot's bytes and the digest of a state with every table in use are those of the
// release that wrote testdata/golden.*: replicas of that release restore this build's snapshots,
// this build restores theirs, and the two agree on digests across a rolling upgrade.
func TestSnapshotAndDigestMatchTheGoldenFiles(t *testing.T) {
	f := goldenFSM(t)
	snap := goldenSnapshot(t, f)
	_, sum := f.Digest()
	snapPath, sumPath := filepath.Join("testdata", "golden.snapshot"), filepath.Join("testdata", "golden.digest")
	if *updateGolden {
		if err := os.WriteFile(snapPath, snap, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(sumPath, []byte(sum+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	wantSnap, err := os.ReadFile(snapPath)
	if err != nil {
		t.Fatal(err)
	}
	wantSum, err := os.ReadFile(sumPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snap, wantSnap) {
		t.Errorf("snapshot is %d bytes, differs from %s (%d bytes)", len(snap), snapPath, len(wantSnap))
	}
	if sum+"\n" != string(wantSum) {
		t.Errorf("digest %s, %s holds %s", sum, sumPath, wantSum)
	}

	// The golden snapshot restores to the same state: same digest, and it snapshots to itself.
	g := New()
	if err := g.Restore(io.NopCloser(bytes.NewReader(wantSnap))); err != nil {
		t.Fatal(err)
	}
	if _, got := g.Digest(); got+"\n" != string(wantSum) {
		t.Errorf("restored golden snapshot: digest %s, want %s", got, wantSum)
	}
	if g.once.len() != 0 { // the golden snapshot has no once section (fsm/once.go)
		t.Errorf("restored golden snapshot holds %d request IDs", g.once.len())
	}
	if again := goldenSnapshot(t, g); !bytes.Equal(again, wantSnap) {
		t.Errorf("restored golden snapshot snapshots to %d different bytes", len(again))
	}
	for name, empty := range map[string]bool{
		"tasks": f.tasks.all.Len() == 0, "nodes": len(f.nodes) == 0, "idempotency": len(f.tasks.idem) == 0,
		"unique": f.unique.len() == 0, "queues": f.queues.zero(), "schedules": len(f.schedules) == 0,
		"acl": len(f.acl.State().Tokens) == 0, "security": f.security.zero(), "workflows": len(f.workflows.byID) == 0,
	} {
		if empty {
			t.Errorf("golden state has no %s: the test would not cover its section", name)
		}
	}
}
