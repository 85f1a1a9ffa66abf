package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/taskworker/taskworker/api"
)

// The web console's tests drive a headless Chromium (Debian's chromium package) with chromedp
// against real 3-node clusters. Without a browser they skip, unless TASKWORKER_REQUIRE_BROWSER=1
// (CI) makes that a failure. Screenshots of every page go to $TASKWORKER_SCREENSHOTS (the README
// links those of docs/screenshots, made with TASKWORKER_SCREENSHOTS=../docs/screenshots), else
// to the test's temporary directory.

// uiTimeout bounds every wait for the page; generous, as the machines running tests are shared.
const uiTimeout = 90 * time.Second

// browser is one headless Chromium tab and the console errors and exceptions it reported.
type browser struct {
	t    *testing.T
	ctx  context.Context
	mu   sync.Mutex
	errs []string
	shot string // screenshot directory
}

func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("TASKWORKER_REQUIRE_BROWSER") == "1" {
		t.Fatal("TASKWORKER_REQUIRE_BROWSER=1 but no chromium in PATH (apt-get install -y chromium)")
	}
	t.Skip("no chromium in PATH: the console's browser tests need it (apt-get install -y chromium)")
	return ""
}

// browserStarts is how many times newBrowser launches Chromium before it gives up. A launch
// can fail for reasons of the machine, not of the console: CI once saw Chromium crash before it
// listened (its crash handler's output, then EOF), with the same binary and flags that started
// for every other test of the run. A failed launch is logged with what the browser printed.
const browserStarts = 3

func newBrowser(t *testing.T) *browser {
	t.Helper()
	path := chromiumPath(t)
	var ctx context.Context
	for attempt := 1; ; attempt++ {
		c, err := startBrowser(t, path)
		if err == nil {
			ctx = c
			break
		}
		if attempt == browserStarts {
			t.Fatalf("start chromium (%d attempts): %v", attempt, err)
		}
		t.Logf("start chromium, attempt %d of %d: %v", attempt, browserStarts, err)
	}
	b := &browser{t: t, ctx: ctx, shot: os.Getenv("TASKWORKER_SCREENSHOTS")}
	if b.shot == "" {
		b.shot = t.TempDir()
	}
	if err := os.MkdirAll(b.shot, 0o755); err != nil {
		t.Fatal(err)
	}
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			// Network answers the page handles (a 401 before signing in, acl_disabled) are not
			// errors of the page; CSP refusals (source "security") and script errors are.
			if (m.Type == chromedp.ConsoleError || m.IsException()) && m.Source != "network" {
				b.mu.Lock()
				b.errs = append(b.errs, m.String())
				b.mu.Unlock()
			}
		}
	}()
	return b
}

// startBrowser launches one Chromium with its own profile and returns the context of its first
// tab; on failure it has already stopped what it started.
func startBrowser(t *testing.T, path string) (context.Context, error) {
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1280, 800),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	stop := func() {
		cancelCtx()
		cancelAlloc()
	}
	// The first run starts the browser; it must not carry a deadline (that would end the browser).
	if err := chromedp.Do(ctx); err != nil {
		stop()
		return nil, err
	}
	t.Cleanup(stop)
	return ctx, nil
}

// run runs actions in the tab with the test's deadline.
func (b *browser) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, uiTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("%s: %v (console errors so far: %v)", what, err, b.errors())
	}
}

// until polls the page until the JavaScript expression is truthy.
func (b *browser) until(what, expr string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, uiTimeout+5*time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingTimeout(uiTimeout), chromedp.WithPollingInterval(100*time.Millisecond)))
	if err != nil {
		text, _ := evalIn[string](b.ctx, `document.body ? document.body.innerText.slice(0, 2000) : ''`)
		b.t.Fatalf("waiting for %s: %v\npage text:\n%s\nconsole errors: %v", what, err, text, b.errors())
	}
}

func evalIn[T any](ctx context.Context, expr string) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, uiTimeout)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](expr))
}

// eval returns the value of a JavaScript expression.
func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	v, err := evalIn[T](b.ctx, expr)
	if err != nil {
		b.t.Fatalf("evaluating %s: %v", expr, err)
	}
	return v
}

