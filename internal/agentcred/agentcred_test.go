package agentcred

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/taskworker/taskworker/internal/pki"
)

// listen holds a loopback port for the test and returns it.
func listen(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

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
	// The agents' API listeners, which this user holds.
	pa, pb, none := listen(t), listen(t), listen(t)
	if err := WritePointer("localhost:"+pa, a); err != nil { // one address, two spellings
		t.Fatal(err)
	}
	if err := WritePointer("0.0.0.0:"+pb, b); err != nil { // every interface: the loopback names
		t.Fatal(err)
	}
	for _, tc := range []struct{ addr, want string }{
		{"http://127.0.0.1:" + pa, credA},
		{"127.0.0.1:" + pa, credA},
		{"http://localhost:" + pa, credA},
		{"http://[::1]:" + pa, ""}, // another address
		{"http://localhost:" + pb, credB},
		{"http://127.0.0.1:" + pb, credB},
		{"https://[::1]:" + pb, credB},
		{"http://127.0.0.1:" + none, ""},  // no agent there
		{"http://10.1.2.3:" + pa, ""},     // not this machine's loopback
		{"http://node.example:" + pa, ""}, // nor a name
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
	fi, err := os.Stat(filepath.Join(dir, "127.0.0.1_"+pa))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("pointer: %v %v, want 0600", fi.Mode(), err)
	}

	t.Setenv(DataDirEnv, b) // the agent's own variable names the data dir directly
	if got, _, _ := Find("http://127.0.0.1:" + pa); got != credB {
		t.Errorf("with %s set: %q, want n2's", DataDirEnv, got)
	}
	t.Setenv(DataDirEnv, "")

	RemovePointer("127.0.0.1:"+pa, b) // not its pointer: stays
	if got, _, _ := Find("127.0.0.1:" + pa); got != credA {
		t.Errorf("another agent's exit removed the pointer")
	}
	RemovePointer("127.0.0.1:"+pa, a)
	if got, _, _ := Find("127.0.0.1:" + pa); got != "" {
		t.Errorf("after its agent's exit: %q", got)
	}
	// A pointer whose data dir has gone is pruned at the next agent's start.
	if err := os.RemoveAll(b); err != nil {
		t.Fatal(err)
	}
	if err := WritePointer("127.0.0.1:7004", a); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "localhost_"+pb)); !os.IsNotExist(err) {
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

func TestTheCredentialGoesOnlyToThisUsersListener(t *testing.T) {
	table := filepath.Join(t.TempDir(), "tcp")
	// Port 0x1F90 (8080) listened on by uid 1000 and 0x1F91 by uid 0; 0x1F92 only connected.
	content := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0 100 0 0 10 0
   1: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0100007F:1F92 0100007F:9000 01 00000000:00000000 00:00000000 00000000  1000        0 3 1 0 100 0 0 10 0
`
	if err := os.WriteFile(table, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	tables := []string{table, filepath.Join(t.TempDir(), "missing")}
	for _, tc := range []struct {
		port, me string
		want     error
	}{
		{"8080", "1000", nil},
		{"8080", "1001", errNotMine},
		{"8081", "1000", errNotMine},
		{"8081", "0", nil},
		{"8082", "1000", errNoListener}, // a connection, not a listener
	} {
		if err := checkListenerIn(tables, tc.port, tc.me); !errors.Is(err, tc.want) && err != tc.want {
			t.Errorf("port %s as uid %s: %v, want %v", tc.port, tc.me, err, tc.want)
		}
	}
	if err := checkListenerIn([]string{filepath.Join(t.TempDir(), "missing")}, "8080", "1000"); err != nil {
		t.Errorf("without /proc/net: %v, want nil (cannot tell)", err)
	}
}
