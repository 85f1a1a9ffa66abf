package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// envOf runs spec (a command that prints its environment) and returns what it printed.
func envOf(t *testing.T, h Handler) map[string]string {
	t.Helper()
	tc, lines := newTestContext(t, context.Background(), 1)
	if _, err := h.Run(tc, nil); err != nil {
		t.Fatal(err)
	}
	env := make(map[string]string)
	for _, l := range streamLines(lines(), "stdout") {
		k, v, _ := strings.Cut(l, "=")
		env[k] = v
	}
	return env
}

// The agent's environment holds its tokens; a command sees none of it beyond the allow-list.
func TestCommandEnvironmentIsClean(t *testing.T) {
	agentPath := os.Getenv("PATH")
	for k, v := range map[string]string{
		"TASKWORKER_TOKEN": "secret-token", "TASKWORKER_JOIN_TOKEN": "secret-join", "TASKWORKER_DATA_DIR": "/var/lib/tw",
		"AGENT_SECRET": "secret-agent", "HTTPS_PROXY": "http://proxy:3128", "LANG": "C.UTF-8", "TZ": "UTC",
	} {
		t.Setenv(k, v)
	}
	t.Setenv("LC_ALL", "")
	os.Unsetenv("LC_ALL") // restored by t.Setenv's cleanup

	runVars := []string{EnvAttempt, EnvCheckpointFile, EnvExecutionID, EnvResultFile, EnvTaskID, EnvTaskType}
	tests := []struct {
		name      string
		edit      func(*CommandSpec)
		unsetPath bool
		want      map[string]string // besides the run's own variables; "*" = any value
	}{
		{"only the allow-list and env", func(s *CommandSpec) { s.Env = map[string]string{"EXTRA": "yes"} }, false,
			map[string]string{"PATH": agentPath, "HOME": "*", "TMPDIR": "*", "LANG": "C.UTF-8", "TZ": "UTC", "EXTRA": "yes"}},
		{"inherit_env passes the named ones that are set", func(s *CommandSpec) { s.InheritEnv = []string{"HTTPS_PROXY", "NOT_SET_ANYWHERE"} }, false,
			map[string]string{"PATH": agentPath, "HOME": "*", "TMPDIR": "*", "LANG": "C.UTF-8", "TZ": "UTC", "HTTPS_PROXY": "http://proxy:3128"}},
		{"env overrides the allow-list", func(s *CommandSpec) { s.Env = map[string]string{"HOME": "/srv/home", "PATH": "/opt/bin"} }, false,
			map[string]string{"PATH": "/opt/bin", "HOME": "/srv/home", "TMPDIR": "*", "LANG": "C.UTF-8", "TZ": "UTC"}},
		{"PATH has a default when the agent has none", nil, true,
			map[string]string{"PATH": defaultPath, "HOME": "*", "TMPDIR": "*", "LANG": "C.UTF-8", "TZ": "UTC"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := CommandSpec{Name: "env", Version: "1", Command: "env"}
			if tt.edit != nil {
				tt.edit(&spec)
			}
			h := mustCommand(t, spec) // resolves env in the agent's PATH
			if tt.unsetPath {
				t.Setenv("PATH", "")
				os.Unsetenv("PATH")
			}
			env := envOf(t, h)
			var names, wantNames []string
			for k, v := range env {
				names = append(names, k)
				if strings.Contains(v, "secret") {
					t.Errorf("%s=%s: an agent secret reached the task", k, v)
				}
			}
			for k := range tt.want {
				wantNames = append(wantNames, k)
			}
			wantNames = append(wantNames, runVars...)
			slices.Sort(names)
			slices.Sort(wantNames)
			if !slices.Equal(names, wantNames) {
				t.Fatalf("task's variables = %q\nwant %q", names, wantNames)
			}
			for k, v := range tt.want {
				if v != "*" && env[k] != v {
					t.Errorf("%s = %q, want %q", k, env[k], v)
				}
			}
			runDir := filepath.Dir(env[EnvResultFile])
			if env["TMPDIR"] != filepath.Join(runDir, "tmp") || (env["HOME"] != env["TMPDIR"] && tt.want["HOME"] == "*") {
				t.Errorf("TMPDIR = %q, HOME = %q; want both %s/tmp", env["TMPDIR"], env["HOME"], runDir)
			}
			if _, err := os.Stat(runDir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("run dir %s left behind: %v", runDir, err)
			}
		})
	}
}

