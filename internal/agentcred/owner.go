package agentcred

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// errNotMine is why Find does not hand out a credential: the process listening where the pointer
// leads belongs to another user. An agent that crashed leaves its pointer behind, and any local
// user may bind the port it held; the credential must not go to them.
var errNotMine = errors.New("the process listening there belongs to another user; not sending it the management credential")

// errNoListener: nothing listens on the port, so there is nobody to send a credential to.
var errNoListener = errors.New("nothing listens there")

// checkListener returns nil when a TCP listener on port is this user's, or when it cannot tell
// (no /proc/net, as off Linux). It returns errNotMine when the port's listener is another user's,
// and errNoListener when nothing listens there.
func checkListener(port string) error {
	return checkListenerIn([]string{"/proc/net/tcp", "/proc/net/tcp6"}, port, strconv.Itoa(os.Getuid()))
}

func checkListenerIn(tables []string, port, me string) error {
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return fmt.Errorf("port %q: %w", port, err)
	}
	seen, known := false, false
	for _, table := range tables {
		uids, err := listenerUIDs(table, uint16(p))
		if err != nil {
			continue
		}
		known = true
		for _, uid := range uids {
			if uid != me {
				return errNotMine
			}
			seen = true
		}
	}
	if known && !seen {
		return errNoListener
	}
	return nil
}

// listenerUIDs reads a /proc/net/tcp table: the owners' uids of the sockets listening on port.
func listenerUIDs(table string, port uint16) ([]string, error) {
	f, err := os.Open(table)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var uids []string
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 || fields[3] != "0A" { // 0A: LISTEN
			continue
		}
		_, hexPort, ok := strings.Cut(fields[1], ":")
		if v, err := strconv.ParseUint(hexPort, 16, 16); !ok || err != nil || uint16(v) != port {
			continue
		}
		uids = append(uids, fields[7])
	}
	return uids, sc.Err()
}
