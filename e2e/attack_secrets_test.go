package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/localcluster"
	"github.com/taskworker/taskworker/internal/pki"
)

// Attacks on the cluster's secrets at rest, in logs and in argv, with real processes: a local
// user reading data dirs and raft snapshots, a token rebuilt from a snapshot, an agent started
// on a data dir others can read, secrets in logs and on the command line, and a flood of wrong
// join tokens.

// heldSecret waits for p's <data-dir>/<name> (join-token, management-token) and returns it.
func heldSecret(t *testing.T, p *proc, name string) string {
	t.Helper()
	var s string
	poll(t, p.Name+" holds its "+name, 30*time.Second, func() bool {
		b, err := os.ReadFile(filepath.Join(p.DataDir, name))
		s = strings.TrimSpace(string(b))
		return err == nil && s != ""
	})
	return s
}

// joinAttempts sends count join requests for token to the member at gossipAddr, as a joiner
// does (TLS pinned to the CA the token names), workers at a time from the local address from
// ("" for any), and returns the HTTP statuses it got, by status.
func joinAttempts(t *testing.T, gossipAddr, from string, token pki.Token, count, workers int) map[int]int {
	t.Helper()
	_, req, err := pki.NewJoinRequest(token, "intruder", []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		dialer.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		TLSClientConfig: pki.PinnedClientConfig(token.Fingerprint), DialContext: dialer.DialContext,
		MaxIdleConnsPerHost: workers,
	}}
	defer hc.CloseIdleConnections()
	var (
		mu       sync.Mutex
		statuses = map[int]int{}
		next     atomic.Int64
		wg       sync.WaitGroup
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(count) {
				status := 0 // no answer
				resp, err := hc.Post("https://"+gossipAddr+"/v1/internode/join", "application/json", bytes.NewReader(body))
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					status = resp.StatusCode
				}
				mu.Lock()
				statuses[status]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return statuses
}

// openBits lists every file and folder under dir (dir included) that group or others can reach.
func openBits(t *testing.T, dir string) []string {
	t.Helper()
	var open []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if errorsIsNotExist(err) {
			return nil // a temporary file gone while we walk
		}
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if errorsIsNotExist(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink == 0 && fi.Mode().Perm()&0o077 != 0 {
			open = append(open, fmt.Sprintf("%s %04o", p, fi.Mode().Perm()))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return open
}

func errorsIsNotExist(err error) bool { return err != nil && os.IsNotExist(err) }

// filesHolding lists the files under dir, but for the secret's own files, whose bytes contain
// any of secrets.
func filesHolding(t *testing.T, dir string, secrets ...string) []string {
	t.Helper()
	var found []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || d.Name() == pki.TokenFile || d.Name() == pki.ManagementFile {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				found = append(found, p)
			}
		}
		return nil
	})
	return found
}

// snapshots are the state.bin files of the raft snapshots under a data dir.
func snapshots(dataDir string) []string {
	files, _ := filepath.Glob(filepath.Join(dataDir, "raft", "snapshots", "*", "state.bin"))
	return files
}

