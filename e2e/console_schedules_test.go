package e2e

import (
	"testing"

	"github.com/chromedp/chromedp"
)

// TestConsoleSchedulesPage creates a schedule from the console's form, then pauses, runs and
// deletes it with the row's buttons.
func TestConsoleSchedulesPage(t *testing.T) {
	chromiumPath(t) // skips before any cluster starts when there is no browser
	pc := startProcCluster(t, 1)
	b := newBrowser(t)
	via := pc.procs[0]
	base := "http://" + via.HTTP + "/ui/"

	b.run("open the schedules page", chromedp.Navigate(base+"#/schedules"))
	b.until("no schedules yet", `document.querySelector('#no-schedules') !== null`)
	eval[bool](b, `(() => {
		const set = (id, v) => { const e = document.querySelector(id); e.value = v; e.dispatchEvent(new Event('input', {bubbles: true})); };
		set('#schedule-name', 'sq'); set('#schedule-cron', '@every 1h'); set('#schedule-type', 'calc-square'); set('#schedule-input', '7');
		return true })()`)
	b.run("save", chromedp.Click(chromedp.CSS(`#schedule-create`)))
	b.until("the schedule listed with its next run", `document.querySelector('tr[data-schedule=sq]') !== null && !/—/.test(document.querySelector('tr[data-schedule=sq] td:nth-child(5)').textContent)`)
	b.screenshot("schedules")
	b.run("pause", chromedp.Click(chromedp.CSS(`tr[data-schedule=sq] [data-act=pause]`)))
	b.until("shown paused", `document.querySelector('tr[data-schedule=sq] [data-paused]') !== null && document.querySelector('tr[data-schedule=sq] [data-act=resume]') !== null`)
	b.run("run now", chromedp.Click(chromedp.CSS(`tr[data-schedule=sq] [data-act=trigger]`)))
	var tasks []struct {
		Schedule string `json:"schedule"`
	}
	poll(t, "the triggered task", uiTimeout, func() bool {
		apiCall(t, via.HTTP, "", "GET", "/v1/tasks?type=calc-square", nil, &tasks)
		return len(tasks) == 1 && tasks[0].Schedule == "sq"
	})
	eval[bool](b, `(() => { window.confirm = () => true; return true })()`)
	b.run("delete", chromedp.Click(chromedp.CSS(`tr[data-schedule=sq] [data-act=delete]`)))
	b.until("gone", `document.querySelector('#no-schedules') !== null`)
	b.noErrors("schedules page")
}