func TestCommandSpecRefusesAgentSettingsInInheritEnv(t *testing.T) {
	for _, tt := range []struct {
		inherit []string
		env     map[string]string
		want    string
	}{
		{[]string{"TASKWORKER_TOKEN"}, nil, "TASKWORKER_TOKEN is the agent's own setting"},
		{[]string{"taskworker_join_token"}, nil, "is the agent's own setting"},
		{[]string{"A=B"}, nil, `invalid variable name "A=B"`},
		{[]string{"HOME"}, map[string]string{"HOME": "/x"}, "HOME is both in env and in inherit_env"},
	} {
		spec := CommandSpec{Name: "x", Version: "1", Command: "sh", InheritEnv: tt.inherit, Env: tt.env}
		if _, err := NewCommand(spec); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewCommand(inherit_env %q) = %v, want an error containing %q", tt.inherit, err, tt.want)
		}
	}
}

// nobody returns the nobody user, skipping the test where there is none.
func nobody(t *testing.T) *user.User {
	t.Helper()
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("no user nobody here: %v", err)
	}
	return u
}

// asAgent makes lookupRunAs see an agent with this effective uid and gid.
func asAgent(t *testing.T, uid, gid int) {
	t.Helper()
	saved := agentIDs
	agentIDs = func() (int, int) { return uid, gid }
	t.Cleanup(func() { agentIDs = saved })
}

func TestLookupRunAs(t *testing.T) {
	nb := nobody(t)
	nbUID, _ := strconv.Atoi(nb.Uid)
	nbGID, _ := strconv.Atoi(nb.Gid)
	tests := []struct {
		name        string
		agent       [2]int // effective uid, gid
		user, group string
		wantUID     int // -1: runs as the agent (nil runAs)
		wantErr     string
	}{
		{"no user", [2]int{0, 0}, "", "", -1, ""},
		{"root agent, nobody", [2]int{0, 0}, "nobody", "", nbUID, ""},
		{"by uid", [2]int{0, 0}, nb.Uid, "", nbUID, ""},
		{"root is refused", [2]int{0, 0}, "root", "", 0, `user "root" is root (uid 0)`},
		{"uid 0 is refused", [2]int{0, 0}, "0", "", 0, `user "0" is root (uid 0)`},
		{"group root is refused", [2]int{0, 0}, "nobody", "root", 0, "group root (gid 0)"},
		{"unknown user", [2]int{0, 0}, "no-such-user-here", "", 0, `user "no-such-user-here": user: unknown user`},
		{"group without user", [2]int{0, 0}, "", "nogroup", 0, `group "nogroup" needs a user`},
		{"non-root agent cannot switch", [2]int{nbUID + 1, nbGID}, "nobody", "", 0,
			"the agent runs as uid " + strconv.Itoa(nbUID+1) + ", not root, so it cannot run tasks as user \"nobody\""},
		{"non-root agent as itself", [2]int{nbUID, nbGID}, "nobody", "", -1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			asAgent(t, tt.agent[0], tt.agent[1])
			ra, err := lookupRunAs(tt.user, tt.group)
			switch {
			case tt.wantErr != "":
				if err == nil || !errors.Is(err, ErrRunAs) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("lookupRunAs = %+v, %v; want ErrRunAs containing %q", ra, err, tt.wantErr)
				}
			case err != nil:
				t.Fatal(err)
			case tt.wantUID == -1 && ra != nil:
				t.Fatalf("runAs = %+v, want none (the agent's own user)", ra)
			case tt.wantUID >= 0 && (ra == nil || int(ra.uid) != tt.wantUID || int(ra.gid) != nbGID):
				t.Fatalf("runAs = %+v, want uid %d gid %d", ra, tt.wantUID, nbGID)
			}
		})
	}
}

