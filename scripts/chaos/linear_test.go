package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/anishathalye/porcupine"

	"github.com/taskworker/taskworker/client"
)

// op is one operation of a hand-built history: [call, ret] in arbitrary units, ret < 0 for one
// that never answered.
func op(clientID int, call, ret int64, in linInput, out linOutput) porcupine.Operation {
	if ret < 0 {
		out, ret = linOutput{Unknown: true}, pending
	}
	return porcupine.Operation{ClientId: clientID, Input: in, Call: call, Output: out, Return: ret}
}

func submitOp(c int, call, ret int64, key, id string) porcupine.Operation {
	return op(c, call, ret, linInput{Kind: opSubmit, Key: key, Node: "n1"}, linOutput{ID: id})
}

func readOp(kind opKind, c int, call, ret int64, key, id string, out linOutput) porcupine.Operation {
	return op(c, call, ret, linInput{Kind: kind, Key: key, ID: id, Node: "n2"}, out)
}

func cancelOp(c int, call, ret int64, key, id string, out linOutput) porcupine.Operation {
	return op(c, call, ret, linInput{Kind: opCancel, Key: key, ID: id, Node: "n3"}, out)
}

var (
	missing   = linOutput{}
	running   = linOutput{Found: true, State: client.StateRunning}
	runningCR = linOutput{Found: true, State: client.StateRunning, CancelR: true}
	succeeded = linOutput{Found: true, State: client.StateSucceeded}
	cancelled = linOutput{Found: true, State: client.StateCancelled}
	finished  = linOutput{Code: "already_finished"}
)

