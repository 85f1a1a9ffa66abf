package trust

import (
	"net"

	"github.com/taskworker/taskworker/internal/agentcred"
)

// PublishCLIPointer lets the taskworker CLI run by this agent's user find the management
// credential with no flags (agentcred): it writes a pointer from the API's loopback address to
// the data dir. bind is the API's --http-addr, bound the address it listens on (its port, when
// the flag said 0). Only a secure node with a data dir of its own has that credential (--dev
// runs insecure). The returned func removes the pointer again, for a clean exit.
func (t *Trust) PublishCLIPointer(bind, bound string) (remove func()) {
	dataDir := t.cfg.DataDir
	if t.insecure || dataDir == "" {
		return func() {}
	}
	host, _, err := net.SplitHostPort(bind)
	_, port, perr := net.SplitHostPort(bound)
	if err != nil || perr != nil {
		return func() {}
	}
	addr := net.JoinHostPort(host, port)
	if err := agentcred.WritePointer(addr, dataDir); err != nil {
		t.log.Warn("the CLI on this machine will not find the management credential by itself; give it --token-file "+
			dataDir+"/"+agentcred.TokenFile, "err", err)
		return func() {}
	}
	return func() { agentcred.RemovePointer(addr, dataDir) }
}
