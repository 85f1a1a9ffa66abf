package e2e

import (
	"fmt"
	"testing"

	"github.com/chromedp/chromedp"
)

// TestConsoleRetriesAFailedTaskAndPurges retries a failed task from its page (the same task
// runs again: a second attempt on its timeline) and purges the failed tasks from the Tasks page.
func TestConsoleRetriesAFailedTaskAndPurges(t *testing.T) {
	chromiumPath(t) // skips before any cluster starts when there is no browser
	pc := startProcCluster(t, 1)
	b := newBrowser(t)
	via := pc.procs[0]
	base := "http://" + via.HTTP + "/ui/"
	var failed, ok uiTask
	if code := apiCall(t, via.HTTP, "", "POST", "/v1/tasks?wait=30s", map[string]any{"type": "fail", "input": "boom", "max_attempts": 1}, &failed); code != 201 || failed.State != "failed" {
		t.Fatalf("submit fail: %d %+v", code, failed)
	}
	if code := apiCall(t, via.HTTP, "", "POST", "/v1/tasks?wait=30s", map[string]any{"type": "echo", "input": 1}, &ok); code != 201 || ok.State != "succeeded" {
		t.Fatalf("submit echo: %d %+v", code, ok)
	}

	b.run("open the failed task", chromedp.Navigate(base+"#/task/"+failed.ID))
	b.until("a retry button beside run again", `document.querySelector('#retry') !== null && document.querySelector('#run-again') !== null`)
	b.run("retry it", chromedp.Click(chromedp.CSS(`#retry`)))
	b.until("the same task failed again on a second attempt", `location.hash === '#/task/`+failed.ID+`' &&
		document.querySelectorAll('#attempts li.ev-failed').length === 2 && document.querySelector('.toolbar .badge').textContent === 'failed'`)
	b.screenshot("task-retried")

	b.run("open the succeeded task", chromedp.Navigate(base+"#/task/"+ok.ID))
	b.until("its page", `document.querySelector('.toolbar .badge') !== null && document.querySelector('.toolbar .badge').textContent === 'succeeded'`)
	if eval[bool](b, `document.querySelector('#retry') !== null`) {
		t.Error("a succeeded task offers Retry")
	}

	b.run("open the failed tab", chromedp.Navigate(base+"#/tasks?state=failed"))
	b.until("the failed task and a purge action", `document.querySelectorAll('table.tasks tr[data-task]').length === 1 && document.querySelector('#purge') !== null`)
	eval[bool](b, `(() => { window.confirm = () => true; document.querySelector('#purge').open = true; return true })()`)
	b.run("purge", chromedp.Click(chromedp.CSS(`#purge-go`)))
	b.until("one purged and the list empty", `/Purged 1 task\b/.test(document.querySelector('#purge-result')?.textContent || '') &&
		document.querySelectorAll('table.tasks tr[data-task]').length === 0`)
	b.screenshot("tasks-purged")
	if code := apiCall(t, via.HTTP, "", "GET", "/v1/tasks/"+ok.ID, nil, nil); code != 200 {
		t.Errorf("the succeeded task: GET %d after purging failed ones", code)
	}
	if code := apiCall(t, via.HTTP, "", "GET", fmt.Sprintf("/v1/tasks/%s", failed.ID), nil, nil); code != 404 {
		t.Errorf("the purged task: GET %d, want 404", code)
	}
	b.noErrors("retry and purge in the console")
}
