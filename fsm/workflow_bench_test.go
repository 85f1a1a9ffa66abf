package fsm

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"
)

// benchWorkflow is a workflow of n steps (n-2 a multiple of 100, or close): a root, a fan-out to
// 100 chains, and a fan-in step depending on the 100 chains' last steps.
func benchWorkflow(id string, n int) Workflow {
	step := func(name string, deps ...string) WorkflowStep {
		return WorkflowStep{Name: name, Task: Submit{Type: "echo", Version: "v1", MaxAttempts: 3, Timeout: Duration(30 * time.Second),
			Input: json.RawMessage(`{"n": 1}`)}, DependsOn: deps}
	}
	w := Workflow{ID: id, Name: "bench", Steps: []WorkflowStep{step("root")}}
	var tails []string
	left := n - 2
	for b := range 100 {
		length := left / (100 - b)
		left -= length
		prev := "root"
		for k := range length {
			s := step(fmt.Sprintf("b%02d-%d", b, k), prev)
			if k > 0 {
				s.InputFrom = []string{prev}
			}
			w.Steps = append(w.Steps, s)
			prev = s.Name
		}
		tails = append(tails, prev)
	}
	join := step("join", tails...)
	join.InputFrom, join.InputObject = tails, true
	w.Steps = append(w.Steps, join)
	return w
}

// BenchmarkWorkflowLife applies the whole life of one workflow of 1,000 and of 10,000 steps
// (fan-out 100, chains, fan-in; the 10,000 also with its steps listed layer by layer, so that the
// steps finished first are all at the front of the record): the submit entry, then, round by round, one entry assigning
// every ready step's task and one entry per step reporting it succeeded, as separate reports
// arrive in a busy cluster. It reports the submit entry's encoded size, the time to apply it,
// and the apply time per step over the workflow's life.
func BenchmarkWorkflowLife(b *testing.B) {
	for _, c := range []struct {
		n       int
		byLayer bool
	}{{1000, false}, {10_000, false}, {10_000, true}} {
		n := c.n
		name := fmt.Sprintf("steps=%d", n)
		if c.byLayer {
			name += "/by-layer"
		}
		b.Run(name, func(b *testing.B) {
			w := benchWorkflow("wf", n)
			if err := CheckWorkflow(&w); err != nil || len(w.Steps) != n {
				b.Fatalf("%d steps: %v", len(w.Steps), err)
			}
			entry, err := Encode(&Command{Body: &WorkflowSubmit{Workflow: w}})
			if err != nil {
				b.Fatal(err)
			}
			// The steps by depth: all of a round's steps are ready once the round before succeeded.
			depth := map[string]int{}
			var rounds [][]Assign
			for _, st := range benchWorkflow("wf", n).Steps { // parents before their children
				d := 0
				for _, p := range st.DependsOn {
					d = max(d, depth[p]+1)
				}
				depth[st.Name] = d
				if d == len(rounds) {
					rounds = append(rounds, nil)
				}
				rounds[d] = append(rounds[d], Assign{TaskID: StepTaskID("wf", st.Name), Node: "n1", BootID: "b1"})
			}
			if c.byLayer { // the same graph, its steps listed layer by layer
				slices.SortStableFunc(w.Steps, func(a, b WorkflowStep) int { return cmp.Compare(depth[a.Name], depth[b.Name]) })
			}
			var submitTime time.Duration
			for b.Loop() {
				f := New()
				idx := uint64(0)
				now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
				apply := func(body Payload) {
					idx++
					now = now.Add(time.Millisecond)
					r := f.ApplyCommand(idx, &Command{Now: now, Body: body})
					if r.Err != nil {
						b.Fatal(r.Err)
					}
				}
				apply(&Register{Node: Node{Name: "n1", BootID: "b1", Capacity: 1 << 20, Types: []TypeInfo{{Type: "echo", Version: "v1"}}}})
				start := time.Now()
				apply(&WorkflowSubmit{Workflow: w})
				submitTime += time.Since(start)
				for _, ready := range rounds {
					apply(&AssignBatch{Items: ready})
					for _, a := range ready {
						apply(&ReportBatch{Items: []Report{{TaskID: a.TaskID, Attempt: 1, Node: "n1", BootID: "b1", Kind: ReportSucceeded, Result: json.RawMessage(`{"n": 2}`)}}})
					}
				}
				if got, _ := f.Workflow("wf"); got.State != WorkflowSucceeded {
					b.Fatalf("workflow %s", got.State)
				}
			}
			b.ReportMetric(float64(len(entry)), "submit-entry-bytes")
			b.ReportMetric(float64(submitTime.Microseconds())/float64(b.N), "submit-µs")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/step")
		})
	}
}
