package tasks

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/taskworker/taskworker/internal/limits"
)

// What a command-backed task may see of the agent. The agent's environment holds its secrets (the
// cluster and join tokens among them), and a task running as the agent's user could also read them
// from /proc/<agent>/environ and the data dir; so a task gets a clean environment, and `user:` runs
// it as someone who cannot read either.

// defaultPath is the PATH of a task when the agent has none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// localeEnv are passed from the agent when set: they change how text and times are shown, and
// hold nothing secret.
var localeEnv = []string{"LANG", "LC_ALL", "TZ"}

// agentEnvPrefix names the agent's own settings; none of them is ever passed to a task, not even
// through inherit_env, because that is where its tokens live.
const agentEnvPrefix = "TASKWORKER_"

// validEnvName reports whether name can be an environment variable's name.
func validEnvName(name string) bool {
	return name != "" && !strings.ContainsAny(name, "=\x00")
}

// taskEnv builds a run's environment: PATH (the agent's, else defaultPath), HOME and TMPDIR (the
// run's temp dir), LANG, LC_ALL and TZ when the agent has them, the variables named by inherit,
// then env, which may override any of those; then the run's own TASKWORKER_* variables. getenv
// reads the agent's environment.
func taskEnv(getenv func(string) (string, bool), tmpDir string, inherit []string, env, run map[string]string) []string {
	vars := map[string]string{"PATH": defaultPath, "HOME": tmpDir, "TMPDIR": tmpDir}
	if p, ok := getenv("PATH"); ok && p != "" {
		vars["PATH"] = p
	}
	for _, k := range append(slices.Clone(localeEnv), inherit...) {
		if v, ok := getenv(k); ok {
			vars[k] = v
		}
	}
	for k, v := range env {
		vars[k] = v
	}
	for k, v := range run {
		vars[k] = v
	}
	keys := make([]string, 0, len(vars))
	for k := range vars {
		keys = append(keys, k)
	}
	slices.Sort(keys) // a stable order makes a task's `env` output comparable between runs
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k + "=" + vars[k]
	}
	return out
}

// runAs is the unprivileged user a command runs as.
type runAs struct {
	user     string // as the spec named it
	uid, gid uint32
	groups   []uint32 // supplementary groups, the user's own
}

// agentIDs returns the agent's effective uid and gid; a variable so tests can play a non-root agent.
var agentIDs = func() (uid, gid int) { return os.Geteuid(), os.Getegid() }

// ErrRunAs is wrapped by every error about a spec's user or group.
var ErrRunAs = errors.New("cannot run as the configured user")

// lookupRunAs resolves a spec's user and group. It returns nil when the command is to run as the
// agent itself: no user named, or the agent's own user when the agent is not root. A user whose
// uid, primary group or any group is 0 is refused: root's rights are what user: takes away. A
// non-root agent cannot switch users, which is refused here, when the task file is loaded, rather
// than on every attempt.
func lookupRunAs(userName, groupName string) (*runAs, error) {
	if userName == "" {
		if groupName != "" {
			return nil, fmt.Errorf("%w: group %q needs a user", ErrRunAs, groupName)
		}
		return nil, nil
	}
	if !canSwitchUser {
		return nil, fmt.Errorf("%w: user %q: commands cannot run as another user on %s", ErrRunAs, userName, runtime.GOOS)
	}
	u, err := lookupUser(userName)
	if err != nil {
		return nil, fmt.Errorf("%w: user %q: %w", ErrRunAs, userName, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("%w: user %q: %w", ErrRunAs, userName, err)
	}
	if uid == 0 {
		return nil, fmt.Errorf("%w: user %q is root (uid 0); name an unprivileged user", ErrRunAs, userName)
	}
	ra := &runAs{user: userName, uid: uint32(uid), gid: uint32(gid)}
	if groupName != "" {
		g, err := lookupGroup(groupName)
		if err != nil {
			return nil, fmt.Errorf("%w: group %q: %w", ErrRunAs, groupName, err)
		}
		gid, err := strconv.ParseUint(g.Gid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%w: group %q: %w", ErrRunAs, groupName, err)
		}
		ra.gid = uint32(gid)
	}
	if ids, err := u.GroupIds(); err == nil { // unknown supplementary groups: run with none
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil && !slices.Contains(ra.groups, uint32(g)) {
				ra.groups = append(ra.groups, uint32(g))
			}
		}
	}
	if ra.gid == 0 || slices.Contains(ra.groups, 0) {
		return nil, fmt.Errorf("%w: user %q would run with group root (gid 0); name an unprivileged group", ErrRunAs, userName)
	}

	euid, egid := agentIDs()
	if euid == 0 {
		return ra, nil
	}
	if int(ra.uid) != euid {
		return nil, fmt.Errorf("%w: the agent runs as uid %d, not root, so it cannot run tasks as user %q (uid %d); run the agent as root or remove user",
			ErrRunAs, euid, userName, ra.uid)
	}
	if groupName != "" && int(ra.gid) != egid {
		return nil, fmt.Errorf("%w: the agent runs as gid %d, not root, so it cannot run tasks as group %q (gid %d); run the agent as root or remove group",
			ErrRunAs, egid, groupName, ra.gid)
	}
	return nil, nil // the agent's own user: nothing to switch
}

// lookupUser finds a user by name, or by number when no user has that name.
func lookupUser(name string) (*user.User, error) {
	u, err := user.Lookup(name)
	var unknown user.UnknownUserError
	if errors.As(err, &unknown) && isNumber(name) {
		return user.LookupId(name)
	}
	return u, err
}

