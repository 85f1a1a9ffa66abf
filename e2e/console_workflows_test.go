package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/taskworker/taskworker/api"
)

// TestConsoleWorkflowsPageDrawsTheGraphAndCancels submits two fan-out/fan-in workflows: one
// that finishes, one whose middle step sleeps. The list shows both with their progress; the
// first's page draws every step with its state and every dependency as an edge, and its result;
// the second's shows the sleeping step running and the fan-in step waiting, and its Cancel
// button cancels the workflow and the running step's task.
func TestConsoleWorkflowsPageDrawsTheGraphAndCancels(t *testing.T) {
	chromiumPath(t) // skips before any cluster starts when there is no browser
	pc := startProcCluster(t, 3)
	b := newBrowser(t)
	via := pc.procs[2]
	base := "http://" + via.HTTP + "/ui/"

	submit := func(body string) api.Workflow {
		t.Helper()
		var w api.Workflow
		if code := apiCall(t, via.HTTP, "", "POST", "/v1/workflows", json.RawMessage(body), &w); code != 201 || w.ID == "" {
			t.Fatalf("submit workflow: %d %+v", code, w)
		}
		return w
	}
	// a → b1, b2, b3 → j: 5 steps, 6 edges.
	done := submit(`{"name": "squares", "steps": [
		{"name": "a", "type": "calc-square", "input": 3},
		{"name": "b1", "type": "calc-square", "input_from": "a"},
		{"name": "b2", "type": "echo", "input_from": "a"},
		{"name": "b3", "type": "calc-square", "input_from": "a"},
		{"name": "j", "type": "echo", "input_from": ["b1", "b2", "b3"]}]}`)
	// a → b1, slow, b3 → j, with the slow step sleeping two minutes.
	held := submit(`{"name": "held", "steps": [
		{"name": "a", "type": "calc-square", "input": 2},
		{"name": "b1", "type": "calc-square", "input_from": "a"},
		{"name": "slow", "type": "sleep", "depends_on": ["a"], "input": {"ms": 120000}, "timeout": "300s"},
		{"name": "b3", "type": "echo", "input_from": "a"},
		{"name": "j", "type": "echo", "input_from": ["b1", "slow", "b3"]}]}`)

	b.run("open the workflows page", chromedp.Navigate(base+"#/workflows"))
	b.until("the finished workflow listed with 5 of 5 steps done", fmt.Sprintf(`(() => {
		const r = document.querySelector('#workflows tr[data-workflow=%q]');
		return r !== null && r.dataset.state === 'succeeded' && /5 \/ 5/.test(r.querySelector('td.progress').textContent) })()`, done.ID))
	b.until("the held workflow listed running with 3 of 5 steps done", fmt.Sprintf(`(() => {
		const r = document.querySelector('#workflows tr[data-workflow=%q]');
		return r !== null && r.dataset.state === 'running' && /3 \/ 5/.test(r.querySelector('td.progress').textContent) })()`, held.ID))
	order := eval[[]string](b, `[...document.querySelectorAll('#workflows tr[data-workflow]')].map((r) => r.dataset.workflow)`)
	if len(order) != 2 || order[0] != held.ID || order[1] != done.ID {
		t.Errorf("the list shows %v, want the newest first: %s, %s", order, held.ID, done.ID)
	}
	b.screenshot("workflows")

	b.run("open the finished workflow", chromedp.Click(chromedp.CSS(fmt.Sprintf(`#workflows tr[data-workflow=%q] a`, done.ID))))
	b.until("its graph", fmt.Sprintf(`location.hash === '#/workflow/%s' && document.querySelectorAll('#dag .dag-step').length === 5`, done.ID))
	b.until("every step succeeded", `document.querySelectorAll('#dag .dag-step[data-state=succeeded]').length === 5`)
	type edge struct{ From, To string }
	edges := eval[[]edge](b, `[...document.querySelectorAll('#dag .dag-edge')].map((e) => ({From: e.dataset.from, To: e.dataset.to}))`)
	want := map[edge]bool{{"a", "b1"}: true, {"a", "b2"}: true, {"a", "b3"}: true, {"b1", "j"}: true, {"b2", "j"}: true, {"b3", "j"}: true}
	if len(edges) != len(want) {
		t.Errorf("the graph draws %d edges %v, want %d", len(edges), edges, len(want))
	}
	for _, e := range edges {
		if !want[e] {
			t.Errorf("the graph draws an edge %s → %s that is not a dependency", e.From, e.To)
		}
	}
	// Columns by depth: a, then b1..b3 one column right, then j; boxes link to their tasks.
	type box struct {
		X    float64
		Link string
		Text string
	}
	boxes := eval[map[string]box](b, `Object.fromEntries([...document.querySelectorAll('#dag .dag-step')].map((g) => [g.dataset.step, {
		X: Number(g.querySelector('rect').getAttribute('x')), Link: (g.querySelector('a') || {getAttribute: () => ''}).getAttribute('href'),
		Text: g.textContent }]))`)
	if !(boxes["a"].X < boxes["b1"].X && boxes["b1"].X == boxes["b2"].X && boxes["b2"].X == boxes["b3"].X && boxes["b3"].X < boxes["j"].X) {
		t.Errorf("the boxes are not in columns by depth: %+v", boxes)
	}
	for name, bx := range boxes {
		if bx.Link != "#/task/"+done.ID+"."+name || !strings.Contains(bx.Text, name) {
			t.Errorf("step %s's box links to %q and reads %q", name, bx.Link, bx.Text)
		}
	}
	if !strings.Contains(boxes["b2"].Text, "echo") || !strings.Contains(boxes["a"].Text, "calc-square") {
		t.Errorf("the boxes do not name their types: %+v", boxes)
	}
	result := eval[string](b, `document.querySelector('#workflow-result').textContent.replace(/\s+/g, '')`)
	if result != `{"b1":81,"b2":9,"b3":81}` {
		t.Errorf("the page shows the result %s", result)
	}
	if n := eval[int](b, `document.querySelectorAll('#cancel-workflow').length`); n != 0 {
		t.Errorf("a finished workflow offers %d cancel buttons", n)
	}
	b.screenshot("workflow")
	b.run("follow a step's box to its task", chromedp.Click(chromedp.CSS(`#dag .dag-step[data-step=j] a`)))
	b.until("the fan-in step's task", fmt.Sprintf(`document.querySelector('#task-id') !== null && document.querySelector('#task-id').textContent === %q`, done.ID+".j"))

	b.run("open the held workflow", chromedp.Navigate(base+"#/workflow/"+held.ID))
	b.until("the slow step running, the fan-in waiting", `(() => {
		const st = (n) => { const g = document.querySelector('#dag .dag-step[data-step=' + n + ']'); return g && g.dataset.state };
		return st('a') === 'succeeded' && st('b1') === 'succeeded' && st('b3') === 'succeeded' && st('slow') === 'running' && st('j') === 'waiting'
			&& document.querySelectorAll('#dag .dag-edge').length === 6 && document.querySelector('#dag .dag-step[data-step=j] a') === null })()`)
	b.screenshot("workflow-running")
	eval[bool](b, `(() => { window.confirm = () => true; return true })()`)
	b.run("cancel", chromedp.Click(chromedp.CSS(`#cancel-workflow`)))
	b.until("the workflow cancelled, its unfinished steps too", `(() => {
		const st = (n) => document.querySelector('#dag .dag-step[data-step=' + n + ']').dataset.state;
		return document.querySelector('#workflow-state .badge').textContent === 'cancelled' && st('slow') === 'cancelled' && st('j') === 'cancelled'
			&& st('a') === 'succeeded' && document.querySelector('#cancel-workflow') === null })()`)
	var w api.Workflow
	if code := apiCall(t, via.HTTP, "", "GET", "/v1/workflows/"+held.ID, nil, &w); code != 200 || w.State != api.WorkflowCancelled || w.StepsDone != 5 {
		t.Errorf("after the console's cancel the workflow is %d %s, %d steps done", code, w.State, w.StepsDone)
	}
	var slow uiTask
	poll(t, "the slow step's task cancelled", uiTimeout, func() bool {
		return apiCall(t, via.HTTP, "", "GET", "/v1/tasks/"+held.ID+".slow", nil, &slow) == 200 && slow.State == "cancelled"
	})

	// A 1,000-step workflow (fan-out 100, fan-in) is drawn whole: a box per step, an edge per
	// dependency, a column per depth (root, 9 sleeps, the branches' last echoes, join: 12).
	req, _ := bigWorkflow(60_000)
	big, err := via.client().SubmitWorkflow(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	edges = nil
	deps := 0
	for _, s := range req.Steps {
		deps += len(s.DependsOn) + len(s.InputFrom.Sources)
	}
	b.run("open the big workflow", chromedp.Navigate(base+"#/workflow/"+big.ID))
	b.until("1,000 boxes and every edge", fmt.Sprintf(`document.querySelectorAll('#dag .dag-step').length === 1000 && document.querySelectorAll('#dag .dag-edge').length === %d`, deps))
	columns := eval[int](b, `new Set([...document.querySelectorAll('#dag .dag-step rect')].map((r) => r.getAttribute('x'))).size`)
	if columns != 12 {
		t.Errorf("the 1,000-step graph has %d columns, want 12", columns)
	}
	b.screenshot("workflow-big")
	if _, err := via.client().CancelWorkflow(context.Background(), big.ID); err != nil {
		t.Error(err)
	}
	b.noErrors("workflows pages")
}
