package clicmd

import (
	"strings"
	"testing"
)

func TestUnknownCommandExits2WithASuggestion(t *testing.T) {
	cases := []struct {
		args    []string
		want    string
		suggest string // "" : no suggestion expected
	}{
		{args: []string{"stauts"}, want: `unknown command "stauts" for taskworker`, suggest: `did you mean "status"?`},
		{args: []string{"exce"}, want: `unknown command "exce"`, suggest: `did you mean "exec"?`},
		{args: []string{"stat"}, want: `unknown command "stat"`, suggest: `did you mean "status"?`},
		{args: []string{"frobnicate"}, want: `unknown command "frobnicate" for taskworker`},
		{args: []string{"task", "lsit"}, want: `unknown command "lsit" for taskworker task`, suggest: `did you mean "list"?`},
		{args: []string{"task", "zzz"}, want: `unknown command "zzz" for taskworker task`},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			stdout, stderr, code := run(t, "", tc.args...)
			if code != ExitRequest || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, "No help topic") {
				t.Fatalf("exit %d, stdout %q, stderr %q; want 2 and %q", code, stdout, stderr, tc.want)
			}
			if tc.suggest != "" && !strings.Contains(stderr, tc.suggest) {
				t.Errorf("stderr %q lacks %q", stderr, tc.suggest)
			}
			if tc.suggest == "" && strings.Contains(stderr, "did you mean") {
				t.Errorf("stderr %q suggests something for a name like no command", stderr)
			}
			if !strings.Contains(stderr, "--help' for the list of commands") {
				t.Errorf("stderr %q does not point at --help", stderr)
			}
		})
	}
	// Without arguments, the binary and a command group still show their help.
	for _, args := range [][]string{nil, {"task"}} {
		if stdout, _, code := run(t, "", args...); code != 0 || !strings.Contains(stdout, "USAGE") {
			t.Errorf("%q: exit %d, stdout %q; want help", args, code, stdout)
		}
	}
}

func TestSuggest(t *testing.T) {
	cmds := Commands()
	for name, want := range map[string]string{
		"status": "status", "statsu": "status", "sumbit": "submit", "tpyes": "types", "leav": "leave",
		"x": "", "keygem": "keygen", "acll": "acl", "qwertyuiop": "",
	} {
		if got := suggest(name, cmds); got != want {
			t.Errorf("suggest(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		if stdout, _, code := run(t, "", args...); code != 0 || stdout != "taskworker version v1.2.3-test\n" {
			t.Errorf("%q: exit %d, stdout %q; want the build version", args, code, stdout)
		}
	}
	if _, _, code := run(t, "", "version", "extra"); code != ExitRequest {
		t.Errorf("version with an argument: exit %d, want 2", code)
	}
}

func TestDurationFlagsSayTheyNeedAUnit(t *testing.T) {
	_, addr := newFakeAPI(t)
	cases := []struct {
		args []string
		want string
	}{
		{args: []string{"exec", "--addr", addr, "--timeout", "5", "echo"}, want: `--timeout needs a unit, e.g. 5s (got "5"`},
		{args: []string{"exec", "--addr", addr, "echo", "--timeout", "5"}, want: `--timeout needs a unit, e.g. 5s (got "5"`},
		{args: []string{"submit", "--addr", addr, "--timeout=1.5", "echo"}, want: `--timeout needs a unit, e.g. 1.5s`},
		{args: []string{"exec", "--addr", addr, "--timeout", "soon", "echo"}, want: `--timeout takes a duration with a unit, e.g. 5s, 2m or 1h30m (got "soon")`},
		{args: []string{"leave", "--addr", addr, "--wait", "10"}, want: `--wait needs a unit, e.g. 10s`},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args[3:], " "), func(t *testing.T) {
			_, stderr, code := run(t, "", tc.args...)
			if code != ExitRequest || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, stderr, tc.want)
			}
		})
	}
	// Other bad values keep flag's own message, with the flag spelled as users type it.
	if _, stderr, code := run(t, "", "exec", "--addr", addr, "--max-attempts", "many", "echo"); code != ExitRequest ||
		!strings.Contains(stderr, `invalid value "many" for flag --max-attempts: parse error`) {
		t.Errorf("bad int: exit %d, stderr %q", code, stderr)
	}
	// Unknown flags and missing values too: never "-bogus-flag" with one dash.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"task", "list", "--addr", addr, "--bogus-flag"}, "Incorrect Usage: flag provided but not defined: --bogus-flag\n"},
		{[]string{"submit", "--addr", addr, "--priority"}, "Incorrect Usage: flag needs an argument: --priority\n"},
		{[]string{"submit", "--addr", addr, "--priority", "x", "echo"}, `Incorrect Usage: invalid value "x" for flag --priority: parse error`},
	} {
		if _, stderr, code := run(t, "", tc.args...); code != ExitRequest || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, stderr, tc.want)
		}
	}
}