func lookupGroup(name string) (*user.Group, error) {
	g, err := user.LookupGroup(name)
	var unknown user.UnknownGroupError
	if errors.As(err, &unknown) && isNumber(name) {
		return user.LookupGroupId(name)
	}
	return g, err
}

func isNumber(s string) bool {
	_, err := strconv.ParseUint(s, 10, 32)
	return err == nil
}

// checkAccess reports an error when ra cannot reach path with the permission bits want (1 execute,
// 4 read): every directory on the way needs execute. It reads mode bits only (not ACLs), which is
// enough to turn the common mistake, a command under a private home, into a load-time error.
func (ra *runAs) checkAccess(path string, want uint32) error {
	resolved, err := filepath.EvalSymlinks(path)
	if err != nil {
		return err
	}
	resolved, err = filepath.Abs(resolved)
	if err != nil {
		return err
	}
	for dir := filepath.Dir(resolved); ; dir = filepath.Dir(dir) {
		if err := ra.may(dir, 1); err != nil {
			return err
		}
		if dir == filepath.Dir(dir) {
			break
		}
	}
	return ra.may(resolved, want)
}

func (ra *runAs) may(path string, want uint32) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	uid, gid, ok := fileOwner(fi)
	if !ok {
		return nil
	}
	mode := uint32(fi.Mode().Perm())
	switch {
	case uid == ra.uid:
		mode >>= 6
	case gid == ra.gid || slices.Contains(ra.groups, gid):
		mode >>= 3
	}
	if mode&want != want {
		return fmt.Errorf("user %q (uid %d) has no permission on %s (mode %04o, owner %d:%d)", ra.user, ra.uid, path, fi.Mode().Perm(), uid, gid)
	}
	return nil
}

// runDir is one attempt's private directory: the result and checkpoint files and a temp dir that is
// the task's HOME and TMPDIR. Mode 0700, owned by the task's user, so no one else can read it.
//
// When the task runs as another user, that user owns the directory and could put a symlink, a FIFO
// or a hard link where the agent (root) reads or writes. So the agent reaches files only through an
// os.Root opened before the task started (no path lookups through a renamed directory, no symlink
// out of it), writes by creating a fresh file and renaming it into place, opens the result without
// blocking and reads it only if it is a regular file the task's user owns.
type runDir struct {
	path  string
	root  *os.Root
	owner *runAs // nil: the task runs as the agent, nothing to hand over
}

const (
	resultFileName     = "result.json"
	checkpointFileName = "checkpoint.json"
	tmpDirName         = "tmp"
)

// newRunDir makes the directory; handOver must be called before the task starts.
func newRunDir(owner *runAs) (*runDir, error) {
	path, err := os.MkdirTemp("", "taskworker-run-")
	if err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(path)
	if err != nil {
		os.RemoveAll(path)
		return nil, err
	}
	d := &runDir{path: path, root: root, owner: owner}
	if err := root.Mkdir(tmpDirName, 0o700); err != nil {
		d.remove()
		return nil, err
	}
	return d, nil
}

func (d *runDir) file(name string) string { return filepath.Join(d.path, name) }

// handOver gives the directory and its temp dir to the task's user. Until then only the agent can
// reach it, so nothing can be swapped under these calls.
func (d *runDir) handOver() error {
	if d.owner == nil {
		return nil
	}
	for _, name := range []string{tmpDirName, "."} {
		f, err := d.root.Open(name)
		if err != nil {
			return err
		}
		err = f.Chown(int(d.owner.uid), int(d.owner.gid))
		f.Close()
		if err != nil {
			return fmt.Errorf("give run dir to user %q: %w", d.owner.user, err)
		}
	}
	return nil
}

// writeFile replaces name whole, so a reader never sees half of it, and makes it the task user's.
func (d *runDir) writeFile(name string, data []byte) error {
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := name + ".tmp-" + hex.EncodeToString(rnd[:])
	// O_EXCL: never through something the task left under that name.
	f, err := d.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if d.owner != nil {
		err = f.Chown(int(d.owner.uid), int(d.owner.gid))
	}
	if err == nil {
		_, err = f.Write(data)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = d.root.Rename(tmp, name)
	}
	if err != nil {
		d.root.Remove(tmp)
	}
	return err
}

// readResult returns the result file's content, nil when the task wrote none, or a
// *limits.SizeError when it is over limit bytes (checked before reading it).
func (d *runDir) readResult(limit int) ([]byte, error) {
	f, err := d.root.OpenFile(resultFileName, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", resultFileName)
	}
	if uid, _, ok := fileOwner(fi); ok && d.owner != nil && uid != d.owner.uid {
		// A hard link to someone else's file: reading it would hand the task the agent's rights.
		return nil, fmt.Errorf("%s is not owned by user %q", resultFileName, d.owner.user)
	}
	if err := limits.CheckSize(limits.PayloadResult, int(fi.Size()), limit); err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = limits.DefaultMaxPayloadBytes
	}
	data, err := io.ReadAll(io.LimitReader(f, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if err := limits.CheckSize(limits.PayloadResult, len(data), limit); err != nil {
		return nil, err // it grew after the Stat
	}
	return data, nil
}

func (d *runDir) remove() {
	d.root.Close()
	// RemoveAll does not follow symlinks, so whatever the task left here cannot point it elsewhere.
	os.RemoveAll(d.path)
}