func (b *browser) errors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errs...)
}

// noErrors fails the test when the page reported any console error or exception so far.
func (b *browser) noErrors(page string) {
	b.t.Helper()
	if errs := b.errors(); len(errs) > 0 {
		b.t.Errorf("%s: the page reported errors:\n%s", page, strings.Join(errs, "\n"))
	}
}

// screenshot writes the whole page as <name>.png.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, uiTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	file := filepath.Join(b.shot, name+".png")
	if err := os.WriteFile(file, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s", file)
}

// apiCall sends a JSON request to a node with an optional bearer token.
func apiCall(t *testing.T, addr, token, method, path string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+addr+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, data, err)
		}
	}
	return resp.StatusCode
}

type uiTask struct {
	ID    string `json:"id"`
	State string `json:"state"`
	Node  string `json:"node"`
}

func tasksFile(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs("../tasks/testdata/example-tasks.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConsolePagesRenderAndFollowASubmittedTask opens every page of the console through a node
// of a 3-node cluster, submits a task from the form and watches its output arrive while it runs.
func TestConsolePagesRenderAndFollowASubmittedTask(t *testing.T) {
	chromiumPath(t) // skips before any cluster starts when there is no browser
	pc := startProcCluster(t, 3, "--tasks-file", tasksFile(t))
	b := newBrowser(t)
	via := pc.procs[1] // any node serves the console; this one need not lead
	base := "http://" + via.HTTP + "/ui/"

	// Some finished work, so that the lists, the tree and the charts have something to show.
	for _, typ := range []string{"echo", "calc-square", "fail"} {
		input := map[string]any{"echo": map[string]any{"hello": "world"}, "calc-square": 12, "fail": "boom"}[typ]
		var task uiTask
		if code := apiCall(t, via.HTTP, "", "POST", "/v1/tasks?wait=30s", map[string]any{"type": typ, "input": input, "max_attempts": 1}, &task); code != 201 {
			t.Fatalf("submit %s: %d", typ, code)
		}
	}

	// A worker speaking the protocol, polling all along, on the node that serves the page.
	startProtoWorker(t, via.HTTP, "", api.WorkerRegistration{Name: "ui-py", Capacity: 2, Labels: map[string]string{"zone": "a"},
		Types: []api.WorkerType{{Type: "py-upper", Version: "1", Description: "upper-cases text"}}})

	b.run("open the cluster page", chromedp.Navigate(base+"#/cluster"))
	b.until("three node cards, all alive", `document.querySelectorAll('.card[data-state=alive]').length === 3`)
	b.until("a leader named", `document.querySelector('#leader') && document.querySelector('#leader').textContent !== 'none'`)
	b.until("the worker's row", `document.querySelector('#workers tr[data-worker="ui-py"][data-state=up]') !== null`)
	cells := eval[[]string](b, `[...document.querySelectorAll('#workers tr[data-worker="ui-py"] td')].map((td) => td.textContent.trim())`)
	if want := []string{"ui-py", via.Name, "up", "no", "0 / 2", "py-upper@1", "zone=a"}; !slices.Equal(cells, want) {
		t.Errorf("the worker's row shows %q, want %q", cells, want)
	}
	b.screenshot("cluster")

	b.run("open the tasks page", chromedp.Navigate(base+"#/tasks"))
	b.until("the three tasks listed", `document.querySelectorAll('table.tasks tr[data-task]').length >= 3`)
	b.until("state tabs with counts", `/succeeded \d/.test(document.querySelector('[data-tab=succeeded]').textContent)`)
	b.screenshot("tasks")
	b.run("open the failed tab", chromedp.Click(chromedp.CSS(`[data-tab=failed]`)))
	b.until("only the failed task", `location.hash === '#/tasks?state=failed' && document.querySelectorAll('table.tasks tr[data-task]').length === 1`)

	b.run("open the throughput page", chromedp.Navigate(base+"#/throughput"))
	b.until("two charts drawn", `document.querySelectorAll('.chart canvas').length === 2`)
	b.screenshot("throughput")

	// Submit from the form: a countdown prints a line every 0.2 s for about 4 s.
	b.run("open the submit page", chromedp.Navigate(base+"#/submit"))
	b.until("the type picker", `document.querySelector('#type option[value="countdown@1"]') !== null`)
	// The picker is drawn again when the cluster's types change (the worker above comes and goes),
	// which resets the choice: choose again until the choice holds.
	b.until("the example input prefilled", `(() => { const s = document.querySelector('#type');
		if (s.value !== 'countdown@1') { s.value = 'countdown@1'; s.dispatchEvent(new Event('change', {bubbles: true})); return false }
		return document.querySelector('#input').value.trim() === '5' && /Counts down/.test(document.querySelector('#type-desc').textContent) })()`)
	eval[bool](b, `(() => { const a = document.querySelector('#input'); a.value = '{"oops"'; a.dispatchEvent(new Event('input', {bubbles: true})); return true })()`)
	b.until("invalid JSON flagged", `/not valid JSON/.test(document.querySelector('#input-check').textContent) && document.querySelector('#submit').disabled`)
	eval[bool](b, `(() => { const a = document.querySelector('#input'); a.value = '20'; a.dispatchEvent(new Event('input', {bubbles: true})); return true })()`)
	b.until("valid input accepted", `!document.querySelector('#submit').disabled`)
	// The queue and priority options, sent with the submit.
	eval[bool](b, `(() => { document.querySelector('#submit-form details').open = true;
		for (const [id, v] of [['#opt-queue', 'ui-q'], ['#opt-priority', '5']]) {
			const a = document.querySelector(id); a.value = v; a.dispatchEvent(new Event('input', {bubbles: true})) }
		return true })()`)
	b.screenshot("submit")
	b.run("submit", chromedp.Click(chromedp.CSS(`#submit`)))
	b.until("the task page", `location.hash.startsWith('#/task/') && document.querySelector('#task-id') !== null`)
	var opts struct {
		Queue    string `json:"queue"`
		Priority int    `json:"priority"`
	}
	id := eval[string](b, `location.hash.split('/')[2]`)
	if code := apiCall(t, via.HTTP, "", "GET", "/v1/tasks/"+id, nil, &opts); code != 200 || opts.Queue != "ui-q" || opts.Priority != 5 {
		t.Errorf("the form's task %s: %d queue %q priority %d, want ui-q and 5", id, code, opts.Queue, opts.Priority)
	}
	// Live: output lines show while the task still runs.
	b.until("output while running", `document.querySelectorAll('#output .line').length >= 2 && document.querySelector('.toolbar .badge').textContent === 'running'`)
	b.screenshot("task-running")
	b.until("the task to succeed with its result", `document.querySelector('.toolbar .badge').textContent === 'succeeded' && document.querySelector('#result') !== null`)
	lines := eval[int](b, `document.querySelectorAll('#output .line.s-stdout').length`)
	if lines < 20 {
		t.Errorf("the task page shows %d stdout lines, want the 20 the countdown printed", lines)
	}
	b.until("the attempt on the timeline", `document.querySelectorAll('#attempts li.ev-succeeded').length === 1`)
	b.screenshot("task")

	// A version no node or worker offers: the task's page says why it waits.
	var waiting uiTask
	if code := apiCall(t, via.HTTP, "", "POST", "/v1/tasks", map[string]any{"type": "py-upper", "version": "2", "input": "x"}, &waiting); code != 201 {
		t.Fatalf("submit py-upper version 2: %d", code)
	}
	b.run("open the waiting task", chromedp.Navigate(base+"#/task/"+waiting.ID))
	b.until("its pending reason", `(() => { const p = document.querySelector('#pending-reason');
		return p !== null && p.textContent === 'Waiting: no node or worker offers "py-upper" version "2"' })()`)
	b.screenshot("task-pending")
	apiCall(t, via.HTTP, "", "POST", "/v1/tasks/"+waiting.ID+"/cancel", nil, nil)
	b.until("no reason once cancelled", `document.querySelector('.toolbar .badge').textContent === 'cancelled' && document.querySelector('#pending-reason') === null`)
	b.noErrors("console pages")

	// The phone layout renders too.
	b.run("phone viewport", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile), chromedp.Navigate(base+"#/cluster"))
	b.until("cards on a phone", `document.querySelectorAll('.card').length === 3`)
	b.screenshot("cluster-phone")
	b.noErrors("phone layout")
}

// TestConsoleShowsAKilledNodeAndItsTasksMoving keeps the cluster page open while a node running
// tasks is SIGKILLed: its card turns red and its tasks show up under the nodes that take them over.
func TestConsoleShowsAKilledNodeAndItsTasksMoving(t *testing.T) {
	chromiumPath(t) // skips before any cluster starts when there is no browser
	pc := startProcCluster(t, 3)
	b := newBrowser(t)
	via := pc.procs[0]
	b.run("open the cluster page", chromedp.Navigate("http://"+via.HTTP+"/ui/#/cluster"))
	b.until("three alive cards", `document.querySelectorAll('.card[data-state=alive]').length === 3`)

	// Long tasks, fewer than the survivors' free slots (capacity 2 each), so the victim's can move.
	ids := submitSleeps(t, 3, 120_000, via)
	var victim, moved string
	poll(t, "a task running on a node other than "+via.Name, uiTimeout, func() bool {
		var list []uiTask
		if apiCall(t, via.HTTP, "", "GET", "/v1/tasks?state=running", nil, &list) != 200 {
			return false
		}
		for _, task := range list {
			if task.Node != via.Name && task.Node != "" {
				victim, moved = task.Node, task.ID
				return true
			}
		}
		return false
	})
	b.until("the task on its node's card", fmt.Sprintf(`document.querySelector('.card[data-node=%q] [data-task=%q]') !== null`, victim, moved))
	pc.kill(pc.byName(victim))
	b.until("the killed node's card red", fmt.Sprintf(`document.querySelector('.card.down[data-node=%q]') !== null`, victim))
	b.screenshot("cluster-node-down")
	b.until("its task running on another node", fmt.Sprintf(
		`(() => { const a = document.querySelector('[data-task=%q]'); return a !== null && a.closest('.card').dataset.node !== %q })()`, moved, victim))

	// Bulk cancel from the tasks page: select every unfinished task, cancel them in one go.
	b.run("open the tasks page", chromedp.Navigate("http://"+via.HTTP+"/ui/#/tasks"))
	b.until("the sleeps selectable", fmt.Sprintf(`document.querySelectorAll('tr[data-task] input[type=checkbox]').length === %d`, len(ids)))
	eval[bool](b, `(() => { document.querySelectorAll('tr[data-task] input[type=checkbox]').forEach((c) => c.click()); return true })()`)
	b.until("the selection counted", fmt.Sprintf(`/\(%d\)/.test(document.querySelector('#cancel-selected').textContent)`, len(ids)))
	b.run("cancel the selection", chromedp.Click(chromedp.CSS(`#cancel-selected`)))
	b.until("every sleep cancelled", fmt.Sprintf(`document.querySelectorAll('tr[data-task] .st-cancelled').length === %d`, len(ids)))
	b.noErrors("cluster page through a node failure, and bulk cancel")
}

// TestConsoleWithACLsHidesWhatATokenMayNotDo signs in with a read-only token: it sees the tasks
// but no cancel button, a cancel forced through the API is a 403, and a task it may not read
// is not found, as a missing one.
func TestConsoleWithACLsHidesWhatATokenMayNotDo(t *testing.T) {
	chromiumPath(t) // skips before any cluster starts when there is no browser
	pc := newProcCluster(t)
	for range 3 {
		pc.add("--acl")
	}
	first := pc.procs[0]
	for _, p := range pc.procs {
		poll(t, p.Name+" healthy", uiTimeout, func() bool {
			resp, err := http.Get("http://" + p.HTTP + "/v1/health")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		})
	}
	var mgmt struct {
		SecretID string `json:"secret_id"`
	}
	if code := apiCall(t, first.HTTP, "", "POST", "/v1/acl/bootstrap", nil, &mgmt); code != 200 {
		t.Fatalf("bootstrap: %d", code)
	}
	pc.token = mgmt.SecretID // the harness compares the replicas with it
	if code := apiCall(t, first.HTTP, mgmt.SecretID, "PUT", "/v1/acl/policy/sleep-reader", map[string]any{
		"rules": []map[string]any{{"task_type": "sleep", "capabilities": []string{"read", "logs"}}}}, nil); code != 200 {
		t.Fatalf("policy: %d", code)
	}
	var ro struct {
		SecretID string `json:"secret_id"`
	}
	if code := apiCall(t, first.HTTP, mgmt.SecretID, "POST", "/v1/acl/tokens", map[string]any{"policies": []string{"sleep-reader"}, "description": "read-only"}, &ro); code != 201 {
		t.Fatalf("token: %d", code)
	}
	var sleeping, echo uiTask
	apiCall(t, first.HTTP, mgmt.SecretID, "POST", "/v1/tasks", map[string]any{"type": "sleep", "input": map[string]int{"ms": 120_000}}, &sleeping)
	apiCall(t, first.HTTP, mgmt.SecretID, "POST", "/v1/tasks", map[string]any{"type": "echo", "input": "secret"}, &echo)
	if sleeping.ID == "" || echo.ID == "" {
		t.Fatal("submits with the management token failed")
	}

	b := newBrowser(t)
	base := "http://" + pc.procs[2].HTTP + "/ui/"
	b.run("open the console", chromedp.Navigate(base+"#/tasks"))
	b.until("the login form", `document.querySelector('form#login input#token') !== null`)
	b.screenshot("login")
	b.run("sign in", chromedp.SendKeys(chromedp.CSS(`#token`), ro.SecretID), chromedp.Click(chromedp.CSS(`#login button[type=submit]`)))
	b.until("the task list", fmt.Sprintf(`document.querySelector('tr[data-task=%q]') !== null`, sleeping.ID))
	type visible struct {
		Echo, Checkbox, BulkCancel, SubmitNav bool
		Stored                                string
	}
	shown := eval[visible](b, fmt.Sprintf(`({
		Echo: document.querySelector('tr[data-task=%q]') !== null,
		Checkbox: document.querySelector('tr[data-task=%q] input[type=checkbox]') !== null,
		BulkCancel: document.querySelector('#cancel-selected') !== null,
		SubmitNav: document.querySelector('#nav-submit') !== null,
		Stored: sessionStorage.getItem('taskworker.token') || '',
	})`, echo.ID, sleeping.ID))
	if shown.Echo || shown.Checkbox || shown.BulkCancel || shown.SubmitNav {
		t.Errorf("a read-only token sees: %+v", shown)
	}
	if shown.Stored != ro.SecretID {
		t.Errorf("the token is not in session storage")
	}
	href := eval[string](b, `location.href`)
	if strings.Contains(href, ro.SecretID) {
		t.Errorf("the token is in the URL: %s", href)
	}

	b.run("open the task", chromedp.Navigate(base+"#/task/"+sleeping.ID))
	b.until("the task page", fmt.Sprintf(`document.querySelector('#task-id') && document.querySelector('#task-id').textContent === %q`, sleeping.ID))
	buttons := eval[int](b, `document.querySelectorAll('#cancel, #run-again').length`)
	if buttons != 0 {
		t.Errorf("a read-only token sees %d cancel or run-again buttons", buttons)
	}
	b.screenshot("task-read-only")

	// Forced through the API, the cancel is refused, naming the capability.
	var refusal struct {
		Error string `json:"error"`
		Code  string `json:"code"`
	}
	if code := apiCall(t, pc.procs[2].HTTP, ro.SecretID, "POST", "/v1/tasks/"+sleeping.ID+"/cancel", nil, &refusal); code != 403 || !strings.Contains(refusal.Error, "cancel") {
		t.Errorf("cancel with a read-only token: %d %+v, want 403 naming cancel", code, refusal)
	}
	// A task it may not read does not exist for it: not found, and nothing of it shown.
	b.run("open a task it may not read", chromedp.Navigate(base+"#/task/"+echo.ID))
	b.until("a 404 as for a missing task", `(() => { const e = document.querySelector('.error[data-code=not_found]'); return e !== null && /not found/.test(e.textContent) })()`)
	b.noErrors("console with ACLs")

	apiCall(t, first.HTTP, mgmt.SecretID, "POST", "/v1/tasks/"+sleeping.ID+"/cancel", nil, nil)
}
