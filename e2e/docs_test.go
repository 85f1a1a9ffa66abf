package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The documentation is tested: the README's and docs/operations.md's shell walkthroughs run, in
// order, against a fresh scripts/cluster.sh cluster, and each command's output must show what the
// document shows. How a document marks its blocks:
//
//   - ```console: "$ " starts a command (a line ending in "\" continues it); the lines up to the
//     next command are the output it must print (stdout and stderr as a terminal shows them), in
//     order, with other lines allowed between. In an output line, "..." stands for anything (a
//     whole word: any run of words; inside a word: any characters but spaces), and a task ID
//     (26 characters of Crockford base 32) for any task ID. A command must exit 0, unless it ends
//     with a comment "# exit N".
//   - ```sh: the whole block runs as one script under "set -e"; it must exit 0.
//   - <!-- doc-test: skip (why) --> on the line before a fence: the block is not run.
//
// Ports 7946..7999 in a block are moved to the test's free port base, and bin/taskworker is the
// binary under test. Variables set by one command (id=$(...)) are seen by the next ones.

// docFiles are the documents whose walkthroughs run, in this order, against one cluster.
var docFiles = []string{"../README.md", "../docs/operations.md"}

// docBlock is one fenced block of a document.
type docBlock struct {
	file string
	line int    // of the opening fence
	lang string // console, sh, go, ...
	skip bool   // marked not to run
	body []string
}

// docCommand is one command of a console block (or a whole sh block) and what it must print.
type docCommand struct {
	where  string // file:line
	script string
	want   []string // output lines as the document shows them
	exit   int
	sh     bool
}

var bareTaskworker = regexp.MustCompile(`(^|[\s$(;|&])taskworker\s`)

var skipMarker = regexp.MustCompile(`^<!--\s*doc-test:\s*skip\b`)

// readDocBlocks returns every fenced block of the file.
func readDocBlocks(t *testing.T, file string) []docBlock {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		blocks []docBlock
		cur    *docBlock
		prev   string
		n      int
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case cur == nil && strings.HasPrefix(trimmed, "```"):
			info := strings.Fields(strings.TrimPrefix(trimmed, "```"))
			lang := ""
			if len(info) > 0 {
				lang = info[0]
			}
			cur = &docBlock{file: filepath.Base(file), line: n, lang: lang, skip: skipMarker.MatchString(strings.TrimSpace(prev))}
		case cur != nil && trimmed == "```":
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.body = append(cur.body, line)
		}
		prev = line
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("%s:%d: fence never closed", file, cur.line)
	}
	return blocks
}

var exitComment = regexp.MustCompile(`#\s*exit (\d+)\b`)

// docCommands turns the runnable blocks into commands.
func docCommands(t *testing.T, blocks []docBlock) []docCommand {
	t.Helper()
	var cmds []docCommand
	for _, b := range blocks {
		if b.skip {
			continue
		}
		switch b.lang {
		case "sh":
			cmds = append(cmds, docCommand{where: fmt.Sprintf("%s:%d", b.file, b.line), script: strings.Join(b.body, "\n"), sh: true})
		case "console":
			var cur *docCommand
			continued := false
			for i, line := range b.body {
				switch {
				case continued:
					cur.script += "\n" + line
				case strings.HasPrefix(line, "$ "):
					if cur != nil {
						cmds = append(cmds, *cur)
					}
					cur = &docCommand{where: fmt.Sprintf("%s:%d", b.file, b.line+1+i), script: strings.TrimPrefix(line, "$ ")}
				case cur == nil:
					t.Fatalf("%s:%d: a console block must start with a command (\"$ \")", b.file, b.line+1+i)
				default:
					cur.want = append(cur.want, line)
				}
				continued = cur != nil && strings.HasSuffix(line, "\\") && (continued || strings.HasPrefix(line, "$ "))
			}
			if cur != nil {
				cmds = append(cmds, *cur)
			}
		}
	}
	for i := range cmds {
		if m := exitComment.FindStringSubmatch(cmds[i].script); m != nil {
			cmds[i].exit, _ = strconv.Atoi(m[1])
		}
	}
	return cmds
}

var (
	docPort = regexp.MustCompile(`\b79([4-9][0-9])\b`)
	ulid    = regexp.MustCompile(`[0-9A-HJKMNP-TV-Z]{26}`)
)

// movePorts rewrites the documents' ports (cluster.sh's default base 7946) to base.
func movePorts(s string, base int) string {
	return docPort.ReplaceAllStringFunc(s, func(p string) string {
		n, _ := strconv.Atoi(p)
		return strconv.Itoa(base + n - 7946)
	})
}

