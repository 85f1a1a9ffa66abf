package node

import (
	"net"

	"github.com/taskworker/taskworker/internal/agentcred"
)

// publishCLIPointer lets the taskworker CLI run by this agent's user find the management
// credential with no flags (agentcred): it writes a pointer from the API's loopback address to
// the data dir. Only a secure node with a data dir of its own has that credential. The returned
// func removes the pointer again, for a clean exit.
func (n *Node) publishCLIPointer() (remove func()) {
	if n.sec == nil || n.sec.insecure || n.cfg.Dev || n.cfg.DataDir == "" {
		return func() {}
	}
	host, _, err := net.SplitHostPort(n.cfg.HTTPAddr)
	_, port, perr := net.SplitHostPort(n.HTTPAddr()) // the port bound, when the flag said 0
	if err != nil || perr != nil {
		return func() {}
	}
	addr := net.JoinHostPort(host, port)
	if err := agentcred.WritePointer(addr, n.cfg.DataDir); err != nil {
		n.log.Warn("the CLI on this machine will not find the management credential by itself; give it --token-file "+
			n.cfg.DataDir+"/"+agentcred.TokenFile, "err", err)
		return func() {}
	}
	return func() { agentcred.RemovePointer(addr, n.cfg.DataDir) }
}
