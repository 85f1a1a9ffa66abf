package trust

import (
	"context"
	"errors"
	"path/filepath"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/pki"
)

// The management credential opens the operator routes (join token, keyring, digest, pprof) of a
// secure cluster, with or without ACLs. The first node makes it with the cluster and keeps it in
// <data-dir>/management-token (0600); the FSM holds only its hash (fsm.Management), so every node
// checks it and a snapshot alone opens nothing.

// IsManagement reports whether credential is the cluster's management credential. Never on an
// insecure node (its operator routes are open) or before the hash is known. Every API request
// with ACLs on asks: an ACL token or a JWT, which has not the management credential's form, is
// told apart without reading the FSM or hashing.
func (t *Trust) IsManagement(credential string) bool {
	if t == nil || t.insecure || !pki.ValidManagementCredential(credential) {
		return false
	}
	return fsm.SecretMatches(credential, t.cfg.FSM.Security().ManagementHash)
}

// ManagementCredential is the management credential this node holds, "" if none (an insecure
// node, or one that has not fetched it yet).
func (t *Trust) ManagementCredential() string {
	if t == nil {
		return ""
	}
	if c := t.management.Load(); c != nil {
		return *c
	}
	return ""
}

// loadManagement reads this node's management credential from <data-dir>/management-token, or,
// on the first node of a new cluster (first), makes one and writes it there. Any other node
// fetches it from a peer once the cluster's hash is known (secretsLoop). A node without a data
// dir (in-memory tests) keeps it in memory only.
func (t *Trust) loadManagement(first bool) error {
	dir := t.cfg.DataDir
	if dir != "" {
		cred, err := pki.ReadManagementFile(dir)
		switch {
		case err == nil:
			t.management.Store(&cred)
			return nil
		case !errors.Is(err, pki.ErrNoManagement):
			// Not fatal: a node that holds a wrong one fetches the cluster's and rewrites the file.
			t.log.Warn("ignoring the management credential file", "err", err)
		}
	}
	if !first {
		return nil
	}
	cred := pki.NewManagementCredential()
	if dir != "" {
		if err := pki.WriteManagementFile(dir, cred); err != nil {
			return err
		}
	}
	t.management.Store(&cred)
	return nil
}

// managementFile is where this node keeps the management credential, "" without a data dir.
func (t *Trust) managementFile() string {
	if t.cfg.DataDir == "" {
		return ""
	}
	return filepath.Join(t.cfg.DataDir, pki.ManagementFile)
}

// Announce tells the operator of a new secure cluster, which this node made, how to add nodes
// (through gossipAddr, this node's gossip address) and where its secrets are. It names the
// files, never their content: logs are read by more people and programs than the data dir.
func (t *Trust) Announce(gossipAddr string) {
	if !t.announce {
		return
	}
	if _, err := t.JoinToken(); err == nil {
		t.log.Info("new secure cluster: add nodes with --join " + gossipAddr + " --join-token-file FILE, " +
			"where FILE is a copy of " + filepath.Join(t.secretsDir, pki.TokenFile) + " (it holds the join token; keep it secret)")
	}
	if f := t.managementFile(); f != "" && t.ManagementCredential() != "" {
		t.log.Info("the management credential, which operator commands need, is in " + f + "; every node keeps a copy in its data dir")
	}
}

// seedManagement runs on the leader while the FSM holds no management credential's hash: at a
// new cluster's first election, and, in a cluster upgraded from a release without one, at every
// change of the state until every node up speaks protocol 4 (a rolling upgrade may end with no
// change of leader). The leader writes the hash of the credential it holds, or of one it makes
// (and keeps in its data dir); the other nodes then fetch it (secretsLoop).
func (t *Trust) seedManagement(ctx context.Context) {
	if t.insecure || t.cfg.FSM.Security().ManagementHash != "" || !t.cfg.IsLeader() || !t.seeding.CompareAndSwap(false, true) {
		return
	}
	defer t.seeding.Store(false)
	cred := t.ManagementCredential()
	if cred == "" {
		cred = pki.NewManagementCredential()
		if t.cfg.DataDir != "" {
			if err := pki.WriteManagementFile(t.cfg.DataDir, cred); err != nil {
				t.log.Warn("make the cluster's management credential", "err", err)
				return
			}
		}
		t.management.Store(&cred)
		t.log.Info("made the cluster's management credential", "file", t.managementFile())
	}
	cctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	_, err := t.cfg.Apply(cctx, &fsm.Command{Body: &fsm.Management{Hash: fsm.HashSecret(cred)}})
	switch {
	case errors.Is(err, fsm.ErrProtocolTooOld):
		if t.waitedUpgrade.CompareAndSwap(false, true) {
			t.log.Info("the management credential takes effect once every node is upgraded; until then the operator routes refuse every caller", "err", err)
		}
	case err != nil && ctx.Err() == nil:
		t.log.Warn("write the management credential's hash", "err", err)
	}
}