// outputPattern is the regexp an output line of a document stands for (see the top of this file).
func outputPattern(line string) *regexp.Regexp {
	words := strings.Fields(line)
	var b strings.Builder
	b.WriteString(`^\s*`)
	for i, w := range words {
		if i > 0 {
			if w == "..." || words[i-1] == "..." {
				b.WriteString(`\s*`)
			} else {
				b.WriteString(`\s+`)
			}
		}
		if w == "..." {
			b.WriteString(`.*`)
			continue
		}
		parts := strings.Split(w, "...")
		for j, p := range parts {
			if j > 0 {
				b.WriteString(`\S*`)
			}
			b.WriteString(ulid.ReplaceAllString(regexp.QuoteMeta(p), `[0-9A-HJKMNP-TV-Z]{26}`))
		}
	}
	b.WriteString(`\s*$`)
	return regexp.MustCompile(b.String())
}

// missingOutput returns the first wanted line the output lacks (in order), or "".
func missingOutput(want []string, got string) string {
	lines := strings.Split(got, "\n")
	at := 0
	for _, w := range want {
		if strings.TrimSpace(w) == "" || strings.TrimSpace(w) == "..." {
			continue
		}
		re := outputPattern(w)
		for at < len(lines) && !re.MatchString(lines[at]) {
			at++
		}
		if at == len(lines) {
			return w
		}
		at++
	}
	return ""
}

// TestDocOutputPatterns pins the matching rules the walkthrough test relies on.
func TestDocOutputPatterns(t *testing.T) {
	for _, tc := range []struct {
		want, got string
		ok        bool
	}{
		{"144", "144", true},
		{"144", "1444", false},
		{"n1  127.0.0.1:7946  alive  leader  0/...  no  ...", "n1    127.0.0.1:7946  alive  leader  0/2   no   dev  5s  42", true},
		{"n1  127.0.0.1:7946  alive  leader  0/...  no  ...", "n1    127.0.0.1:7946  alive  voter  0/2   no   dev", false},
		{"task 01M976C1Y9QAAXZN09ZG3T3BMM submitted", "task 01M976DMQ9TPD9VN0PG928CYG1 submitted", true},
		{"task 01M976C1Y9QAAXZN09ZG3T3BMM submitted", "task 01M976DMQ9TPD9VN0PG928CYG submitted", false},
		{`{"id":"...","state":"succeeded",...}`, `{"id":"01M9","state":"succeeded","node":"n2"}`, true},
		{`{"id":"...","state":"succeeded",...}`, `{"id":"01M9","state":"failed","node":"n2"}`, false},
		{"Schedule square created; next runs: ...", "Schedule square created; next runs: 2026-12-07T02:48:41Z, 2026", true},
	} {
		if got := outputPattern(tc.want).MatchString(tc.got); got != tc.ok {
			t.Errorf("%q against %q: %v, want %v (%s)", tc.want, tc.got, got, tc.ok, outputPattern(tc.want))
		}
	}
	if m := missingOutput([]string{"a", "...", "c"}, "a\nb\nc\n"); m != "" {
		t.Errorf("in order with lines between: missing %q", m)
	}
	if m := missingOutput([]string{"c", "a"}, "a\nb\nc\n"); m != "a" {
		t.Errorf("out of order: missing %q, want a", m)
	}
}

// TestDocsMarkTheirBlocks: every console block of the documents starts with a command, and no
// shell block is silently ignored: sh and console run, other languages are not shell.
func TestDocsMarkTheirBlocks(t *testing.T) {
	for _, f := range append(docFiles, "../docs/chaos.md") {
		blocks := readDocBlocks(t, f)
		docCommands(t, blocks) // fails on a console block without a command
		for _, b := range blocks {
			if b.lang == "" || b.lang == "bash" || b.lang == "shell" {
				t.Errorf("%s:%d: a block without a language or as %q: write sh (run) or console, or text", b.file, b.line, b.lang)
			}
			if b.skip || (b.lang != "sh" && b.lang != "console") {
				continue
			}
			// A reader who ran scripts/cluster.sh has bin/taskworker, not taskworker on PATH.
			for i, l := range b.body {
				if bareTaskworker.MatchString(l) {
					t.Errorf("%s:%d: runs taskworker from PATH; write bin/taskworker: %s", b.file, b.line+1+i, l)
				}
			}
		}
	}
}

