package fsm

import (
	"fmt"
	"reflect"
	"testing"
)

// observed installs an observer on h that renders each transition as "kind type node wait/ran".
func observed(h *harness) *[]string {
	var got []string
	h.f.SetObserver(func(_ uint64, ts []Transition) {
		for _, tr := range ts {
			s := fmt.Sprintf("%s %s %s", tr.Kind, tr.Type, tr.Node)
			if tr.Kind == KindStarted {
				s += " waited=" + tr.Waited.String()
			}
			if tr.HasRun {
				s += " ran=" + tr.Ran.String()
			}
			got = append(got, s)
		}
	})
	return &got
}

func TestObserverSeesEachTransitionOnce(t *testing.T) {
	fail := func(id string, attempt int) Report {
		r := rep(id, attempt, "n1", "b1", ReportFailed)
		r.Error = &TaskError{Message: "boom"}
		return r
	}
	// Each command is applied one second after the previous one (harness.apply).
	tests := []struct {
		name string
		cmds []*Command
		want []string
	}{
		{"succeeds", []*Command{
			submitCmd(sub("a", "echo")), assignCmd("a", "n1", "b1"),
			reportCmd(rep("a", 1, "n1", "b1", ReportStarted)), reportCmd(rep("a", 1, "n1", "b1", ReportSucceeded)),
		}, []string{"submitted echo ", "started echo n1 waited=2s", "succeeded echo n1 ran=1s"}},
		{"retried then failed", []*Command{
			submitCmd(Submit{ID: "a", Type: "fail", MaxAttempts: 2}), assignCmd("a", "n1", "b1"),
			reportCmd(rep("a", 1, "n1", "b1", ReportStarted)), reportCmd(fail("a", 1)),
			assignCmd("a", "n1", "b1"), reportCmd(rep("a", 2, "n1", "b1", ReportStarted)), reportCmd(fail("a", 2)),
		}, []string{"submitted fail ", "started fail n1 waited=2s", "retried fail n1 ran=1s",
			"started fail n1 waited=2s", "failed fail n1 ran=1s"}},
		{"node down interrupts", []*Command{
			submitCmd(sub("a", "echo")), assignCmd("a", "n1", "b1"),
			reportCmd(rep("a", 1, "n1", "b1", ReportStarted)), downCmd("n1", false),
		}, []string{"submitted echo ", "started echo n1 waited=2s", "interrupted echo n1 ran=1s"}},
		{"assigned but never started, then down", []*Command{
			submitCmd(sub("a", "echo")), assignCmd("a", "n1", "b1"), downCmd("n1", false),
		}, []string{"submitted echo ", "interrupted echo n1"}},
		{"cancel pending", []*Command{
			submitCmd(sub("a", "echo")), cancelCmd("a"),
		}, []string{"submitted echo ", "cancelled echo "}},
		{"cancel running then reported cancelled", []*Command{
			submitCmd(sub("a", "echo")), assignCmd("a", "n1", "b1"),
			reportCmd(rep("a", 1, "n1", "b1", ReportStarted)), cancelCmd("a"), reportCmd(rep("a", 1, "n1", "b1", ReportCancelled)),
		}, []string{"submitted echo ", "started echo n1 waited=2s", "cancelled echo n1 ran=2s"}},
		{"cancel requested then interrupted", []*Command{
			submitCmd(sub("a", "echo")), assignCmd("a", "n1", "b1"),
			reportCmd(rep("a", 1, "n1", "b1", ReportStarted)), cancelCmd("a"), downCmd("n1", false),
		}, []string{"submitted echo ", "started echo n1 waited=2s", "interrupted echo n1 ran=2s", "cancelled echo n1"}},
		{"stale and duplicate reports are not transitions", []*Command{
			submitCmd(sub("a", "echo")), assignCmd("a", "n1", "b1"),
			reportCmd(rep("a", 1, "n1", "b1", ReportStarted)), reportCmd(rep("a", 1, "n1", "b1", ReportStarted)),
			reportCmd(rep("a", 7, "n1", "b1", ReportSucceeded)), submitCmd(sub("a", "echo")),
		}, []string{"submitted echo ", "started echo n1 waited=2s"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			got := observed(h)
			h.must(registerCmd("n1", "b1", 4))
			for _, c := range tc.cmds {
				h.apply(c)
			}
			if !reflect.DeepEqual(*got, tc.want) {
				t.Fatalf("transitions:\n got %q\nwant %q", *got, tc.want)
			}
		})
	}
}

// The observer is a side channel: a replica with one must reach the same state as one without.
func TestObserverDoesNotChangeState(t *testing.T) {
	plain, watched := newHarness(t), newHarness(t)
	observed(watched)
	for _, h := range []*harness{plain, watched} {
		h.must(registerCmd("n1", "b1", 4))
		h.must(submitCmd(sub("a", "echo"), sub("b", "echo")))
		h.must(assignCmd("a", "n1", "b1"))
		h.must(reportCmd(rep("a", 1, "n1", "b1", ReportStarted)))
		h.must(downCmd("n1", false))
	}
	_, a := plain.f.Digest()
	_, b := watched.f.Digest()
	if a != b {
		t.Fatalf("digest with observer %v, without %v", b, a)
	}
}

func TestPendingByTypeCountsOnlyPending(t *testing.T) {
	h := newHarness(t)
	h.must(registerCmd("n1", "b1", 4))
	h.must(submitCmd(sub("a", "echo"), sub("b", "echo"), sub("c", "fail"), sub("d", "fail")))
	h.must(assignCmd("a", "n1", "b1"))
	h.must(cancelCmd("c"))
	if got, want := h.f.PendingByType(), map[string]int{"echo": 1, "fail": 1}; !reflect.DeepEqual(got, want) {
		t.Fatalf("PendingByType = %v, want %v", got, want)
	}
}
