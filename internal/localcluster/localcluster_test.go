package localcluster

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestFreePortsNeverHandsOutAPortTwice(t *testing.T) {
	seen := map[int]bool{}
	for i := 0; i < 20; i++ {
		ports, err := FreePorts(3)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ports {
			if seen[p] {
				t.Fatalf("port %d handed out twice", p)
			}
			seen[p] = true
		}
	}
}

// agentScript stands in for the taskworker binary: it logs its arguments and the join token it
// got, writes a join token to its data dir as a first node does, exits 0 on SIGTERM and
// otherwise runs until killed.
const agentScript = `#!/bin/sh
trap 'echo "got TERM"; exit 0' TERM
echo "started $*"
echo "join token <$TASKWORKER_JOIN_TOKEN>"
while [ $# -gt 0 ]; do [ "$1" = --data-dir ] && echo "TW1::fake" > "$2/join-token"; shift; done
while :; do sleep 0.05; done
`

func TestNodeKillSigtermAndRestart(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "agent.sh")
	if err := os.WriteFile(bin, []byte(agentScript), 0o755); err != nil {
		t.Fatal(err)
	}
	c := New(bin, dir, "--capacity", "2")
	t.Cleanup(c.Stop)
	n1, err := c.Add()
	if err != nil {
		t.Fatal(err)
	}
	n2, err := c.Add("--capacity", "5")
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Join(n2.Args(), " ")
	if !strings.Contains(args, "--join "+n1.Gossip) || !strings.HasSuffix(args, "--capacity 2 --capacity 5") {
		t.Fatalf("n2 args %q: want --join n1 and the cluster's flags before its own", args)
	}
	if strings.Contains(strings.Join(n1.Args(), " "), "--join") {
		t.Fatalf("n1 joins: %q", n1.Args())
	}
	if err := Until(10*time.Second, 10*time.Millisecond, func() bool { return strings.Contains(n2.Log(), "join token <TW1::fake>") }); err != nil {
		t.Fatalf("n2 did not get n1's join token: %q", n2.Log())
	}
	n3, err := c.Add("--insecure")
	if err != nil {
		t.Fatal(err)
	}
	if err := Until(10*time.Second, 10*time.Millisecond, func() bool { return strings.Contains(n3.Log(), "join token <>") }); err != nil {
		t.Fatalf("an --insecure node got a join token: %q", n3.Log())
	}
	if err := Until(10*time.Second, 10*time.Millisecond, func() bool { return strings.Contains(n1.Log(), "started") }); err != nil {
		t.Fatalf("n1 log %q", n1.Log())
	}
	// Its stdin, stdout and stderr at least (the script runs in a shell that may hold more).
	if fds, err := n1.OpenFDs(); err != nil || fds < 3 {
		t.Fatalf("n1 OpenFDs = %d, %v; want at least 3", fds, err)
	}

	if err := n1.Wait(100 * time.Millisecond); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Wait on a running node: %v, want ErrTimeout", err)
	}
	if err := n1.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := n1.Wait(10 * time.Second); err != nil {
		t.Fatalf("after SIGTERM: %v, want a clean exit", err)
	}
	if n1.Running() || len(c.Running()) != 2 {
		t.Fatalf("running after exit: n1 %v, cluster %d", n1.Running(), len(c.Running()))
	}

	n2.Kill()
	if err := n2.Wait(time.Second); err == nil {
		t.Fatal("a SIGKILLed node exited cleanly")
	}
	if err := n2.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := n2.Restart(); err == nil {
		t.Fatal("restart of a running node succeeded")
	}
	if err := Until(10*time.Second, 10*time.Millisecond, func() bool { return strings.Count(n2.Log(), "started") == 2 }); err != nil {
		t.Fatalf("log after restart %q: want both runs", n2.Log())
	}
	if !n2.Running() {
		t.Fatal("restarted node not running")
	}
	c.Stop()
	if len(c.Running()) != 0 {
		t.Fatal("Stop left processes running")
	}
}

func TestCLIReportsExitStatusAndOutput(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "cli.sh")
	script := "#!/bin/sh\necho \"$*\"\necho oops >&2\nexit 3\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	n := &Node{HTTP: "127.0.0.1:1234"}
	out, errOut, code, err := n.CLI(bin, "task", "get", "X")
	if err != nil || code != 3 || out != "task --addr http://127.0.0.1:1234 get X\n" || errOut != "oops\n" {
		t.Fatalf("CLI: %q %q %d %v", out, errOut, code, err)
	}
	if _, _, _, err := n.CLI(filepath.Join(dir, "missing"), "status"); err == nil {
		t.Fatal("CLI of a missing binary: no error")
	}
}

// Every benchmark mode runs with the API's per-client rate limit off, on every node, and the
// mode's own flags after it; a mode cannot switch the limiter back on.
func TestStartKeepsRateLimitOffInEveryMode(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "agent.sh")
	if err := os.WriteFile(bin, []byte(agentScript), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mode      string
		args      []string
		wantToken bool // joiners get the first node's join token
	}{
		{"insecure", []string{"--insecure"}, false},
		{"secure", nil, true},
		{"secure+acl", []string{"--acl"}, true},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			c, err := Start(bin, filepath.Join(dir, tc.mode), 2, 4, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Stop)
			for _, n := range c.Nodes {
				args := strings.Join(n.Args(), " ")
				want := strings.TrimSpace("--capacity 4 --http-rate-limit 0 " + strings.Join(tc.args, " "))
				if !strings.HasSuffix(args, want) {
					t.Errorf("%s args %q: want them to end in %q", n.Name, args, want)
				}
			}
			want := "join token <>"
			if tc.wantToken {
				want = "join token <TW1::fake>"
			}
			n2 := c.Nodes[1]
			if err := Until(10*time.Second, 10*time.Millisecond, func() bool { return strings.Contains(n2.Log(), want) }); err != nil {
				t.Fatalf("n2 log %q: want %q", n2.Log(), want)
			}
		})
	}
	if _, err := Start(bin, filepath.Join(dir, "limited"), 1, 4, "--http-rate-limit", "100"); err == nil {
		t.Fatal("Start with --http-rate-limit in the mode's args: no error")
	}
}