// A local user who can read a node's data dir learns every secret in it. Raft's snapshots were
// 0644 in 0755 folders and held the join secret, so any user of the host could build
// TW1::<public CA fingerprint>::<secret> and join. Now every file and folder under every data dir
// is the agent's user's alone, snapshots included, and no snapshot or raft.db holds the join
// secret or the management credential, before or after a rotation: what a snapshot holds (the
// secret's hash) admits nobody.
func TestAttackLocalUserReadsDataDirsAndSnapshotsOfASecureCluster(t *testing.T) {
	pc := startProcCluster(t, 3, "--raft-snapshot-threshold", "16", "--raft-snapshot-interval", "200ms")
	n1 := pc.procs[0]
	tok, err := pki.ParseToken(heldSecret(t, n1, pki.TokenFile))
	if err != nil {
		t.Fatal(err)
	}
	mgmt := heldSecret(t, n1, pki.ManagementFile)
	for _, p := range pc.procs[1:] {
		poll(t, p.Name+" holds the cluster's management credential", 30*time.Second, func() bool {
			return heldSecret(t, p, pki.ManagementFile) == mgmt
		})
	}

	// Rotate once, so the snapshots were taken after a rotation too.
	req, _ := http.NewRequest(http.MethodPost, "http://"+pc.procs[1].HTTP+api.PathJoinTokenRotate, nil)
	req.Header.Set("Authorization", "Bearer "+mgmt)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var rotated api.JoinToken
	_ = json.NewDecoder(resp.Body).Decode(&rotated)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || rotated.Token == "" || rotated.Token == tok.Encode() {
		t.Fatalf("rotate on n2: %d %+v", resp.StatusCode, rotated)
	}
	newTok, err := pki.ParseToken(rotated.Token)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pc.procs {
		poll(t, p.Name+" holds the rotated join token", 30*time.Second, func() bool {
			return heldSecret(t, p, pki.TokenFile) == rotated.Token
		})
	}

	// Enough raft entries for every node to snapshot past the threshold.
	ids := submitSleeps(t, 40, 1, pc.procs...)
	waitTasks(t, "succeeded", 60*time.Second, ids, n1)
	for _, p := range pc.procs {
		poll(t, p.Name+" took a raft snapshot", 60*time.Second, func() bool { return len(snapshots(p.DataDir)) > 0 })
	}

	secrets := []string{tok.Secret, newTok.Secret, mgmt}
	var candidates []string // what looks like a join secret in the snapshots: 64 hex digits
	hex64 := regexp.MustCompile(`[0-9a-f]{64}`)
	for _, p := range pc.procs {
		for _, o := range openBits(t, p.DataDir) {
			t.Errorf("%s: other users of the host can reach %s", p.Name, o)
		}
		for _, f := range filesHolding(t, p.DataDir, secrets...) {
			t.Errorf("%s: %s holds a cluster secret in clear", p.Name, f)
		}
		for _, s := range snapshots(p.DataDir) {
			b, err := os.ReadFile(s)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range hex64.FindAll(b, -1) {
				if string(c) != tok.Fingerprint && !slices.Contains(candidates, string(c)) {
					candidates = append(candidates, string(c))
				}
			}
		}
	}
	// The attack itself: every secret-looking value of the snapshots, with the public fingerprint.
	if len(candidates) == 0 {
		t.Fatal("no 64-hex value in any snapshot: the attack has nothing to try (the join secret's hash should be there)")
	}
	for _, c := range candidates {
		got := joinAttempts(t, n1.Gossip, "", pki.Token{Fingerprint: tok.Fingerprint, Secret: c}, 1, 1)
		if got[http.StatusForbidden] != 1 {
			t.Errorf("a join with TW1::<fingerprint>::%s… from a snapshot: statuses %v, want 403", c[:8], got)
		}
	}
	t.Logf("%d secret-looking values from the snapshots tried", len(candidates))
}

// An agent started on a data dir other users can read refuses to start, with one line naming the
// dir and the fix, as ssh refuses a readable private key; it changes nothing in the dir.
func TestAttackDataDirOpenToOthersIsRefusedAtStart(t *testing.T) {
	bin := binary(t)
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ports, err := localcluster.FreePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "agent", "--name", "n1", "--data-dir", dir, "--advertise", "127.0.0.1",
		"--gossip-addr", fmt.Sprintf("127.0.0.1:%d", ports[0]), "--raft-addr", fmt.Sprintf("127.0.0.1:%d", ports[1]),
		"--http-addr", fmt.Sprintf("127.0.0.1:%d", ports[2]))
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("an agent on a 0755 data dir ran until killed:\n%s", out)
	}
	if err == nil || cmd.ProcessState == nil || cmd.ProcessState.ExitCode() == 0 {
		t.Fatalf("an agent on a 0755 data dir started (err %v):\n%s", err, out)
	}
	var naming []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if strings.Contains(sc.Text(), dir) {
			naming = append(naming, sc.Text())
		}
	}
	if len(naming) != 1 || !strings.Contains(naming[0], "chmod 700 "+dir) {
		t.Errorf("want one line naming %s and `chmod 700 %s`, got %d:\n%s", dir, dir, len(naming), out)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o755 {
		t.Errorf("the refused data dir was changed to %04o", fi.Mode().Perm())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("the refused agent wrote into the data dir: %v", entries)
	}
	t.Logf("exit %d: %s", cmd.ProcessState.ExitCode(), strings.TrimSpace(string(out)))
}

