package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/taskworker/taskworker/client/clicmd"
	"github.com/taskworker/taskworker/node"
)

// Messages a newcomer meets, each checked on real processes for its exact text or exit status:
// a message must say what is wrong and what to do.

// errorLines returns the log lines at ERROR.
func errorLines(log string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "level=ERROR") {
			out = append(out, l)
		}
	}
	return out
}

// runBin runs bin with args as written (the harness's cli puts --addr right after the first
// word, where a command group such as acl or task does not take it).
func runBin(t *testing.T, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// TestInsecureJoinerOfASecureClusterStopsWithOneError: a node started --insecure against a secure
// cluster cannot ever join it; it says so in one ERROR line naming the mismatch and the member,
// within 10 s, and exits 1, instead of retrying forever.
func TestInsecureJoinerOfASecureClusterStopsWithOneError(t *testing.T) {
	pc := startProcCluster(t, 1)
	n1 := pc.procs[0]
	begin := time.Now()
	j := pc.add("--insecure")
	err := j.Wait(10 * time.Second)
	took := time.Since(begin)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("insecure joiner after %s: %v, want exit status 1 within 10s; log:\n%s", took.Round(time.Millisecond), err, j.Log())
	}
	errs := errorLines(j.Log())
	want := fmt.Sprintf("stopping: gossip encryption mismatch: the member at %s encrypts its gossip and this node has no gossip key (it runs --insecure; a secure cluster is joined with its join token)", n1.Gossip)
	if len(errs) != 1 || !strings.Contains(errs[0], want) {
		t.Errorf("want exactly one ERROR line with %q, got %d:\n%s", want, len(errs), strings.Join(errs, "\n"))
	}
	if strings.Contains(j.Log(), `\n\t*`) || strings.Contains(j.Log(), "error occurred") {
		t.Errorf("memberlist's multierror reached the log:\n%s", j.Log())
	}
	t.Logf("exited 1 after %s", took.Round(time.Millisecond))
}

// TestWrongJoinTokenIsRefusedOnceAndLoggedWithOneNodeKey: the joiner says "join refused" once and
// exits 1; the member logs the refusal with its own node= once and the joiner's name as joiner=.
func TestWrongJoinTokenIsRefusedOnceAndLoggedWithOneNodeKey(t *testing.T) {
	pc := startProcCluster(t, 1)
	n1 := pc.procs[0]
	tok, err := n1.JoinToken(30 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The same CA fingerprint, another secret: it reaches the cluster and is refused there.
	i := strings.LastIndex(tok, "::")
	secret := []byte(tok[i+2:])
	secret[0] = map[bool]byte{true: 'b', false: 'a'}[secret[0] == 'a']
	j := pc.add("--join-token", tok[:i+2]+string(secret))
	err = j.Wait(30 * time.Second)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("joiner with a wrong token: %v, want exit status 1; log:\n%s", err, j.Log())
	}
	if got := strings.Count(j.Log(), "join refused"); got != 1 {
		t.Errorf("the joiner says \"join refused\" %d times, want once:\n%s", got, j.Log())
	}
	var line string
	poll(t, "n1 logs the refusal", 30*time.Second, func() bool {
		for _, l := range strings.Split(n1.Log(), "\n") {
			if strings.Contains(l, "refused a node's join") {
				line = l
				return true
			}
		}
		return false
	})
	if strings.Count(line, " node=") != 1 || !strings.Contains(line, " node=n1 ") || !strings.Contains(line, " joiner="+j.Name+" ") {
		t.Errorf("refusal line: want node=n1 once and joiner=%s: %s", j.Name, line)
	}
}

// TestCleanShutdownLogsNoError: three nodes that leave one after the other with SIGTERM each exit 0
// and none logs a line at ERROR (memberlist's sends on sockets its own shutdown closed included),
// nor a line with a key twice, nor a raft duration in nanoseconds.
func TestCleanShutdownLogsNoError(t *testing.T) {
	pc := startProcCluster(t, 3)
	for _, p := range pc.procs[1:] {
		pc.sigtermExits(p, 60*time.Second)
	}
	pc.sigtermExits(pc.procs[0], 60*time.Second)
	nanos := regexp.MustCompile(`\b(time|duration|elapsed|timeout|backoff|last-contact)=[0-9.]+e\+[0-9]+\b`)
	for _, p := range pc.procs {
		log := p.Log()
		if errs := errorLines(log); len(errs) > 0 {
			t.Errorf("%s logged ERROR lines on a clean stop:\n%s", p.Name, strings.Join(errs, "\n"))
		}
		for _, l := range strings.Split(log, "\n") {
			if strings.Count(l, " node=") > 1 {
				t.Errorf("%s: a line with node= twice: %s", p.Name, l)
			}
			if nanos.MatchString(l) {
				t.Errorf("%s: a duration printed as nanoseconds: %s", p.Name, l)
			}
		}
	}
}

