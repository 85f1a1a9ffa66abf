package agentcred

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/taskworker/taskworker/internal/pki"
)

func writeCred(t *testing.T, dir, cred string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, TokenFile), []byte(cred+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestThePointerLeadsTheCLIToItsAgentsCredential(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv(DataDirEnv, "")
	a, b := t.TempDir(), t.TempDir()
	credA, credB := pki.NewManagementCredential(), pki.NewManagementCredential()
	writeCred(t, a, credA)
	writeCred(t, b, credB)
	if err := WritePointer("127.0.0.1:7001", a); err != nil {
		t.Fatal(err)
	}
	if err := WritePointer("0.0.0.0:7002", b); err != nil { // every interface: the loopback names
		t.Fatal(err)
	}
	for _, tc := range []struct{ addr, want string }{
		{"http://127.0.0.1:7001", credA},
		{"127.0.0.1:7001", credA},
		{"http://localhost:7002", credB},
		{"http://127.0.0.1:7002", credB},
		{"https://[::1]:7002", credB},
		{"http://127.0.0.1:7003", ""},    // no agent there
		{"http://10.1.2.3:7001", ""},     // not this machine's loopback
		{"http://node.example:7001", ""}, // nor a name
	} {
		got, _, err := Find(tc.addr)
		if err != nil || got != tc.want {
			t.Errorf("Find(%s) = %q, %v; want %q", tc.addr, got, err, tc.want)
		}
	}
	dir, _ := Dir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v, want a 0700 directory", d, fi.Mode(), err)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "127.0.0.1_7001"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("pointer: %v %v, want 0600", fi.Mode(), err)
	}

	t.Setenv(DataDirEnv, b) // the agent's own variable names the data dir directly
	if got, _, _ := Find("http://127.0.0.1:7001"); got != credB {
		t.Errorf("with %s set: %q, want n2's", DataDirEnv, got)
	}
	t.Setenv(DataDirEnv, "")

	RemovePointer("127.0.0.1:7001", b) // not its pointer: stays
	if got, _, _ := Find("127.0.0.1:7001"); got != credA {
		t.Errorf("another agent's exit removed the pointer")
	}
	RemovePointer("127.0.0.1:7001", a)
	if got, _, _ := Find("127.0.0.1:7001"); got != "" {
		t.Errorf("after its agent's exit: %q", got)
	}
	// A pointer whose data dir has gone is pruned at the next agent's start.
	if err := os.RemoveAll(b); err != nil {
		t.Fatal(err)
	}
	if err := WritePointer("127.0.0.1:7004", a); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "localhost_7002")); !os.IsNotExist(err) {
		t.Errorf("a pointer to a removed data dir survived: %v", err)
	}
}

func TestAnUnreadableCredentialIsAnError(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads every file")
	}
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	a := t.TempDir()
	writeCred(t, a, pki.NewManagementCredential())
	if err := os.Chmod(filepath.Join(a, TokenFile), 0); err != nil {
		t.Fatal(err)
	}
	t.Setenv(DataDirEnv, a)
	if got, _, err := Find("127.0.0.1:1"); err == nil || got != "" {
		t.Fatalf("Find of an unreadable file: %q, %v; want an error", got, err)
	}
}

func TestAMalformedCredentialFileIsAnError(t *testing.T) {
	a := t.TempDir()
	writeCred(t, a, "not-a-credential")
	t.Setenv(DataDirEnv, a)
	if got, _, err := Find("127.0.0.1:1"); err == nil || got != "" || strings.Contains(err.Error(), "not-a-credential") {
		t.Fatalf("Find of a malformed file: %q, %v; want an error that does not echo it", got, err)
	}
}
