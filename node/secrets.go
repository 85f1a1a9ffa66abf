package node

import (
	"github.com/taskworker/taskworker/fsm"
)

// The management credential opens the operator routes (join token, keyring, digest, pprof) of a
// secure cluster, with or without ACLs. The first node makes it with the cluster and keeps it in
// <data-dir>/management-token (0600); the FSM holds only its hash (fsm.Management), so every node
// checks it and a snapshot alone opens nothing.

// isManagement reports whether credential is the cluster's management credential. Never on an
// insecure node (its operator routes are open) or before the hash is known.
func (n *Node) isManagement(credential string) bool {
	if n.sec == nil || n.sec.insecure || credential == "" {
		return false
	}
	return fsm.SecretMatches(credential, n.fsm.Security().ManagementHash)
}