// TestPlainHTTPToAnHTTPSNodeHintsHTTPS: `status --addr http://...` against a node serving HTTPS
// exits 2 and says to use https://, not a bare "Bad Request (400)".
func TestPlainHTTPToAnHTTPSNodeHintsHTTPS(t *testing.T) {
	pc := newProcCluster(t)
	p := pc.add("--http-tls")
	poll(t, "the node serving HTTPS", 60*time.Second, func() bool { return strings.Contains(p.Log(), "node started") })
	_, stderr, code := pc.cli(p, "status", "--addr", "http://"+p.HTTP)
	want := fmt.Sprintf("http://%s serves HTTPS: use https://%s", p.HTTP, p.HTTP)
	if code != 2 || !strings.Contains(stderr, want) {
		t.Errorf("status over plain HTTP: exit %d, stderr %q; want 2 and %q", code, stderr, want)
	}
}

// TestSecondACLBootstrapSaysItIsDone: the second `acl bootstrap` is told that ACLs were
// bootstrapped already (409), not that a token is missing, and leaves the first token working.
func TestSecondACLBootstrapSaysItIsDone(t *testing.T) {
	pc := newProcCluster(t)
	p := pc.add("--acl")
	poll(t, "the --acl node healthy", 60*time.Second, func() bool { return healthOK(p.HTTP) })
	out, stderr, code := runBin(t, pc.c.Bin, "acl", "bootstrap", "--addr", "http://"+p.HTTP)
	if code != 0 || !strings.Contains(out, "tws_") {
		t.Fatalf("first bootstrap: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	_, stderr, code = runBin(t, pc.c.Bin, "acl", "bootstrap", "--addr", "http://"+p.HTTP)
	want := "ACLs were bootstrapped already; the bootstrap token is shown only once"
	if code != 2 || !strings.Contains(stderr, want) || !strings.Contains(stderr, "409 acl_bootstrapped") || strings.Contains(stderr, "no token") {
		t.Errorf("second bootstrap: exit %d, stderr %q; want 2 and %q (409 acl_bootstrapped)", code, stderr, want)
	}
}

// TestTaskListBogusStateListsTheValidOnes: a wrong --state names every valid state.
func TestTaskListBogusStateListsTheValidOnes(t *testing.T) {
	pc := startProcCluster(t, 1)
	_, stderr, code := runBin(t, pc.c.Bin, "task", "list", "--addr", "http://"+pc.procs[0].HTTP, "--state", "bogus")
	want := `unknown state "bogus"; valid states: [scheduled pending assigned running waiting succeeded failed cancelled] (400 invalid_state)`
	if code != 2 || !strings.Contains(stderr, want) {
		t.Errorf("task list --state bogus: exit %d, stderr %q; want 2 and %q", code, stderr, want)
	}
}

// TestHelpHasNoPlaceholderNorDoubleDefault renders the help of every command of the binary (as
// main.go assembles it): a backtick in a flag's usage becomes urfave/cli's value placeholder
// ("--acl taskworker acl bootstrap"), and a usage that states its default beside a Value prints
// two "(default: ...)".
func TestHelpHasNoPlaceholderNorDoubleDefault(t *testing.T) {
	newApp := func(w *bytes.Buffer) *cli.App {
		app := &cli.App{Name: "taskworker", Version: "test", Writer: w, ErrWriter: w,
			Commands: append([]*cli.Command{node.AgentCommand(node.AgentOptions{Version: "test"})}, clicmd.Commands()...)}
		clicmd.Configure(app)
		return app
	}
	var paths [][]string
	var walk func(prefix []string, cmds []*cli.Command)
	walk = func(prefix []string, cmds []*cli.Command) {
		for _, c := range cmds {
			p := append(append([]string(nil), prefix...), c.Name)
			paths = append(paths, p)
			walk(p, c.Subcommands)
		}
	}
	walk(nil, newApp(&bytes.Buffer{}).Commands)
	double := regexp.MustCompile(`\(default: [^)]*\).*\(default: `)
	for _, p := range paths {
		var buf bytes.Buffer
		if err := newApp(&buf).Run(append(append([]string{"taskworker"}, p...), "--help")); err != nil {
			t.Errorf("%s --help: %v", strings.Join(p, " "), err)
			continue
		}
		for _, l := range strings.Split(buf.String(), "\n") {
			flagLine := strings.HasPrefix(strings.TrimSpace(l), "--")
			if flagLine && double.MatchString(l) {
				t.Errorf("%s --help: two defaults: %s", strings.Join(p, " "), strings.TrimSpace(l))
			}
			if flagLine && strings.Contains(l, "`") {
				t.Errorf("%s --help: a backtick: %s", strings.Join(p, " "), strings.TrimSpace(l))
			}
			if f := strings.Fields(l); flagLine && len(f) > 1 && strings.HasPrefix(f[0], "--") && f[1] == "taskworker" {
				t.Errorf("%s --help: usage text as the value placeholder: %s", strings.Join(p, " "), strings.TrimSpace(l))
			}
		}
	}
	if len(paths) < 20 {
		t.Errorf("only %d commands walked", len(paths))
	}
}