// The first node's log never shows the join token or the management credential (it used to log
// the token at INFO). A token in argv, which every local user reads in /proc/PID/cmdline, gets a
// WARN naming the safer ways; --join-token-file joins. Every node ends up holding both secrets
// in its data dir. A refused joiner says so once, and a root agent warns of command types that
// would run as root.
func TestAttackSecretsStayOutOfLogsAndArgv(t *testing.T) {
	pc := newProcCluster(t)
	tasksFile := filepath.Join(t.TempDir(), "tasks.yaml")
	if err := os.WriteFile(tasksFile, []byte("tasks:\n  - {name: shell-as-root, version: \"1\", command: /bin/true}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n1 := pc.add("--tasks-file", tasksFile)
	tokText := heldSecret(t, n1, pki.TokenFile)
	tok, err := pki.ParseToken(tokText)
	if err != nil {
		t.Fatal(err)
	}
	mgmt := heldSecret(t, n1, pki.ManagementFile)
	tokenFile := filepath.Join(t.TempDir(), "join-token")
	if err := os.WriteFile(tokenFile, []byte(tokText+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pc.add("--join-token-file", tokenFile) // n2: the token from a file, never in argv
	n3 := pc.add("--join-token", tokText)
	pc.waitCluster(n1, 3)

	for _, p := range pc.procs {
		poll(t, p.Name+" holds both cluster secrets", 30*time.Second, func() bool {
			return heldSecret(t, p, pki.TokenFile) == tokText && heldSecret(t, p, pki.ManagementFile) == mgmt
		})
	}
	argvWarn := "--join-token on the command line is visible to every user of this machine"
	for _, p := range pc.procs {
		log := p.Log()
		for what, s := range map[string]string{"join secret": tok.Secret, "management credential": mgmt} {
			if strings.Contains(log, s) {
				t.Errorf("%s's log holds the %s", p.Name, what)
			}
		}
		want := 0
		if p == n3 {
			want = 1
		}
		if got := strings.Count(log, argvWarn); got != want {
			t.Errorf("%s: %d warnings about --join-token in argv, want %d", p.Name, got, want)
		}
	}
	if !strings.Contains(n3.Log(), "use --join-token-file or TASKWORKER_JOIN_TOKEN") {
		t.Errorf("n3's warning does not name the safer ways:\n%s", n3.Log())
	}
	if !strings.Contains(n1.Log(), "--join-token-file FILE, where FILE is a copy of "+filepath.Join(n1.DataDir, pki.TokenFile)) {
		t.Errorf("n1 does not say where the join token is:\n%s", n1.Log())
	}
	if os.Geteuid() == 0 {
		if !strings.Contains(n1.Log(), "level=WARN") || !strings.Contains(n1.Log(), "types=shell-as-root") {
			t.Errorf("a root agent with a command type without user: does not warn:\n%s", n1.Log())
		}
	} else {
		t.Log("not root: the warning about command types run as root is not expected here (unit-tested)")
	}

	wrongFile := filepath.Join(t.TempDir(), "wrong-token")
	wrong := pki.Token{Fingerprint: tok.Fingerprint, Secret: strings.Repeat("0f", 32)}
	if err := os.WriteFile(wrongFile, []byte(wrong.Encode()), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := pc.add("--join-token-file", wrongFile)
	if err := bad.Wait(30 * time.Second); err == nil {
		t.Fatal("an agent with a wrong token exited 0")
	}
	if got := strings.Count(bad.Log(), "join refused"); got != 1 {
		t.Errorf("the refused joiner says \"join refused\" %d times, want once:\n%s", got, bad.Log())
	}
}

// Anyone who reaches the gossip port can send wrong join tokens as fast as it likes: 2,000 of
// them wrote 2,006 WARN lines. Now a refused join is logged once per remote address per minute,
// and every one is counted in taskworker_join_refused_total.
func TestAttackJoinFloodIsLoggedOncePerAddressAndCounted(t *testing.T) {
	pc := startProcCluster(t, 1)
	n1 := pc.procs[0]
	tok, err := pki.ParseToken(heldSecret(t, n1, pki.TokenFile))
	if err != nil {
		t.Fatal(err)
	}
	wrong := pki.Token{Fingerprint: tok.Fingerprint, Secret: strings.Repeat("ab", 32)}
	const perAddr = 1000
	froms := []string{"127.0.0.1", "127.0.0.2"}
	for _, from := range froms {
		if got := joinAttempts(t, n1.Gossip, from, wrong, perAddr, 4); got[http.StatusForbidden] != perAddr {
			t.Fatalf("from %s: statuses %v, want %d × 403", from, got, perAddr)
		}
	}
	var counted float64
	poll(t, "the refusals counted in /metrics", 30*time.Second, func() bool {
		counted = metricValue(t, n1, "taskworker_join_refused_total")
		return counted >= float64(len(froms)*perAddr)
	})
	if counted != float64(len(froms)*perAddr) {
		t.Errorf("taskworker_join_refused_total = %v, want %d", counted, len(froms)*perAddr)
	}
	lines := 0
	for _, l := range strings.Split(n1.Log(), "\n") {
		if strings.Contains(l, "refused a node's join") {
			lines++
		}
	}
	if lines < 1 || lines > len(froms) {
		t.Errorf("%d refused joins wrote %d log lines, want one per address (%d)", len(froms)*perAddr, lines, len(froms))
	}
	for _, from := range froms {
		if !strings.Contains(n1.Log(), "remote="+from+":") {
			t.Errorf("no refusal logged for %s", from)
		}
	}
}

// metricValue reads an unlabelled series from p's /metrics (-1 when absent).
func metricValue(t *testing.T, p *proc, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + p.HTTP + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}