// TestDocsWalkthroughsRun runs every walkthrough command of the documents against a fresh
// scripts/cluster.sh 3 cluster and checks what each prints against what the document shows.
func TestDocsWalkthroughsRun(t *testing.T) {
	bin := binary(t)
	for _, tool := range []string{"bash", "curl", "jq", "setsid"} {
		if _, err := exec.LookPath(tool); err != nil {
			skipUnlessRequired(t, "TASKWORKER_REQUIRE_DOC_TOOLS", "the walkthroughs need %s (apt-get install %s)", tool, tool)
		}
	}
	var cmds []docCommand
	for _, f := range docFiles {
		cmds = append(cmds, docCommands(t, readDocBlocks(t, f))...)
	}
	if len(cmds) < 20 {
		t.Fatalf("only %d walkthrough commands found in %v", len(cmds), docFiles)
	}

	base := freePortBase(t, 5) // the cluster's 3 nodes, and room for a --dev node a document starts
	clusterDir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	script := clusterScript(ctx, bin, clusterDir, base, 3)
	out := &lockedBuffer{}
	script.Stdout, script.Stderr = out, out
	if err := script.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- script.Wait() }()
	var groups []int // process groups of the commands, whatever they left running
	t.Cleanup(func() {
		for _, g := range groups {
			_ = syscall.Kill(-g, syscall.SIGKILL)
		}
		cancel()
		select {
		case <-exited:
		case <-time.After(70 * time.Second):
		}
		killNodes(clusterDir)
		if t.Failed() {
			t.Logf("cluster.sh output:\n%s", out)
			for i := 1; i <= 3; i++ {
				b, _ := os.ReadFile(filepath.Join(clusterDir, fmt.Sprintf("n%d.log", i)))
				t.Logf("--- n%d.log (tail) ---\n%s", i, tail(string(b), 40))
			}
		}
	})
	poll(t, "cluster.sh's 3 nodes", 150*time.Second, func() bool {
		select {
		case err := <-exited:
			t.Fatalf("cluster.sh exited (%v):\n%s", err, out)
		default:
		}
		return strings.Contains(out.String(), "3 nodes running")
	})

	// The reader's working directory: bin/taskworker is the binary under test.
	work := t.TempDir()
	if err := os.Mkdir(filepath.Join(work, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(bin, filepath.Join(work, "bin", "taskworker")); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(work, ".doc-test-env")
	// The documents' cluster is on cluster.sh's default ports, where the CLI's default --addr
	// (n1's HTTP) reaches it; this one is on the free base.
	env := append(os.Environ(), "TASKWORKER_PORT_BASE=", fmt.Sprintf("TASKWORKER_ADDR=http://127.0.0.1:%d", base+2), "TASKWORKER_TOKEN=",
		"DOC_STATE="+state, "CLUSTER_DIR="+clusterDir, "TMPDIR="+work)

	for _, c := range cmds {
		script := movePorts(c.script, base)
		// Variables carry over from one command to the next: every assignment is exported (set -a)
		// and the exported environment saved when the command ends, however it ends.
		prologue := `set -a; [ -f "$DOC_STATE" ] && . "$DOC_STATE"; ` +
			`trap 'export -p | grep -v -e "^declare -[a-z]*r" -e " DOC_STATE=" >"$DOC_STATE"' EXIT` + "\n"
		if c.sh {
			prologue += "set -eo pipefail\n"
		}
		cctx, ccancel := context.WithTimeout(context.Background(), 120*time.Second)
		cmd := exec.CommandContext(cctx, "bash", "-c", prologue+script)
		cmd.Dir, cmd.Env = work, env
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.WaitDelay = 5 * time.Second // a background process the command left may hold the pipe
		start := time.Now()
		got, err := cmd.CombinedOutput()
		ccancel()
		if cmd.Process != nil {
			groups = append(groups, cmd.Process.Pid)
		}
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil && !errors.Is(err, exec.ErrWaitDelay) {
			t.Fatalf("%s: %s: %v", c.where, script, err)
		}
		t.Logf("%s (%s, exit %d): %s", c.where, time.Since(start).Round(time.Millisecond), code, firstLine(script))
		if code != c.exit {
			t.Errorf("%s: `%s` exited %d, the document says %d; output:\n%s", c.where, script, code, c.exit, got)
			continue
		}
		if m := missingOutput(movePortsAll(c.want, base), string(got)); m != "" {
			t.Errorf("%s: `%s` printed no line like %q (in the order shown); output:\n%s", c.where, script, m, got)
		}
	}
	// The walkthroughs leave the cluster as they found it: healthy.
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/v1/health", base+2))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("n1 not healthy after the walkthroughs: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
}

func movePortsAll(lines []string, base int) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = movePorts(l, base)
	}
	return out
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// goBlock returns the README's Go example, the only go block it has.
func goBlock(t *testing.T) string {
	t.Helper()
	var found []docBlock
	for _, b := range readDocBlocks(t, "../README.md") {
		if b.lang == "go" {
			found = append(found, b)
		}
	}
	if len(found) != 1 {
		t.Fatalf("README.md has %d go blocks, want 1 (the custom task type)", len(found))
	}
	return strings.Join(found[0].body, "\n") + "\n"
}