// A user who cannot reach the command is found out when the type is created, not on every attempt.
func TestNewCommandChecksTheUserCanRunIt(t *testing.T) {
	nobody(t)
	asAgent(t, 0, 0)
	private := t.TempDir() // 0700, the test's own
	cmd := filepath.Join(private, "task")
	if err := os.WriteFile(cmd, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(private, 0o700); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 && syscall.Getuid() == 65534 {
		t.Skip("running as nobody: the private dir is nobody's own")
	}
	_, err := NewCommand(CommandSpec{Name: "x", Version: "1", Command: cmd, User: "nobody"})
	if err == nil || !errors.Is(err, ErrRunAs) || !strings.Contains(err.Error(), "has no permission on "+private) {
		t.Fatalf("NewCommand = %v, want an error naming %s", err, private)
	}
	if _, err := NewCommand(CommandSpec{Name: "x", Version: "1", Command: "/bin/sh", User: "nobody", Dir: private}); err == nil ||
		!strings.Contains(err.Error(), `task type "x": dir: `) {
		t.Fatalf("NewCommand with a private dir = %v, want a dir error", err)
	}
}

func TestRegisterTaskFileUserErrorsNameTheLine(t *testing.T) {
	nb := nobody(t)
	asAgent(t, 1000, 1000)
	for _, tt := range []struct{ name, text, want string }{
		{"root", "tasks:\n  - name: a\n    version: 1\n    command: sh\n    user: root\n", `:5: task type "a": cannot run as the configured user: user "root" is root (uid 0)`},
		{"non-root agent", "tasks:\n  - name: a\n    version: 1\n    command: sh\n    group: \"" + nb.Gid + "\"\n    user: nobody\n",
			`:6: task type "a": cannot run as the configured user: the agent runs as uid 1000, not root`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := writeTaskFile(t, tt.text)
			if err := RegisterTaskFile(NewRegistry(), path); err == nil || !strings.Contains(err.Error(), path+tt.want) {
				t.Fatalf("RegisterTaskFile = %v, want %q", err, path+tt.want)
			}
		})
	}
}

// What a task as another user may and may not touch, as reported by the task itself.
type reach struct {
	UID        string `json:"uid"`
	Dir        string `json:"dir"` // mode and owner of the run dir
	Pwd        string `json:"pwd"`
	Tmp        string `json:"tmp"`
	Checkpoint string `json:"checkpoint"`
	Secret     string `json:"secret"`  // "read" or "denied"
	Environ    string `json:"environ"` // the agent's /proc/PID/environ
}

// reachScript prints a reach as its result; $1 is the secret file, $2 the agent's pid.
const reachScript = `
secret=denied; cat "$1" >/dev/null 2>&1 && secret=read
environ=denied; cat "/proc/$2/environ" >/dev/null 2>&1 && environ=read
printf '{"uid":"%s","dir":"%s","pwd":"%s","tmp":"%s","checkpoint":"%s","secret":"%s","environ":"%s"}\n' \
	"$(id -u)" "$(stat -c '%a %u' "$(dirname "$TASKWORKER_RESULT_FILE")")" "$(pwd)" "$TMPDIR" \
	"$(tr -d '"' < "$TASKWORKER_CHECKPOINT_FILE")" "$secret" "$environ" > "$TASKWORKER_RESULT_FILE"
`

