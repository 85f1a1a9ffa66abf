// Package agentcred lets the taskworker CLI on a node find the management credential of the agent
// it talks to with no flags, as k3s's CLI finds its kubeconfig: a secure agent keeps the
// credential in <data-dir>/management-token (0600), and at start writes a pointer to that data dir
// in its user's config dir (agents/<host>_<port>, 0600 in 0700 directories), one for each
// loopback address its API answers on. Only that user (or root) can follow the pointer and read
// the file, which is the point: on a shared machine, being the agent's user is the credential.
//
// It knows file names and paths only; what the credential opens is the node's business.
package agentcred

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/taskworker/taskworker/internal/pki"
)

// TokenFile is the management credential's file in an agent's data dir.
const TokenFile = pki.ManagementFile

// DataDirEnv names a data dir to read the credential from, in place of a pointer: the
// variable the agent takes its --data-dir from.
const DataDirEnv = "TASKWORKER_DATA_DIR"

// Dir is where the pointers live: <user config dir>/taskworker/agents.
func Dir() (string, error) {
	base, err := os.UserConfigDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(base, "taskworker", "agents"), nil
}

// pointerNames are the pointer files of an API listening on addr (host:port): the host and the
// other spellings of the same loopback address (127.0.0.1 and localhost are one), the usual
// loopback spellings for a wildcard bind, none for a routable host (a CLI that talks to one can
// name the data dir with DataDirEnv).
func pointerNames(addr string) []string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" || port == "0" {
		return nil
	}
	switch ip := net.ParseIP(host); {
	case host == "" || ip != nil && ip.IsUnspecified():
		return []string{"127.0.0.1_" + port, "localhost_" + port, "::1_" + port}
	case host == "localhost" || host == "127.0.0.1":
		return []string{"127.0.0.1_" + port, "localhost_" + port}
	case loopback(host):
		return []string{host + "_" + port}
	}
	return nil
}

// lookupName is the pointer file of the agent a CLI reaches at hostport, "" for none: only a
// loopback address leads to an agent on this machine.
func lookupName(hostport string) string {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil || port == "" || !loopback(host) {
		return ""
	}
	return host + "_" + port
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// WritePointer records that the agent whose API listens on addr (its bound host with its actual
// port) keeps its data in dataDir. Pointers whose data dir has gone are removed on the way, so
// that throwaway clusters leave nothing behind for long.
func WritePointer(addr, dataDir string) error {
	names := pointerNames(addr)
	if len(names) == 0 {
		return nil
	}
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return err
	}
	dir, err := Dir()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, d := range []string{filepath.Dir(dir), dir} { // made by an older umask, maybe
		if err := os.Chmod(d, 0o700); err != nil {
			return err
		}
	}
	prune(dir)
	for _, name := range names {
		tmp, err := os.CreateTemp(dir, ".pointer-")
		if err != nil {
			return err
		}
		_, werr := tmp.WriteString(abs + "\n")
		if cerr := tmp.Close(); werr == nil {
			werr = cerr
		}
		if werr == nil {
			werr = os.Rename(tmp.Name(), filepath.Join(dir, name))
		}
		if werr != nil {
			os.Remove(tmp.Name())
			return werr
		}
	}
	return nil
}

// RemovePointer removes addr's pointers that still lead to dataDir (another agent may have taken
// the port since).
func RemovePointer(addr, dataDir string) {
	dir, err := Dir()
	if err != nil {
		return
	}
	abs, _ := filepath.Abs(dataDir)
	for _, name := range pointerNames(addr) {
		p := filepath.Join(dir, name)
		if got, err := readPointer(p); err == nil && got == abs {
			os.Remove(p)
		}
	}
}

func prune(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		dataDir, err := readPointer(p)
		if err != nil {
			continue
		}
		if _, err := os.Stat(dataDir); errors.Is(err, os.ErrNotExist) {
			os.Remove(p)
		}
	}
}

func readPointer(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// Find returns the management credential of the agent at addr (a URL such as
// http://127.0.0.1:7948, or host:port) and the file it came from: from DataDirEnv's data dir
// when set, else through addr's pointer. It returns "" and no error when there is nothing to
// find (a remote address, an agent of another user, an insecure one); an error when a
// credential file is there but cannot be read, or when the pointer's port is not held by this
// user's process (a crashed agent's port taken by someone else: the credential stays here).
func Find(addr string) (credential, file string, err error) {
	dataDir := os.Getenv(DataDirEnv)
	if dataDir == "" {
		hostport := addr
		if u, err := url.Parse(addr); err == nil && u.Host != "" {
			hostport = u.Host
		}
		name := lookupName(hostport)
		if name == "" {
			return "", "", nil
		}
		dir, err := Dir()
		if err != nil {
			return "", "", nil
		}
		if dataDir, err = readPointer(filepath.Join(dir, name)); err != nil {
			return "", "", nil
		}
		_, port, _ := net.SplitHostPort(hostport)
		switch err := checkListener(port); {
		case errors.Is(err, errNoListener):
			return "", "", nil // the request fails to connect, and says so
		case err != nil:
			return "", "", fmt.Errorf("%s: %w", hostport, err)
		}
	}
	file = filepath.Join(dataDir, TokenFile)
	cred, err := pki.ReadManagementFile(dataDir)
	switch {
	case errors.Is(err, pki.ErrNoManagement):
		return "", "", nil
	case errors.Is(err, os.ErrPermission):
		return "", file, fmt.Errorf("%w: run the CLI as the agent's user", err)
	case err != nil:
		return "", file, err
	}
	return cred, file, nil
}