// TestReadmeGoExampleBuildsAndRuns compiles the README's custom task type as written, then runs
// it as a reader would: its version and help are its own, it runs an agent, and its task works.
func TestReadmeGoExampleBuildsAndRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary: skipped in -short mode")
	}
	src := goBlock(t)
	// Inside this module, so that it builds against this tree; testdata is not part of ./...
	if err := os.MkdirAll("testdata", 0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("testdata", "readme-example-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.RemoveAll(dir)
		os.Remove("testdata") // only when empty
	})
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "mytask")
	build := exec.Command("go", "build", "-o", bin, "./"+filepath.ToSlash(dir))
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("the README's Go example does not build: %v\n%s\n--- the example ---\n%s", err, out, src)
	}

	run := func(args ...string) (string, int) {
		t.Helper()
		out, err := exec.Command(bin, args...).CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	if out, code := run("version"); code != 0 || out != "mytask version 1.0.0\n" {
		t.Errorf("mytask version: exit %d, %q; want 0 and \"mytask version 1.0.0\"", code, out)
	}
	if out, code := run("--help"); code != 0 || !strings.Contains(out, "taskworker with word-count") || strings.Contains(out, "A new cli application") ||
		!strings.Contains(out, "agent") || !strings.Contains(out, "exec") {
		t.Errorf("mytask --help: exit %d:\n%s", code, out)
	}
	if out, code := run("versio"); code != 2 || !strings.Contains(out, `did you mean "version"?`) {
		t.Errorf("mytask versio: exit %d, %q; want 2 and a suggestion", code, out)
	}

	ports := freePortBase(t, 1)
	httpAddr := fmt.Sprintf("127.0.0.1:%d", ports+2)
	agent := exec.Command(bin, "agent", "--dev", "--gossip-addr", fmt.Sprintf("127.0.0.1:%d", ports),
		"--raft-addr", fmt.Sprintf("127.0.0.1:%d", ports+1), "--http-addr", httpAddr)
	agentLog := &lockedBuffer{}
	agent.Stdout, agent.Stderr = agentLog, agentLog
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = agent.Process.Kill()
		_ = agent.Wait()
		if t.Failed() {
			t.Logf("mytask agent's log:\n%s", agentLog)
		}
	})
	poll(t, "mytask agent --dev healthy", 60*time.Second, func() bool { return healthOK(httpAddr) })
	out, err := exec.Command(bin, "exec", "--addr", "http://"+httpAddr, "word-count", `{"text": "to be or not"}`).Output()
	if err != nil || strings.TrimSpace(string(out)) != "4" {
		t.Errorf("mytask exec word-count: %v, stdout %q; want 4", err, out)
	}
}

// TestClusterScriptAppendsToItsLogs starts scripts/cluster.sh twice on one directory: the second
// start keeps the first run's log and marks where each start begins.
func TestClusterScriptAppendsToItsLogs(t *testing.T) {
	bin := binary(t)
	dir := t.TempDir()
	t.Cleanup(func() { killNodes(dir) })
	for run := 1; run <= 2; run++ {
		base := freePortBase(t, 1)
		ctx, cancel := context.WithCancel(context.Background())
		cmd := clusterScript(ctx, bin, dir, base, 1)
		out := &lockedBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		poll(t, fmt.Sprintf("run %d of cluster.sh", run), 120*time.Second, func() bool {
			return strings.Contains(out.String(), "1 nodes running")
		})
		cancel() // SIGTERM: the script stops its node gracefully
		select {
		case <-exited:
		case <-time.After(70 * time.Second):
			t.Fatalf("run %d of cluster.sh still runs 70s after SIGTERM:\n%s", run, out)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "n1.log"))
	if err != nil {
		t.Fatal(err)
	}
	log := string(b)
	marker := regexp.MustCompile(`(?m)^=== cluster\.sh: starting n1 at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ===$`)
	if got := len(marker.FindAllString(log, -1)); got != 2 {
		t.Errorf("n1.log has %d start markers, want 2:\n%s", got, log)
	}
	if got := strings.Count(log, `msg="node started"`); got != 2 {
		t.Errorf("n1.log has %d \"node started\" lines, want one per run (2): the first run's log was lost?\n%s", got, log)
	}
	if !strings.HasPrefix(log, "=== cluster.sh: starting n1") {
		t.Errorf("n1.log does not begin with a start marker:\n%s", tail(log, 5))
	}
}