// The attack of issue 9 (a task reading the agent's token from its environ and its data dir) works
// as the agent's user and fails as nobody. Needs root, to switch users.
func TestCommandAsUserCannotReadTheAgentsSecrets(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skipf("running a task as nobody needs a root agent; this test runs as uid %d", os.Geteuid())
	}
	nb := nobody(t)
	t.Setenv("TASKWORKER_TOKEN", "secret-token")
	// A data dir anyone may enter, holding a file only root may read, as the agent's would.
	dataDir, err := os.MkdirTemp("", "agent-data-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dataDir) })
	if err := os.Chmod(dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(dataDir, "join-token")
	if err := os.WriteFile(secret, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		user string
		want reach // Dir, Pwd, Tmp checked separately
	}{
		{"", reach{UID: "0", Checkpoint: "{n:7}", Secret: "read", Environ: "read"}}, // the hole, as it was
		{"nobody", reach{UID: nb.Uid, Checkpoint: "{n:7}", Secret: "denied", Environ: "denied"}},
	}
	for _, tt := range tests {
		t.Run("user="+tt.user, func(t *testing.T) {
			spec := CommandSpec{Name: "reach", Version: "1", Command: "/bin/sh",
				Args: []string{"-c", reachScript, "reach", secret, strconv.Itoa(os.Getpid())}, User: tt.user}
			e, rep, store := executorFor(t, mustCommand(t, spec))
			e.Start(Assignment{TaskID: "t1", Type: "reach", Attempt: 1, Checkpoint: json.RawMessage(`{"n":7}`)})
			waitIdle(t, e)
			calls := rep.snapshot()
			fin := calls[len(calls)-1]
			if fin.outcome != OutcomeSucceeded {
				lines, _ := store.Read("t1")
				t.Fatalf("finished = %+v %+v; output %+v", fin, fin.terr, lines)
			}
			var got reach
			if err := json.Unmarshal([]byte(fin.result), &got); err != nil {
				t.Fatalf("result %s: %v", fin.result, err)
			}
			wantOwner := "0"
			if tt.user != "" {
				wantOwner = nb.Uid
			}
			if got.Dir != "700 "+wantOwner {
				t.Errorf("run dir mode and owner = %q, want 700 %s", got.Dir, wantOwner)
			}
			if tt.user != "" && got.Pwd != got.Tmp {
				t.Errorf("working dir = %q, want the run's temp dir %q", got.Pwd, got.Tmp)
			}
			got.Dir, got.Pwd, got.Tmp = "", "", ""
			if got != tt.want {
				t.Fatalf("task reached %+v, want %+v", got, tt.want)
			}
		})
	}
}

// The task owns its run dir, so it may plant links where the agent reads and writes; the agent must
// not follow them out of the run dir, nor block on a FIFO.
func TestCommandRunDirLinksDoNotRedirectTheAgent(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "agent-file")
	if err := os.WriteFile(outside, []byte(`"agent secret"`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, script string
		wantErr      string
	}{
		{"result file is a symlink out", `ln -s "$1" "$TASKWORKER_RESULT_FILE"`, "result file"},
		{"result file is a FIFO", `mkfifo "$TASKWORKER_RESULT_FILE"`, "result.json is not a regular file"},
		{"checkpoint file is a symlink out", `
ln -s "$1" "$TASKWORKER_CHECKPOINT_FILE"
echo '::checkpoint:: {"n": 1}'
while [ -L "$TASKWORKER_CHECKPOINT_FILE" ]; do sleep 0.01; done
cat "$TASKWORKER_CHECKPOINT_FILE" > "$TASKWORKER_RESULT_FILE"`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := shCommand(t, tt.script, outside)
			spec.Timeout = 10 * time.Second
			e, rep, _ := executorFor(t, mustCommand(t, spec))
			e.Start(Assignment{TaskID: "t1", Type: "cmd", Attempt: 1})
			waitIdle(t, e)
			calls := rep.snapshot()
			fin := calls[len(calls)-1]
			if strings.Contains(fin.result, "agent secret") || fin.terr != nil && strings.Contains(fin.terr.Message, "agent secret") {
				t.Fatalf("finished = %+v %+v: the agent read its own file for the task", fin, fin.terr)
			}
			if tt.wantErr == "" {
				if fin.outcome != OutcomeSucceeded || fin.result != `{"n":1}` {
					t.Fatalf("finished = %+v %+v, want the checkpoint in the run dir", fin, fin.terr)
				}
			} else if fin.terr == nil || fin.terr.Type != ErrTypeTaskError || !strings.Contains(fin.terr.Message, tt.wantErr) {
				t.Fatalf("finished = %+v %+v, want a task error containing %q", fin, fin.terr, tt.wantErr)
			}
			if b, _ := os.ReadFile(outside); string(b) != `"agent secret"` {
				t.Fatalf("file outside the run dir now holds %q", b)
			}
		})
	}
}

// A hard link to a file of someone else's, in the dir a task user owns, is not read as the result.
func TestRunDirRefusesAResultNotOwnedByTheTaskUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skipf("handing a run dir to nobody needs root; this test runs as uid %d", os.Geteuid())
	}
	nobody(t)
	ra, err := lookupRunAs("nobody", "")
	if err != nil {
		t.Fatal(err)
	}
	d, err := newRunDir(ra)
	if err != nil {
		t.Fatal(err)
	}
	defer d.remove()
	if err := d.handOver(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.file(resultFileName), []byte(`"root's"`), 0o600); err != nil { // as root
		t.Fatal(err)
	}
	if data, err := d.readResult(0); err == nil || !strings.Contains(err.Error(), `not owned by user "nobody"`) {
		t.Fatalf("readResult = %q, %v; want it refused", data, err)
	}
	if err := os.Chown(d.file(resultFileName), int(ra.uid), int(ra.gid)); err != nil {
		t.Fatal(err)
	}
	if data, err := d.readResult(0); err != nil || string(data) != `"root's"` {
		t.Fatalf("readResult of the user's own file = %q, %v", data, err)
	}
}