// The model must pass the histories a correct cluster can give (concurrency, answers lost, a task
// finishing by itself), and catch each broken promise with a visualization written.
func TestLinearizabilityModel(t *testing.T) {
	cases := []struct {
		name  string
		ops   []porcupine.Operation
		legal bool
	}{
		{"submit, reads, wait", []porcupine.Operation{
			submitOp(0, 0, 10, "k", "A"),
			readOp(opGet, 1, 11, 12, "k", "A", running),
			readOp(opWait, 1, 13, 30, "k", "A", succeeded),
			readOp(opGet, 2, 31, 32, "k", "A", succeeded),
		}, true},
		{"a read concurrent with the submit may miss it", []porcupine.Operation{
			submitOp(0, 0, 10, "k", "A"),
			readOp(opGet, 1, 5, 6, "k", "A", missing),
		}, true},
		{"a submit retried after a lost answer: the first took effect", []porcupine.Operation{
			submitOp(0, 0, -1, "k", ""),
			readOp(opGet, 1, 5, 6, "k", "A", running),
			submitOp(0, 7, 9, "k", "A"),
		}, true},
		{"a cancel that answered 200 while pending: cancelled for good", []porcupine.Operation{
			submitOp(0, 0, 1, "k", "A"),
			cancelOp(0, 2, 3, "k", "A", cancelled),
			readOp(opGet, 1, 4, 5, "k", "A", cancelled),
		}, true},
		{"a cancel of a running task: it may still succeed", []porcupine.Operation{
			submitOp(0, 0, 1, "k", "A"),
			cancelOp(0, 2, 3, "k", "A", runningCR),
			readOp(opGet, 1, 4, 5, "k", "A", runningCR),
			readOp(opWait, 1, 6, 9, "k", "A", succeeded),
		}, true},
		{"a cancel too late: already finished, then a read shows it", []porcupine.Operation{
			submitOp(0, 0, 1, "k", "A"),
			cancelOp(0, 2, 3, "k", "A", finished),
			readOp(opGet, 1, 4, 5, "k", "A", succeeded),
		}, true},
		{"a cancel whose answer was lost took effect", []porcupine.Operation{
			submitOp(0, 0, 1, "k", "A"),
			cancelOp(0, 2, -1, "k", "A", linOutput{}),
			readOp(opGet, 1, 4, 5, "k", "A", cancelled),
		}, true},

		{"a read after an acknowledged submit misses it", []porcupine.Operation{
			submitOp(0, 0, 10, "k", "A"),
			readOp(opGet, 1, 11, 12, "k", "A", missing),
		}, false},
		{"a second submit of the key answers another task", []porcupine.Operation{
			submitOp(0, 0, 10, "k", "A"),
			submitOp(1, 11, 12, "k", "B"),
		}, false},
		{"a terminal task read back as running (a stale replica)", []porcupine.Operation{
			submitOp(0, 0, 1, "k", "A"),
			readOp(opWait, 0, 2, 5, "k", "A", succeeded),
			readOp(opGet, 1, 6, 7, "k", "A", running),
		}, false},
		{"a cancel that answered 200 undone: the flag gone", []porcupine.Operation{
			submitOp(0, 0, 1, "k", "A"),
			cancelOp(0, 2, 3, "k", "A", runningCR),
			readOp(opGet, 1, 4, 5, "k", "A", running),
		}, false},
		{"a task cancelled while pending later read as succeeded", []porcupine.Operation{
			submitOp(0, 0, 1, "k", "A"),
			cancelOp(0, 2, 3, "k", "A", cancelled),
			readOp(opGet, 1, 4, 5, "k", "A", succeeded),
		}, false},
		{"cancelled with no cancel sent", []porcupine.Operation{
			submitOp(0, 0, 1, "k", "A"),
			readOp(opGet, 1, 4, 5, "k", "A", cancelled),
		}, false},
		{"a task read as running after a cancel found it finished", []porcupine.Operation{
			submitOp(0, 0, 1, "k", "A"),
			cancelOp(0, 2, 3, "k", "A", finished),
			readOp(opGet, 1, 4, 5, "k", "A", running),
		}, false},
		{"a cancel answered not found after the submit", []porcupine.Operation{
			submitOp(0, 0, 1, "k", "A"),
			cancelOp(0, 2, 3, "k", "A", linOutput{Code: "not_found"}),
		}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Another key's operations, interleaved, change nothing: the check is per key.
			ops := append([]porcupine.Operation{
				submitOp(3, 0, 2, "other", "Z"),
				readOp(opGet, 4, 3, 4, "other", "Z", running),
			}, tc.ops...)
			dir := t.TempDir()
			v := checkLinear(ops, dir)
			if tc.legal {
				if v.Result != porcupine.Ok || v.Violation != "" {
					t.Fatalf("a linearizable history: %s %q", v.Result, v.Violation)
				}
				return
			}
			if v.Result != porcupine.Illegal || !strings.Contains(v.Violation, "not linearizable (keys k; k: [0-") {
				t.Fatalf("a history that is not linearizable passed: %s %q", v.Result, v.Violation)
			}
			b, err := os.ReadFile(filepath.Join(dir, "linearizability.html"))
			if err != nil || !strings.Contains(string(b), "<html") || v.VizPath != filepath.Join(dir, "linearizability.html") {
				t.Fatalf("visualization %q: %v", v.VizPath, err)
			}
		})
	}
}

// A recorded history answers pending operations after every other one, so that porcupine can
// place them anywhere after their call.
func TestHistoryRecordsPendingOperations(t *testing.T) {
	h := newHistory()
	c := h.invoke(0, linInput{Kind: opSubmit, Key: "k", Node: "n1"})
	c.ambiguous()
	g := h.invoke(1, linInput{Kind: opGet, Key: "k", ID: "A", Node: "n2"})
	g.done(running)
	ops := h.operations()
	if len(ops) != 2 || !ops[0].Output.(linOutput).Unknown || ops[0].Return <= ops[1].Return {
		t.Fatalf("pending operation %+v, answered %+v", ops[0], ops[1])
	}
	if v := checkLinear(ops, t.TempDir()); v.Result != porcupine.Ok || v.Pending != 1 || v.Keys != 1 {
		t.Fatalf("verdict %+v", v)
	}
}
